"""Explicit P×P oracles of every Fisher approximation G, transcribed from the paper.

Karakida & Osawa, NeurIPS 2020 ("Understanding approximate Fisher information for fast
convergence of natural gradient descent in wide neural networks"). Host NumPy float64,
tiny networks only (G is P×P). Nothing here calls the library's structured code: the
forward pass (Eq. 1), the Jacobian (Eq. 6, by a literal chain rule), the metrics, the
pseudo-inverse and the cross-entropy output metric are written out below. Only the
network's *description* is read from a ``ngdref.Network`` (widths, activation name and
shift, σ_w², σ_b²), and parameters are the per-layer host arrays θ_l = [W_l | b_l].

Conventions (those of ``ngdref``'s docstrings, restated here):

* u_l = σ_w/√M_{l−1} W_l h_{l−1} + σ_b b_l, h_l = φ(u_l), h_0 = x, f = u_L (Eq. 1); with
  σ_b = 0 the biases are not parameters (θ_l = W_l).
* Flat parameter order: layer → unit → the unit's incoming weights, then its bias.
* Function space is output-major: row k·N + n of J is f_k(x_n).
* Loss L = ‖y − f‖²/(2N) (Eq. 3), ∇L = Jᵀ(f − y)/N; the direction is Δθ = G⁻¹∇L (Eq. 7)
  and Θ̄(x′, x) = J(x′) G⁻¹ J(x)ᵀ/N (Eq. 11), G built on the training inputs x.
* ρ = 0 means the Moore–Penrose pseudo-inverse with the cut-off of ``ngdref/linalg.py``:
  eigenvalues w of the symmetrised G with |w| <= rtol·max|w| are dropped,
  rtol = n·eps(float64) for an n×n matrix (NumPy's ``pinv`` rule). The absolute value
  matters: the tri-diagonal Σ of Eq. 19 is indefinite (eigenvalues 1 + 2cos(kπ/(L+1))), and
  so is its G; ``linalg.psd_pinv`` only ever sees PSD matrices, where both rules agree.
  Except for the entry-wise FIMs (diag, quasi-diag), whose entries are each accurate relative
  to themselves (sums of squares): there an entry is cut only when it is 0 (or underflowed),
  G_ii <= TAU = tiny/eps, and quasi-diag's pair determinant D_j = G_jj − G_bj²/G_bb (a
  cancellation) when D_j <= 8·N·eps·G_jj; see :func:`entrywise_pinv`.

Metrics (P×P, damping included):

* gd: I (Eq. 4).
* exact: F + ρI, F = JᵀJ/N (Eq. 8); cross-entropy: JᵀΛ̃J/N + ρI (S.159), Λ̃ = Λ(σ) + ρ̃I.
* layer-wise with Σ (Eq. 15): (JᵀΛ̃J/N) ∘ (Σ expanded to the layer blocks) + ρI, i.e. block
  (l, m) is Σ_lm ∇_{θ_l}fᵀ Λ̃ ∇_{θ_m}f / N (Λ̃ = I for MSE; S.164 for cross-entropy);
  bd is Σ = I (Section 4.1), tridiag is Σ of Eq. 19 (Σ_ij = 1 for |i − j| <= 1).
* unit-wise (Eq. 23): F masked to the blocks of each unit θ_i^{(l)}, + ρI.
* diag (Fig. 3, LeCun et al.): G_ij = (F_ii + ρ) δ_ij.
* quasi-diag (Fig. 3, Ollivier 2015): per unit (w_1 … w_m, b), with G_jj = F_jj + ρ,
  G_bb = F_bb + ρ, G_bj = F_bj: G_qd = diag(D_1, …, D_m, 0) + u uᵀ/G_bb,
  u = (G_b1, …, G_bm, G_bb), D_j = G_jj − G_bj²/G_bb — the metric whose inverse is
  Ollivier's quasi-diagonal update. A unit with G_bb = 0 (dead at ρ = 0: all of its
  F vanishes) keeps diag(G_jj). Without biases it is the diagonal FIM.
* kfac (Eq. 20, S.95): per layer (B*_l + ρI) ⊗ (A*_{l−1} + ρI) on the weights, with
  A*_{l−1} = σ_w² h_{l−1}ᵀh_{l−1}/(N M_{l−1}) and B*_l = δ_lᵀδ_l/N (δ_l = ∂f/∂u_l stacked
  over the C outputs, CN × M_l), B*_L = I_C/N; no coupling between layers. Biases (S.123,
  B.3.3): "folded" appends σ_b to the scaled input [σ_w h/√M, σ_b] inside A*;
  "separate" gives each layer's biases the FIM block ∇_{b_l}fᵀ∇_{b_l}f/N² + ρI.
* block (block-partition, an extension of Eq. 23): F masked to tiles of θ_l = [W_l | b_l]; parameter
  (unit i, column j) of layer l belongs to tile (l, min(⌊i/g⌋, ⌊M_l/g⌋ − 1), min(⌊j/k⌋, ⌊fan/k⌋ − 1))
  (the last group takes the remainder) — columns counted with the bias last, k = "all"/None the
  whole row, g = "all"/None the whole layer — + ρI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erf
from threadpoolctl import threadpool_limits

EPS = float(np.finfo(np.float64).eps)
NAMES = ("gd", "exact", "bd", "tridiag", "layer", "kfac", "unit", "diag", "quasi-diag")


# ---- the network, literally (Eq. 1) ------------------------------------------------------------
def _activation(name: str, shift: float):
    """(φ, φ′) written out (the library's Activation objects are not used)."""
    if name == "relu":
        return (lambda u: np.maximum(u, 0.0)), (lambda u: (u > 0).astype(np.float64))
    if name == "shifted-relu":
        return (lambda u: np.maximum(u, -shift)), (lambda u: (u > -shift).astype(np.float64))
    if name == "tanh":
        return np.tanh, (lambda u: 1.0 / np.cosh(u) ** 2)
    if name == "erf":
        return erf, (lambda u: 2.0 / math.sqrt(math.pi) * np.exp(-u * u))
    if name == "linear":
        return (lambda u: u), (lambda u: np.ones_like(u))
    if name == "abs":  # not a library activation: tests build it to make φ′ change sign
        return np.abs, np.sign
    raise ValueError(f"no oracle activation {name!r}")


@dataclass
class Net:
    """What the oracle reads of a network: widths (M_0, …, M_{L−1}, C), φ, σ_w², σ_b²."""

    widths: tuple
    act: str
    shift: float
    sw2: float
    sb2: float

    @classmethod
    def of(cls, net) -> "Net":
        act = net.activation
        return cls(tuple(int(w) for w in net.widths), act.name, float(getattr(act, "shift", 0.0)),
                   float(net.sigma_w2), float(net.sigma_b2))

    @property
    def depth(self) -> int:
        return len(self.widths) - 1

    @property
    def bias(self) -> bool:
        return self.sb2 > 0

    def fan(self, l: int) -> int:
        """Parameters per unit of layer l: M_{l−1} weights (+ the bias)."""
        return self.widths[l - 1] + int(self.bias)

    def layer_sizes(self) -> list[int]:
        return [self.widths[l] * self.fan(l) for l in range(1, self.depth + 1)]

    @property
    def n_params(self) -> int:
        return sum(self.layer_sizes())

    def layer_of_param(self) -> np.ndarray:
        """Layer index (0-based) of every flat parameter."""
        return np.repeat(np.arange(self.depth), self.layer_sizes())

    def unit_of_param(self) -> np.ndarray:
        """A global unit id of every flat parameter (layer → unit, each unit's fan-in contiguous)."""
        ids, start = [], 0
        for l in range(1, self.depth + 1):
            ids.append(start + np.repeat(np.arange(self.widths[l]), self.fan(l)))
            start += self.widths[l]
        return np.concatenate(ids)

    def is_bias_param(self) -> np.ndarray:
        out = []
        for l in range(1, self.depth + 1):
            col = np.zeros(self.fan(l), dtype=bool)
            col[-1] = self.bias
            out.append(np.tile(col, self.widths[l]))
        return np.concatenate(out)


def _host(params) -> list[np.ndarray]:
    return [np.array(p, dtype=np.float64) for p in params]


def _split(net: Net, theta: np.ndarray, l: int):
    """(W_l, b_l) from θ_l = [W_l | b_l] (b_l = 0 without biases)."""
    m_in = net.widths[l - 1]
    w = theta[:, :m_in]
    b = theta[:, m_in] if net.bias else np.zeros(theta.shape[0])
    return w, b


def forward(net: Net, params, x):
    """Eq. 1: returns (h_0 … h_{L−1}, u_1 … u_L); f = u_L, (N, C)."""
    phi, _ = _activation(net.act, net.shift)
    sw, sb = math.sqrt(net.sw2), math.sqrt(net.sb2)
    h, hs, us = np.asarray(x, dtype=np.float64), [], []
    for l, theta in enumerate(_host(params), start=1):
        hs.append(h)
        w, b = _split(net, theta, l)
        u = sw / math.sqrt(net.widths[l - 1]) * h @ w.T + sb * b
        us.append(u)
        h = phi(u)
    return hs, us


def backward(net: Net, params, x):
    """δ_l^{(k)}(x_n) = ∂f_k(x_n)/∂u_l by the chain rule, each as (C, N, M_l)."""
    _, dphi = _activation(net.act, net.shift)
    params = _host(params)
    hs, us = forward(net, params, x)
    n, c = us[-1].shape
    sw = math.sqrt(net.sw2)
    deltas = [np.broadcast_to(np.eye(c)[:, None, :], (c, n, c)).copy()]  # ∂f_k/∂u_L = e_k
    for l in range(net.depth - 1, 0, -1):
        w_next, _ = _split(net, params[l], l + 1)  # W_{l+1}: u_{l+1} = σ_w/√M_l W_{l+1} φ(u_l) + …
        d = np.einsum("knj,ji->kni", deltas[0], w_next) * (sw / math.sqrt(net.widths[l]))
        deltas.insert(0, d * dphi(us[l - 1])[None, :, :])
    return hs, us, deltas


def jacobian(net: Net, params, x) -> np.ndarray:
    """J = ∂f/∂θ, (CN, P): ∂f_k/∂W_{l,ij} = δ_{l,i}^{(k)} σ_w h_{l−1,j}/√M_{l−1}, ∂f_k/∂b_{l,i} = σ_b δ_{l,i}^{(k)}."""
    hs, us, deltas = backward(net, params, x)
    n, c = us[-1].shape
    sw, sb = math.sqrt(net.sw2), math.sqrt(net.sb2)
    blocks = []
    for l in range(1, net.depth + 1):
        d = deltas[l - 1]  # (C, N, M_l)
        dw = d[:, :, :, None] * (sw / math.sqrt(net.widths[l - 1]) * hs[l - 1])[None, :, None, :]
        if net.bias:
            dw = np.concatenate([dw, sb * d[:, :, :, None]], axis=3)  # the bias after the unit's weights
        blocks.append(dw.reshape(c * n, -1))
    return np.concatenate(blocks, axis=1)


def outputs(net: Net, params, x) -> np.ndarray:
    return forward(net, params, x)[1][-1]


# ---- pieces of the metrics -------------------------------------------------------------------
def softmax_metric(f: np.ndarray, rho_tilde: float) -> np.ndarray:
    """Λ(σ) + ρ̃I (S.158–S.159), CN × CN output-major: block diag(σ_n) − σ_nσ_nᵀ for each sample n."""
    n, c = f.shape
    z = np.exp(f - f.max(axis=1, keepdims=True))
    sig = z / z.sum(axis=1, keepdims=True)
    lam = np.zeros((c * n, c * n))
    for s in range(n):
        block = np.diag(sig[s]) - np.outer(sig[s], sig[s])
        idx = np.arange(c) * n + s
        lam[np.ix_(idx, idx)] = block
    return lam + rho_tilde * np.eye(c * n)


def tridiagonal_sigma(depth: int) -> np.ndarray:
    """Eq. 19: Σ_ij = 1 for i = j − 1, j, j + 1, 0 otherwise."""
    i = np.arange(depth)
    return (np.abs(i[:, None] - i[None, :]) <= 1).astype(np.float64)


def block_partition_tiles(net: Net, k=None, g=None) -> np.ndarray:
    """A tile label for every flat parameter: (layer, ⌊unit/g⌋, ⌊column/k⌋), the column of the
    unit's [W_i | b_i] (bias last), each index capped at its number of whole groups minus one (the
    last group takes the remainder); k or g None or "all": the whole row / the whole layer."""
    labels = []
    for l in range(1, net.depth + 1):
        fan, units = net.fan(l), net.widths[l]
        kk = fan if k in (None, "all") else min(int(k), fan)
        gg = units if g in (None, "all") else min(int(g), units)
        for i in range(units):
            for j in range(fan):
                labels.append((l, min(i // gg, units // gg - 1), min(j // kk, fan // kk - 1)))
    return np.unique(np.array(labels), axis=0, return_inverse=True)[1].reshape(-1)


def mask(net: Net, name: str, sigma=None, k=None, g=None) -> np.ndarray:
    """The P×P weights W with G = (JᵀΛ̃J/N) ∘ W + ρI for the masked approximations."""
    p = net.n_params
    if name == "block":
        tile = block_partition_tiles(net, k, g)
        return (tile[:, None] == tile[None, :]).astype(np.float64)
    if name == "exact":
        return np.ones((p, p))
    if name in ("bd", "tridiag", "layer"):
        sig = {"bd": np.eye(net.depth), "tridiag": tridiagonal_sigma(net.depth)}.get(name, sigma)
        sig = np.asarray(sig, dtype=np.float64)
        lay = net.layer_of_param()
        return sig[lay[:, None], lay[None, :]]
    if name == "unit":
        unit = net.unit_of_param()
        return (unit[:, None] == unit[None, :]).astype(np.float64)
    if name == "diag":
        return np.eye(p)
    raise ValueError(f"{name!r} is not a masked approximation")


def _quasi_diagonal(net: Net, fisher: np.ndarray, rho: float) -> np.ndarray:
    g_full = fisher + rho * np.eye(net.n_params)
    if not net.bias:
        return np.diag(np.diag(g_full))
    g = np.zeros_like(fisher)
    unit = net.unit_of_param()
    for i in np.unique(unit):
        idx = np.nonzero(unit == i)[0]  # (w_1 … w_m, b)
        blk = g_full[np.ix_(idx, idx)]
        gjj, gbb = np.diag(blk)[:-1], blk[-1, -1]
        if gbb == 0.0:  # dead unit at ρ = 0: no coupling is defined (and every F of the unit is 0)
            g[np.ix_(idx, idx)] = np.diag(np.diag(blk))
            continue
        gbj = blk[-1, :-1]
        u = np.concatenate([gbj, [gbb]])
        d = np.concatenate([gjj - gbj**2 / gbb, [0.0]])
        g[np.ix_(idx, idx)] = np.diag(d) + np.outer(u, u) / gbb
    return g


def _kfac(net: Net, params, x, rho: float, bias: str) -> np.ndarray:
    hs, us, deltas = backward(net, params, x)
    j = jacobian(net, params, x)
    n, c = us[-1].shape
    sw, sb = math.sqrt(net.sw2), math.sqrt(net.sb2)
    p = net.n_params
    g = np.zeros((p, p))
    start = 0
    for l in range(1, net.depth + 1):
        m_out, m_in, fan = net.widths[l], net.widths[l - 1], net.fan(l)
        abar = sw * hs[l - 1] / math.sqrt(m_in)  # (N, M_{l−1})
        folded = net.bias and bias == "folded"
        if folded:
            abar = np.concatenate([abar, np.full((n, 1), sb)], axis=1)
        a_star = abar.T @ abar / n  # S.95
        d = deltas[l - 1].reshape(c * n, m_out)  # δ_l stacked over outputs
        b_star = np.eye(c) / n if l == net.depth else d.T @ d / n  # S.95, B*_L = 1/N
        block = np.kron(b_star + rho * np.eye(m_out), a_star + rho * np.eye(abar.shape[1]))
        idx = start + (np.arange(m_out)[:, None] * fan + np.arange(abar.shape[1])[None, :]).reshape(-1)
        g[np.ix_(idx, idx)] = block
        if net.bias and not folded:  # S.123: ∇_b f ∇_b fᵀ/N² + ρI, the layer's bias columns of J
            b_idx = start + np.arange(m_out) * fan + (fan - 1)
            jb = j[:, b_idx]
            g[np.ix_(b_idx, b_idx)] = jb.T @ jb / n**2 + rho * np.eye(m_out)
        start += m_out * fan
    return g


def metric(name: str, network, params, x, rho: float = 0.0, sigma=None, bias: str = "separate",
           output_metric=None, k=None, g=1) -> np.ndarray:
    """G (P×P, damping included) of approximation ``name`` on inputs x; ``output_metric`` is Λ̃ (CN×CN)."""
    net = Net.of(network)
    if name == "gd":
        return np.eye(net.n_params)
    if name == "kfac":
        return _kfac(net, params, x, rho, bias)
    j = jacobian(net, params, x)
    lam = np.eye(j.shape[0]) if output_metric is None else np.asarray(output_metric, dtype=np.float64)
    fisher = j.T @ lam @ j / x.shape[0]
    if name == "quasi-diag":
        return _quasi_diagonal(net, fisher, rho)
    return fisher * mask(net, name, sigma, k, g) + rho * np.eye(net.n_params)


# ---- inverse, direction, Θ̄ -------------------------------------------------------------------
def _kept(w: np.ndarray, rtol: float | None) -> np.ndarray:
    rtol = w.size * EPS if rtol is None else rtol
    return np.abs(w) > rtol * np.max(np.abs(w))


def pinv(g: np.ndarray, rtol: float | None = None, eig=None) -> np.ndarray:
    """G⁺ of a symmetric matrix: eigenvalues with |w| <= rtol·max|w| are dropped, rtol = n·eps by default.
    ``eig``: (w, v) of the symmetrised G when already known."""
    w, v = np.linalg.eigh((g + g.T) / 2.0) if eig is None else eig
    keep = _kept(w, rtol)
    return (v[:, keep] / w[keep]) @ v[:, keep].T


#: entry-wise FIMs at ρ = 0: an entry (a sum of squares) is zero when <= tiny/eps (the smallest normal
#: float64 over eps, 1.0e-292); the 2×2 block (b, w_j) is singular when D_j <= PAIR_RTOL·N·eps·G_jj
TAU = float(np.finfo(np.float64).tiny) / EPS
PAIR_RTOL = 8.0


def entrywise_pinv(name: str, net: Net, g: np.ndarray, n: int) -> np.ndarray:
    """G⁺ of the diagonal or quasi-diagonal metric ``g`` at ρ = 0, entry by entry, N = ``n`` samples.

    diag: 1/G_ii where G_ii > TAU, else 0. quasi-diag (per unit, from G_qd's own diagonal and bias
    row): a unit with G_bb <= TAU is diagonal; otherwise D_j = G_jj − G_bj²/G_bb is set to 0 where
    D_j <= 8·N·eps·G_jj or G_jj <= TAU, and the block B = diag(D, 0) + uuᵀ/G_bb, whose range is
    then exactly span(e_V, u_Z) (V the kept weights, u_Z = u off V), is pseudo-inverted as
    Q (QᵀBQ)⁻¹ Qᵀ with Q an orthonormal basis of that range (a Jacobi-scaled inverse) — no
    eigenvalue cut relative to the largest entry, and not the library's closed form.
    """
    if name == "diag" or (name == "quasi-diag" and not net.bias):
        d = np.diag(g)
        return np.diag(np.where(d > TAU, 1.0 / np.where(d > TAU, d, 1.0), 0.0))
    if name != "quasi-diag":
        raise ValueError(f"{name!r} is not an entry-wise approximation")
    out = np.zeros_like(g)
    unit = net.unit_of_param()
    for i in np.unique(unit):
        idx = np.nonzero(unit == i)[0]  # (w_1 … w_m, b)
        blk = g[np.ix_(idx, idx)]
        gjj, gbb, gbj = np.diag(blk)[:-1], blk[-1, -1], blk[-1, :-1]
        if gbb <= TAU:  # dead unit: the diagonal rule
            d = np.diag(blk)
            out[np.ix_(idx, idx)] = np.diag(np.where(d > TAU, 1.0 / np.where(d > TAU, d, 1.0), 0.0))
            continue
        d = gjj - gbj**2 / gbb
        kept = (d > PAIR_RTOL * n * EPS * gjj) & (gjj > TAU)
        u = np.concatenate([gbj, [gbb]])
        b = np.diag(np.concatenate([np.where(kept, d, 0.0), [0.0]])) + np.outer(u, u) / gbb
        u_z = np.where(np.concatenate([kept, [False]]), 0.0, u)
        basis_v = np.eye(idx.size)[:, np.concatenate([kept, [False]])]
        q = np.concatenate([basis_v, (u_z / np.linalg.norm(u_z))[:, None]], axis=1)
        a = q.T @ b @ q
        sc = 1.0 / np.sqrt(np.diag(a))
        out[np.ix_(idx, idx)] = q @ (sc[:, None] * np.linalg.inv(sc[:, None] * a * sc[None, :]) * sc[None, :]) @ q.T
    return out


def inverse(g: np.ndarray, rho: float, eig=None) -> np.ndarray:
    """G⁻¹ for ρ > 0, G⁺ for ρ = 0 (the zero-damping limit)."""
    return np.linalg.inv(g) if rho > 0 else pinv(g, eig=eig)


def kept_condition(w: np.ndarray) -> float:
    """κ of G on the eigenvalues ``w`` that the pseudo-inverse keeps (for tolerances)."""
    kept = np.abs(w[_kept(w, None)])
    return float(kept.max() / kept.min())


@dataclass
class Oracle:
    """G, its (pseudo-)inverse, its spectrum and J on the training inputs of one case."""

    net: Net
    params: list
    x: np.ndarray
    g: np.ndarray
    g_inv: np.ndarray
    eigenvalues: np.ndarray
    j: np.ndarray

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def precondition(self, v) -> np.ndarray:
        """G⁻¹ Jᵀ v / N for a function-space v (C, N); flat P vector."""
        return self.g_inv @ (self.j.T @ np.asarray(v, dtype=np.float64).reshape(-1)) / self.n

    def direction(self, y) -> np.ndarray:
        """Δθ = G⁻¹∇L, ∇L = Jᵀ(f − y)/N (Eq. 3, 7)."""
        f = outputs(self.net, self.params, self.x)
        return self.precondition((f - np.asarray(y, dtype=np.float64)).T)

    def theta_bar(self, x_test=None) -> np.ndarray:
        """Θ̄(x′, x) = J(x′) G⁻¹ J(x)ᵀ/N (Eq. 11); x′ = x when ``x_test`` is None."""
        jp = self.j if x_test is None else jacobian(self.net, self.params, x_test)
        return jp @ self.g_inv @ self.j.T / self.n

    def condition(self) -> float:
        return kept_condition(self.eigenvalues)


def oracle(name: str, network, params, x, rho: float = 0.0, **options) -> Oracle:
    """The explicit oracle of ``name`` (options: ``sigma``, ``bias``, ``output_metric``; block: ``k``, ``g``) on host float64."""
    net = Net.of(network)
    params = _host(params)
    x = np.asarray(x, dtype=np.float64)
    with threadpool_limits(1, user_api="blas"):  # P×P with P ~ 10²: a threaded BLAS only loses time
        g = metric(name, network, params, x, rho, **options)
        w, v = np.linalg.eigh((g + g.T) / 2.0)
        if rho == 0 and name in ("diag", "quasi-diag"):
            g_inv = entrywise_pinv(name, net, g, x.shape[0])
        else:
            g_inv = inverse(g, rho, eig=(w, v))
    return Oracle(net, params, x, g, g_inv, w, jacobian(net, params, x))


def ntk(network, params, x_prime, x) -> np.ndarray:
    """Θ(x′, x) = J(x′) J(x)ᵀ/N (Eq. 6)."""
    net = Net.of(network)
    return jacobian(net, params, x_prime) @ jacobian(net, params, x).T / np.asarray(x).shape[0]
