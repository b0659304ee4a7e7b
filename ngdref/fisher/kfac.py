"""K-FAC (Eq. 20, Section 4.3, B.3): one Kronecker-factored block per layer.

G_K-FAC,l = (B*_l + ρI) ⊗ (A*_{l−1} + ρI), with (S.95)

    A*_l = σ_w² h_lᵀ h_l / (N M_l) = āᵀā / N,      ā = σ_w h / √M   (N × M_l),
    B*_l = δ_lᵀ δ_l / N  (l < L),                  B*_L = I_C / N,

where δ_l is stacked over the C outputs (CN × M_l; for C = 1 exactly the paper's
N × M_l). The per-sample average in A*, B* is what makes α = NL (S.107) rather
than L. The output layer's B*_L = 1/N is the paper's convention (S.95).

Biases (σ_b > 0), two choices (B.3.3):

* ``bias="separate"`` (default, S.123): weights by K-FAC, biases by the usual FIM
  block ∇_{b_l}fᵀ∇_{b_l}f / N² + ρI per layer. Θ̄ is then *not* isotropic: the
  output-layer bias adds a rank-one 11ᵀ term (for C = 1), so no α is claimed;
* ``bias="folded"``: the bias is the last column of the Kronecker factor,
  ā = [σ_w h/√M, σ_b] (S.123, first paragraph: A_l → σ_w²A_l + σ_b²11ᵀ).

Structured path (S.96–S.103): with the dual Gram matrices B_l = δ_l δ_lᵀ (CN × CN) and
Ã_{l−1} = ā ā ᵀ (N × N) and the push-through identity,

    ΔW_l = δ_lᵀ (B_l/N + ρI)⁻¹ E_v (Ã_{l−1}/N + ρI)⁻¹ ā / N,     E_v = [diag(v_1); …; diag(v_C)],
    Θ̄_l(x′, x) = [B_l(x′,x)(B_l/N + ρI)⁻¹] ⊙ [1_C1_Cᵀ ⊗ Ã(x′,x)(Ã/N + ρI)⁻¹] / N,

(for the output layer δ_L(B*_L+ρ)⁻¹ is used directly), which at ρ = 0 is
N Σ_l 𝓑_l ⊙ 𝒜_{l−1} (S.105). For M0 < N the inputs should be Forster-transformed
(B.3.1(ii), :func:`ngdref.data.forster_transform`), then α = N(L − 1) + M0 (S.111).
C = 1 is what the paper covers; for C > 1 this is the natural generalisation and no
isotropy is claimed (α = None).
"""

from __future__ import annotations

import numpy as np

from ..backend import namespace_of
from ..alpha import kfac_alpha
from ..errors import ConfigError, NgdrefError
from ..linalg import damped_inverse
from .base import FisherApproximation

BIAS_MODES = ("separate", "folded")


