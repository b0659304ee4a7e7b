"""Losses: MSE (Eq. 3) and softmax cross-entropy with its output metric Λ (Appendix D, S.158–S.159)."""

from __future__ import annotations

from .backend import namespace_of, to_float


def mse_loss(f, y) -> float:
    """L = Σ_n ‖y_n − f(x_n)‖² / (2N) (Eq. 3); f, y are (N, C)."""
    xp = namespace_of(f)
    r = f - y
    return to_float(xp.sum(r * r)) / (2.0 * f.shape[0])


def softmax(f):
    """σ^{(k)} = exp(f_k)/Σ_k′ exp(f_k′) row-wise, numerically stable."""
    xp = namespace_of(f)
    z = f - xp.max(f, axis=1, keepdims=True)
    e = xp.exp(z)
    return e / xp.sum(e, axis=1, keepdims=True)


def cross_entropy_loss(f, y_onehot) -> float:
    """L = −Σ_n Σ_k y_nk log σ^{(k)}(x_n) / N."""
    xp = namespace_of(f)
    z = f - xp.max(f, axis=1, keepdims=True)
    log_sm = z - xp.log(xp.sum(xp.exp(z), axis=1, keepdims=True))
    return -to_float(xp.sum(y_onehot * log_sm)) / f.shape[0]


def cross_entropy_metric(f, rho_tilde: float):
    """Λ(σ) + ρ̃I as a (CN × CN) matrix in output-major order (S.158–S.159).

    Λ is block diagonal over samples with C×C blocks diag(σ_n) − σ_nσ_nᵀ; it is singular
    (Λ_n 1 = 0), hence the damping ρ̃ > 0.
    """
    xp = namespace_of(f)
    n, c = f.shape
    sig = softmax(f)  # (N, C)
    eye_c = xp.eye(c, dtype=f.dtype)
    s_t = sig.T  # (C, N)
    lam = xp.reshape(eye_c, (c, c, 1)) * xp.reshape(s_t, (c, 1, n)) - xp.reshape(s_t, (c, 1, n)) * xp.reshape(s_t, (1, c, n))
    full = xp.reshape(lam, (c, c, n, 1)) * xp.reshape(xp.eye(n, dtype=f.dtype), (1, 1, n, n))  # (C, C′, N, N′)
    full = xp.reshape(xp.permute_dims(full, (0, 2, 1, 3)), (c * n, c * n))
    return full + rho_tilde * xp.eye(c * n, dtype=f.dtype)


def accuracy(f, y) -> float:
    """Fraction correct: sign agreement for C = 1 (targets ±0.5), arg-max agreement otherwise."""
    xp = namespace_of(f)
    if f.shape[0] == 0:
        return float("nan")
    if f.shape[1] == 1:
        hit = (f[:, 0] > 0) == (y[:, 0] > 0)
    else:
        hit = xp.argmax(f, axis=1) == xp.argmax(y, axis=1)
    return to_float(xp.mean(xp.astype(hit, f.dtype)))
