"""Losses: MSE (Eq. 3) and softmax cross-entropy with its output metric Λ (Appendix D, S.158–S.159).

A :class:`Loss` gives what NGD (Eq. 7) and its records need of a loss L(f, y) over N samples:

* :meth:`Loss.residual` — r = N ∂L/∂f as a (C, N) function-space vector, so that
  ∇_θL = Jᵀ r / N and the NGD direction is G⁻¹Jᵀr/N (``precondition(signals, r, …)``);
* :meth:`Loss.output_metric` — the output metric of the FIM, ``None`` for MSE (G = JᵀJ/N + ρI),
  Λ(σ) + ρ̃I for cross-entropy (G = JᵀΛ̃J/N + ρI, S.159);
* :meth:`Loss.total` and :meth:`Loss.normaliser` — L = total/normaliser with ``total`` a 0-d
  array on the arrays' backend, so callers can copy several totals to the host at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backend import namespace_of, to_float
from .errors import ConfigError


def squared_error(f, y):
    """Σ_n ‖f(x_n) − y_n‖² as a 0-d array; f, y are (N, C)."""
    xp = namespace_of(f)
    r = f - y
    return xp.sum(r * r)


def mse_loss(f, y) -> float:
    """L = Σ_n ‖y_n − f(x_n)‖² / (2N) (Eq. 3); f, y are (N, C)."""
    return to_float(squared_error(f, y)) / (2.0 * f.shape[0])


def softmax(f):
    """σ^{(k)} = exp(f_k)/Σ_k′ exp(f_k′) row-wise, numerically stable."""
    xp = namespace_of(f)
    z = f - xp.max(f, axis=1, keepdims=True)
    e = xp.exp(z)
    return e / xp.sum(e, axis=1, keepdims=True)


def cross_entropy(f, y_onehot):
    """−Σ_n Σ_k y_nk log σ^{(k)}(x_n) as a 0-d array (N times the loss)."""
    xp = namespace_of(f)
    z = f - xp.max(f, axis=1, keepdims=True)
    log_sm = z - xp.log(xp.sum(xp.exp(z), axis=1, keepdims=True))
    return -xp.sum(y_onehot * log_sm)


def cross_entropy_loss(f, y_onehot) -> float:
    """L = −Σ_n Σ_k y_nk log σ^{(k)}(x_n) / N."""
    return to_float(cross_entropy(f, y_onehot)) / f.shape[0]


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


def correct_fraction(f, y):
    """Fraction correct as a 0-d array: sign agreement for C = 1 (targets ±0.5), arg-max
    agreement otherwise; NaN for no samples."""
    xp = namespace_of(f)
    if f.shape[0] == 0:
        return xp.asarray(float("nan"), dtype=f.dtype)
    if f.shape[1] == 1:
        hit = (f[:, 0] > 0) == (y[:, 0] > 0)
    else:
        hit = xp.argmax(f, axis=1) == xp.argmax(y, axis=1)
    return xp.mean(xp.astype(hit, f.dtype))


def accuracy(f, y) -> float:
    """:func:`correct_fraction` as a float."""
    return to_float(correct_fraction(f, y))


@dataclass(frozen=True)
class Loss:
    """A loss L(f, y) = total(f, y)/normaliser(N); see the module docstring."""

    name: str

    def total(self, f, y):
        raise NotImplementedError

    def normaliser(self, n: int) -> float:
        raise NotImplementedError

    def value(self, f, y) -> float:
        """L(f, y) as a float."""
        return to_float(self.total(f, y)) / self.normaliser(f.shape[0])

    def residual(self, f, y):
        """r = N ∂L/∂f, (C, N)."""
        raise NotImplementedError

    def output_metric(self, f):
        """The FIM's output metric at outputs f; ``None`` is the identity (MSE)."""
        return None


@dataclass(frozen=True)
class MSELoss(Loss):
    """L = Σ_n ‖f(x_n) − y_n‖²/(2N) (Eq. 3): r = (f − y)ᵀ, no output metric."""

    name: str = "mse"

    def total(self, f, y):
        return squared_error(f, y)

    def normaliser(self, n: int) -> float:
        return 2.0 * n

    def residual(self, f, y):
        return (f - y).T


@dataclass(frozen=True)
class CrossEntropyLoss(Loss):
    """L = −Σ_n Σ_k y_nk log σ^{(k)}(x_n)/N (Appendix D): r = (σ − y)ᵀ, output metric
    Λ(σ) + ρ̃I (S.159) with ρ̃ = ``rho_tilde``."""

    name: str = "ce"
    rho_tilde: float = 1.0

    def total(self, f, y):
        return cross_entropy(f, y)

    def normaliser(self, n: int) -> float:
        return float(n)

    def residual(self, f, y):
        return (softmax(f) - y).T

    def output_metric(self, f):
        return cross_entropy_metric(f, self.rho_tilde)


LOSSES = ("mse", "ce")


def get_loss(name: str, rho_tilde: float = 1.0) -> Loss:
    """The loss ``name`` (one of :data:`LOSSES`); ``rho_tilde`` is ρ̃ of cross-entropy's Λ̃ (S.159)."""
    if name == "mse":
        return MSELoss()
    if name == "ce":
        return CrossEntropyLoss(rho_tilde=rho_tilde)
    raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