class KFAC(FisherApproximation):
    name = "kfac"
    summary = "K-FAC (B*+ρI)⊗(A*+ρI) per layer (S.95); biases by the FIM block (S.123)"
    equation = "Eq. 20-21, S.95-S.124"

    def __init__(self, network, damping: float = 0.0, rtol=None, bias: str = "separate"):
        super().__init__(network, damping, rtol)
        if bias not in BIAS_MODES:
            raise ConfigError(f"unknown K-FAC bias handling {bias!r}; choose one of {', '.join(BIAS_MODES)}")
        self.bias = bias

    def to_dict(self):
        return {**super().to_dict(), "bias": self.bias}

    @property
    def _separate_bias(self) -> bool:
        return self.network.has_bias and self.bias == "separate"

    def analytic_alpha(self, n_samples):
        net = self.network
        if net.n_outputs != 1 or self._separate_bias:
            return None
        try:  # NL (S.107); N(L−1)+M0 with Forster-transformed inputs, no bias (S.111)
            return kfac_alpha(n_samples, net.depth, net.input_dim, bias=net.has_bias, forster=True)
        except NgdrefError:  # folded bias with M0 + 1 < N: not isotropic (S.109)
            return None

    def alpha_note(self) -> str:
        if self.network.n_outputs != 1:
            return "K-FAC with C > 1: natural generalisation, no isotropy claimed"
        if self._separate_bias:
            return "K-FAC with separate bias blocks (S.123) is not isotropic: the output bias adds 11ᵀ"
        return "α = NL for M0 >= N (S.107); N(L-1)+M0 for M0 < N with Forster-transformed inputs (S.111)"

    # ---- pieces -----------------------------------------------------------------------
    def _abar(self, signals, layer):
        a = signals.a[layer - 1]
        if self._separate_bias:
            return a[:, : self.network.widths[layer - 1]]
        return a

    def _left(self, signals, layer, b_gram=None):
        """(B_l/N + ρI)⁻¹ (dual, CN × CN) for l < L; for l = L the scalar 1/(1/N + ρ).

        ``b_gram``: δ_l δ_lᵀ when the caller already has it."""
        n = signals.n
        if layer == self.network.depth:
            return 1.0 / (1.0 / n + self.damping)
        if b_gram is None:
            d = signals.delta_matrix(layer)
            b_gram = d @ d.T
        return damped_inverse(b_gram / n, self.damping, self.rtol)

    def _right(self, abar, n, a_gram=None):
        """(Ā/N + ρI)⁻¹ (dual, N × N), Ā = ā āᵀ (``a_gram`` when the caller already has it)."""
        return damped_inverse((abar @ abar.T if a_gram is None else a_gram) / n, self.damping, self.rtol)

    def _bias_inverse(self, signals, layer, b_gram=None, left=None):
        """(σ_b² B_l/N² + ρI)⁻¹ (S.123's bias block, dual); ``left`` = (B_l/N)⁺ when already known.

        At ρ = 0 the two pseudo-inverses share one spectrum: (σ_b² B/N²)⁺ = (N/σ_b²)(B/N)⁺
        (the relative cut-off keeps the same eigenvalues), so no second ``eigh`` is needed.
        """
        n = signals.n
        if self.damping == 0 and left is not None and not isinstance(left, float):
            return left * (n / self.network.sigma_b2)
        if b_gram is None:
            d = signals.delta_matrix(layer)
            b_gram = d @ d.T
        return damped_inverse(self.network.sigma_b2 * b_gram / n**2, self.damping, self.rtol)

    # ---- structured path ---------------------------------------------------------------
    def precondition(self, signals, v):
        xp = namespace_of(v)
        c, n = v.shape
        vec = xp.reshape(v, (c * n,))
        out = []
        for l in range(1, self.network.depth + 1):
            d = signals.delta_matrix(l)  # (CN, M_l)
            abar = self._abar(signals, l)
            right = self._right(abar, n) @ abar  # (Ã/N+ρ)⁻¹ ā, (N, fan)
            left = self._left(signals, l)
            # Everything is assembled on the small CN-row side and multiplied by δᵀ once, so the
            # only parameter-sized array is the (M_l, fan_l) result itself (1/N and the bias
            # column folded in before the product).
            if isinstance(left, float):  # output layer: (B*_L + ρ)⁻¹ = 1/(1/N + ρ)
                mid = (left / n) * xp.reshape(v, (c, n, 1))  # E_v applied below
                small = xp.reshape(mid * xp.reshape(right, (1, n, right.shape[1])), (c * n, right.shape[1]))
            else:
                # (B/N+ρ)⁻¹ E_v: column n' = Σ_k L[:, (k, n')] v_k[n']
                le = xp.sum(xp.reshape(left, (c * n, c, n)) * xp.reshape(v, (1, c, n)), axis=1)  # (CN, N)
                small = le @ right
                small /= float(n)
            if self._separate_bias:
                bias_inv = self._bias_inverse(signals, l, left=left)
                col = (self.network.sigma_b / n) * (bias_inv @ xp.reshape(vec, (c * n, 1)))  # (CN, 1)
                small = xp.concat([small, col], axis=1)
            out.append(d.T @ small)
        return out

    def coefficient(self, signals, signals_prime=None):
        sp = signals if signals_prime is None else signals_prime
        xp = namespace_of(signals.f)
        c, n = signals.f.shape[1], signals.n
        total = None
        same = signals_prime is None or signals_prime is signals
        for l in range(1, self.network.depth + 1):
            d, dp = signals.delta_matrix(l), sp.delta_matrix(l)
            abar, abar_p = self._abar(signals, l), self._abar(sp, l)
            # each Gram once: B = δδᵀ and Ā = āāᵀ serve the inverses and, when x′ = x, the cross terms
            b_gram, a_gram = d @ d.T, abar @ abar.T
            b_cross = b_gram if same else dp @ d.T
            a_cross = a_gram if same else abar_p @ abar.T
            left = self._left(signals, l, b_gram)
            p = b_cross * left if isinstance(left, float) else b_cross @ left
            q = a_cross @ self._right(abar, n, a_gram)
            term = p * xp.tile(q, (c, c)) / n
            if self._separate_bias:
                term = term + self.network.sigma_b2 * (b_cross @ self._bias_inverse(signals, l, b_gram, left)) / n
            total = term if total is None else total + term
        return total

    # ---- explicit oracle ---------------------------------------------------------------
    def explicit_metric(self, params, x, signals=None):
        self._check_explicit()
        net = self.network
        s = signals if signals is not None else net.signals(params, x)
        from ..backend import to_host

        n = x.shape[0]
        size = net.n_params
        g = np.zeros((size, size))
        off = net.layer_offsets
        for l in range(1, net.depth + 1):
            d = np.asarray(to_host(s.delta_matrix(l)), dtype=np.float64)
            abar = np.asarray(to_host(self._abar(s, l)), dtype=np.float64)
            m_out, fan = net.layer_shape(l)
            b_star = np.eye(net.n_outputs) / n if l == net.depth else d.T @ d / n
            a_star = abar.T @ abar / n
            block = np.kron(b_star + self.damping * np.eye(m_out), a_star + self.damping * np.eye(abar.shape[1]))
            idx = np.arange(m_out)[:, None] * fan + np.arange(abar.shape[1])[None, :]
            w_idx = off[l - 1] + idx.reshape(-1)
            g[np.ix_(w_idx, w_idx)] = block
            if self._separate_bias:
                jb = net.sigma_b * d  # ∇_{b_l} f, (CN, M_l)
                b_idx = off[l - 1] + np.arange(m_out) * fan + (fan - 1)
                g[np.ix_(b_idx, b_idx)] = jb.T @ jb / n**2 + self.damping * np.eye(m_out)
        return g
