"""Layer-wise Fisher approximations with any symmetric Σ (Eq. 15–16, Section 4, B.1–B.2).

G_layer = Sᵀ (Σ ⊗ I_CN) S / N + ρI, with S = blockdiag(∇_{θ_1}f, …, ∇_{θ_L}f) (CNL × P).
Σ = I is the block-diagonal (BD) approximation (Section 4.1, α = L); the tri-diagonal
Σ of Eq. 19 gives block tri-diagonal NGD (Section 4.2; α from Lemma 4.3); Σ = 11ᵀ
gives exact NGD (S.91).

Structured path (S.72–S.74, S.89): by the push-through identity
(Sᵀ Σ̃ S/N + ρI)⁻¹ Sᵀ = Sᵀ (Ω + ρI)⁻¹ with Ω = Σ̃ S Sᵀ/N, whose (l, m) block is
Σ_lm Θ_m (a CNL × CNL matrix built from the layer kernels Θ_l of S.68). So

    Δθ_l = ∇_{θ_l}fᵀ z_l / N,   z = (Ω + ρI)⁻¹ (1_L ⊗ (f − y)),
    Θ̄(x′, x) = Σ_l Θ_l(x′, x) R_l,   R = (Ω + ρI)⁻¹ (1_L ⊗ I_CN).

At ρ = 0 with Σ nonsingular, z_l = (Σ⁻¹1_L)_l Θ_l⁺ (f − y) (S.89, the pseudo-inverse
of S.90) and Θ̄ = Σ_l (Σ⁻¹1)_l Θ_l(x′, x) Θ_l⁺ (Eq. 16, α = 1ᵀΣ⁻¹1, Theorem 4.1).
A singular Σ (the tri-diagonal Σ for L = 3s + 2, Lemma 4.3) has no zero-damping
limit: ρ = 0 is refused, ρ > 0 runs with a warning. Σ ∝ 11ᵀ is the exception of
S.91 and is handled as exact NGD.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..alpha import layerwise_alpha, layerwise_weights, tridiagonal_sigma
from ..backend import backend_of, namespace_of, to_device, to_host
from ..errors import ConfigError
from ..jacobian import layer_vjp
from ..linalg import psd_pinv
from ..ntk import layer_ntks
from .base import FisherApproximation
from .exact import ExactFisher


def _is_singular(sigma: np.ndarray) -> bool:
    ev = np.linalg.eigvalsh(sigma)
    return bool(np.min(np.abs(ev)) <= 1e-12 * max(1.0, float(np.max(np.abs(ev)))))


def _is_all_ones_multiple(sigma: np.ndarray) -> bool:
    return bool(np.allclose(sigma, sigma[0, 0]) and sigma[0, 0] > 0)


class LayerWiseFisher(FisherApproximation):
    """Layer-wise FIM with a symmetric L×L matrix Σ (Eq. 15)."""

    name = "layer"
    summary = "layer-wise FIM Sᵀ(Σ⊗I)S/N (+ρI) with a user-given symmetric Σ"
    equation = "Eq. 15-16"
    supports_cross_entropy = True

    def __init__(self, network, damping: float = 0.0, rtol=None, sigma=None):
        super().__init__(network, damping, rtol)
        if sigma is None:
            raise ConfigError("layer-wise FIM needs Σ (an L×L symmetric matrix); presets: bd, tridiag")
        sigma = np.asarray(sigma, dtype=np.float64)
        depth = network.depth
        if sigma.shape != (depth, depth):
            raise ConfigError(f"Σ must be {depth}×{depth} for a depth-{depth} network, got shape {sigma.shape}")
        if not np.all(np.isfinite(sigma)) or not np.allclose(sigma, sigma.T):
            raise ConfigError("Σ must be a finite symmetric matrix")
        self.sigma = sigma
        self.singular = _is_singular(sigma)
        self.is_exact = _is_all_ones_multiple(sigma)
        if self.singular and not self.is_exact:
            if self.damping == 0:
                layerwise_weights(sigma)  # raises the explanation (Lemma 4.3 for the tri-diagonal Σ)
            warnings.warn(
                f"Σ is singular (Lemma 4.3 for the tri-diagonal Σ at L = 3s+2): no zero-damping limit; "
                f"running with ρ = {self.damping}",
                RuntimeWarning,
                stacklevel=2,
            )

    def to_dict(self):
        return {**super().to_dict(), "sigma": self.sigma.tolist()}

    def analytic_alpha(self, n_samples):
        if self.is_exact:
            return 1.0 / float(self.sigma[0, 0])
        if self.singular:
            return None
        return layerwise_alpha(self.sigma)

    def _weights(self):
        """(Σ⁻¹ 1_L)_l of Eq. 16."""
        return layerwise_weights(self.sigma)

    def _exact_equivalent(self):
        # Σ = c·11ᵀ: G = c JᵀJ/N + ρI, i.e. exact NGD with F scaled by c (S.91)
        exact = ExactFisher(self.network, self.damping / float(self.sigma[0, 0]), self.rtol)
        exact.output_metric = self.output_metric
        return exact

    def _resolvent(self, kernels):
        """(Ω + ρI)⁻¹ (1_L ⊗ I_CN) split into L blocks R_l (each CN × CN).

        With a cross-entropy output metric Λ̃ (S.164) the blocks of Ω are Σ_lk Λ̃ Θ_k and
        at ρ = 0, R_l = (Σ⁻¹1)_l Θ_l⁺ Λ̃⁻¹ (S.165–S.167).
        """
        xp = namespace_of(kernels[0])
        depth, m = len(kernels), kernels[0].shape[0]
        metric = self.output_metric
        if self.damping == 0 and not self.singular:
            w = self._weights()
            inv_metric = None if metric is None else xp.linalg.inv(metric)
            blocks, singular = [], []
            for l in range(depth):
                pinv, rank = psd_pinv(kernels[l], self.rtol, with_rank=True)
                blocks.append(float(w[l]) * pinv)
                if int(rank) < m:
                    singular.append(l + 1)
            # Σ diagonal: G⁺ exactly; otherwise a singular Θ_l makes S.89 differ from G⁺∇L
            if singular and np.count_nonzero(self.sigma - np.diag(np.diag(self.sigma))):
                _warn_singular(singular[0])
            return blocks if inv_metric is None else [b @ inv_metric for b in blocks]
        sig = to_device(self.sigma, backend_of(kernels[0]))
        if metric is not None:
            kernels = [metric @ k for k in kernels]
        rows = [xp.concat([sig[l, k] * kernels[k] for k in range(depth)], axis=1) for l in range(depth)]
        omega = xp.concat(rows, axis=0)  # block (l, k) = Σ_lk Θ_k
        rhs = xp.concat([xp.eye(m, dtype=omega.dtype)] * depth, axis=0)
        r = _damped_nonsym_solve(omega, rhs, self.damping)
        return [r[l * m : (l + 1) * m, :] for l in range(depth)]

    def precondition(self, signals, v):
        if self.is_exact:
            out = self._exact_equivalent().precondition(signals, v)
            return [o / float(self.sigma[0, 0]) for o in out]
        xp = namespace_of(v)
        c, n = v.shape
        kernels = layer_ntks(signals)
        r = self._resolvent(kernels)
        vec = xp.reshape(v, (c * n, 1))  # Δθ_l = ∇_{θ_l}fᵀ R_l v / N
        out = []
        for l, (rl, _) in enumerate(zip(r, kernels), start=1):
            z = xp.reshape(rl @ vec, (c, n))
            out.append(layer_vjp(signals, l, z) / n)
        return out

    def coefficient(self, signals, signals_prime=None):
        if self.is_exact:
            return self._exact_equivalent().coefficient(signals, signals_prime) / float(self.sigma[0, 0])
        kernels = layer_ntks(signals)
        cross = kernels if signals_prime is None else layer_ntks(signals_prime, signals)
        r = self._resolvent(kernels)
        return sum(k @ rl for k, rl in zip(cross, r))

    def explicit_metric(self, params, x, signals=None):
        self._check_explicit()
        j = self._explicit_jacobian(params, x, signals)
        off = self.network.layer_offsets
        n = x.shape[0]
        w = np.eye(j.shape[0]) if self.output_metric is None else np.asarray(to_host(self.output_metric))
        g = np.zeros((j.shape[1], j.shape[1]))
        for l in range(self.network.depth):
            for k in range(self.network.depth):
                if self.sigma[l, k] != 0:
                    jl, jk = j[:, off[l] : off[l + 1]], j[:, off[k] : off[k + 1]]
                    g[off[l] : off[l + 1], off[k] : off[k + 1]] = self.sigma[l, k] * jl.T @ w @ jk / n
        return g + self.damping * np.eye(j.shape[1])


def _warn_singular(layer: int) -> None:
    """S.89–S.90 assume every Θ_l invertible; with a singular Θ_l the per-layer pseudo-inverse used
    here is no longer G⁺ (it still is for Σ = I, where G is block diagonal). Say so."""
    warnings.warn(
        f"layer kernel Θ_{layer} is singular: the zero-damping layer-wise step uses Θ_l⁺ (S.89), which "
        "equals G⁺∇L only for invertible Θ_l (S.90) or Σ = I; consider a damping ρ > 0",
        RuntimeWarning,
        stacklevel=4,
    )


def _damped_nonsym_solve(omega, rhs, damping):
    """(Ω + ρI)⁻¹ rhs for the (non-symmetric) Ω = Σ̃ SSᵀ/N."""
    xp = namespace_of(omega)
    eye = xp.eye(omega.shape[0], dtype=omega.dtype)
    return xp.linalg.solve(omega + damping * eye, rhs)


class BlockDiagonalFisher(LayerWiseFisher):
    """Block-diagonal (BD) approximation, Σ = I (Section 4.1, Eq. 18; α = L)."""

    name = "bd"
    summary = "block-diagonal (one block per layer), Σ = I; α = L"
    equation = "Eq. 15-18"

    def __init__(self, network, damping: float = 0.0, rtol=None):
        super().__init__(network, damping, rtol, sigma=np.eye(network.depth))


class TriDiagonalFisher(LayerWiseFisher):
    """Block tri-diagonal approximation, Σ of Eq. 19 (Section 4.2, Lemma 4.3)."""

    name = "tridiag"
    summary = "block tri-diagonal, Σ of Eq. 19; α = s (L=3s), s+1 (L=3s+1); singular for L=3s+2"
    equation = "Eq. 19, Lemma 4.3"

    def __init__(self, network, damping: float = 0.0, rtol=None):
        super().__init__(network, damping, rtol, sigma=tridiagonal_sigma(network.depth))
