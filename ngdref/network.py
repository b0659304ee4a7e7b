"""Fully connected networks in NTK parameterisation (Eq. 1–2) with hand-written signals.

Architecture (Eq. 1), for l = 1, …, L::

    u_l = (σ_w / √M_{l−1}) W_l h_{l−1} + σ_b b_l,    h_l = φ(u_l),    h_0 = x,   f = u_L

with W_{l,ij}, b_{l,i} ~ N(0, 1) (Eq. 2) and widths ``(M_0, M_1, …, M_{L−1}, C)``.

Parameters
----------
Layer l's parameters are held as one *augmented* matrix ``θ_l = [W_l | b_l]`` of
shape ``(M_l, M_{l−1} + 1)``; when σ_b = 0 the biases are **absent from θ**
(shape ``(M_l, M_{l−1})``), so P counts only trainable parameters. With the
*scaled input* ``a_{l−1} = [σ_w h_{l−1}/√M_{l−1}, σ_b]`` (N × (M_{l−1}+1)) the
layer is simply ``u_l = a_{l−1} θ_lᵀ`` and the derivatives of S.64 read

    ∂f_k(x_n)/∂θ_{l,ij} = δ_{l,i}^{(k)}(x_n) · a_{l−1,j}(x_n).

Flat parameter ordering (the columns of the Jacobian J, Eq. 6): layer by layer
(l = 1 … L), within a layer unit by unit (i = 1 … M_l), within a unit its
incoming weights W_{l,i1} … W_{l,iM_{l−1}} followed by its bias b_{l,i}. The
unit blocks θ_i^{(l)} = {W_{l,i·}, b_{l,i}} of Section 5 are therefore contiguous.

Function-space ordering (the rows of J): output-major, row ``k·N + n`` holds
f_k(x_n), matching Θ = I_C ⊗ Θ_ana/N (S.169).

Backward signals δ_l^{(k)} = ∂f_k/∂u_l (S.65) are computed for all outputs in one
batched pass, shape ``(C, N, M_l)``, with the factor σ_w/√M_l of the chain rule
written out (the paper's S.65 absorbs it into the notation):

    δ_L^{(k)} = e_k,   δ_l^{(k)} = φ′(u_l) ⊙ (σ_w/√M_l) δ_{l+1}^{(k)} W_{l+1}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .activations import Activation, get_activation
from .backend import Backend, get_backend, namespace_of, to_device, to_host
from .errors import ConfigError


#: entries per block when :meth:`Network.init` draws W_l
_INIT_BLOCK = 1 << 20


@dataclass(frozen=True)
class Network:
    """A fully connected NTK-parameterised network (Eq. 1) of widths ``(M_0, …, M_{L−1}, C)``."""

    widths: tuple[int, ...]
    activation: Activation = field(default_factory=lambda: get_activation("relu"))
    sigma_w2: float = 2.0
    sigma_b2: float = 0.0

    def __post_init__(self):
        widths = tuple(int(w) for w in self.widths)
        if len(widths) < 3:
            raise ConfigError(f"need depth L >= 2, i.e. at least 3 widths (M0, M1, C); got {widths}")
        if any(w < 1 for w in widths):
            raise ConfigError(f"widths must be positive, got {widths}")
        for name, v in (("sigma_w2", self.sigma_w2), ("sigma_b2", self.sigma_b2)):
            if not math.isfinite(float(v)) or float(v) < 0:
                raise ConfigError(f"{name} must be finite and >= 0, got {v}")
        if float(self.sigma_w2) == 0:
            raise ConfigError("sigma_w2 must be > 0")
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "activation", get_activation(self.activation))
        object.__setattr__(self, "sigma_w2", float(self.sigma_w2))
        object.__setattr__(self, "sigma_b2", float(self.sigma_b2))

    @classmethod
    def build(
        cls,
        input_dim: int,
        width: int | Sequence[int],
        depth: int,
        n_outputs: int = 1,
        activation: str | Activation = "relu",
        shift: float = 1.0,
        sigma_w2: float = 2.0,
        sigma_b2: float = 0.0,
    ) -> "Network":
        """``depth`` layers with hidden width(s) ``width`` (an int repeats it L−1 times)."""
        if depth < 2:
            raise ConfigError(f"depth L must be >= 2, got {depth}")
        hidden = [int(width)] * (depth - 1) if np.isscalar(width) else [int(w) for w in width]
        if len(hidden) != depth - 1:
            raise ConfigError(f"{len(hidden)} hidden widths given for depth {depth}")
        return cls(
            (int(input_dim), *hidden, int(n_outputs)),
            get_activation(activation, shift),
            sigma_w2,
            sigma_b2,
        )

    # -- shapes --------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.widths) - 1

    @property
    def input_dim(self) -> int:
        return self.widths[0]

    @property
    def n_outputs(self) -> int:
        return self.widths[-1]

    @property
    def has_bias(self) -> bool:
        """Biases are trainable parameters iff σ_b > 0 (otherwise absent from θ)."""
        return self.sigma_b2 > 0

    @property
    def sigma_w(self) -> float:
        return math.sqrt(self.sigma_w2)

    @property
    def sigma_b(self) -> float:
        return math.sqrt(self.sigma_b2)

    def layer_shape(self, layer: int) -> tuple[int, int]:
        """Shape of θ_l (1-based ``layer``): (M_l, M_{l−1} + [σ_b > 0])."""
        return (self.widths[layer], self.widths[layer - 1] + int(self.has_bias))

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(self.layer_shape(l)) for l in range(1, self.depth + 1))

    @property
    def layer_offsets(self) -> tuple[int, ...]:
        """Start of each layer in the flat parameter vector (length L+1, last = P)."""
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(self.layer_sizes)]))

    @property
    def n_params(self) -> int:
        """P, the number of trainable parameters."""
        return int(sum(self.layer_sizes))

    def to_dict(self) -> dict:
        return {
            "widths": list(self.widths),
            "depth": self.depth,
            "activation": self.activation.to_dict(),
            "sigma_w2": self.sigma_w2,
            "sigma_b2": self.sigma_b2,
            "n_params": self.n_params,
            "bias": "trainable" if self.has_bias else "absent (sigma_b2 = 0)",
        }

    # -- parameters ----------------------------------------------------------------------
    def init(self, seed: int = 0, backend: Backend | str | None = None, dtype: str | None = None):
        """Draw θ_0 (Eq. 2) on the host from ``numpy.random.default_rng(seed)`` and move it to ``backend``.

        Draw order: layer by layer, W_l (row-major) then b_l; the same seed gives
        the same network on every backend and dtype.
        """
        if not isinstance(backend, Backend):
            backend = get_backend(backend, dtype or "float64")
        elif dtype is not None:
            backend = Backend(backend.name, backend.xp, dtype)
        rng = np.random.default_rng(seed)
        params = []
        for l in range(1, self.depth + 1):
            m_out, m_in = self.widths[l], self.widths[l - 1]
            host = np.empty((m_out, m_in + int(self.has_bias)))
            # W_l drawn straight into θ_l a block of rows at a time (the stream is the same as one
            # (m_out, m_in) draw), so no second parameter-sized array exists while building θ_l
            rows = max(1, _INIT_BLOCK // max(1, m_in))
            for r0 in range(0, m_out, rows):
                host[r0 : r0 + rows, :m_in] = rng.standard_normal((min(rows, m_out - r0), m_in))
            b = rng.standard_normal(m_out)  # drawn with or without biases: one stream for every σ_b
            if self.has_bias:
                host[:, m_in] = b
            params.append(to_device(host, backend))
        return params

    # -- weights from (and to) other frameworks ------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        weights: Sequence,
        biases: Sequence | None = None,
        parameterization: str = "ntk",
        activation: str | Activation = "relu",
        shift: float = 1.0,
        sigma_w2: float = 2.0,
        sigma_b2: float | None = None,
        backend: Backend | str | None = None,
        dtype: str | None = None,
    ) -> tuple["Network", list]:
        """A network and its parameters θ_l = [W_l | b_l] from per-layer arrays (any framework, as NumPy).

        ``weights[l−1]`` is W_l of shape (M_l, M_{l−1}) (out × in, as ``torch.nn.Linear.weight``; a JAX/Flax
        kernel (in × out) must be transposed), ``biases[l−1]`` b_l of shape (M_l,); widths are read from
        the shapes. ``parameterization``:

        * ``"ntk"`` — the arrays are this library's (Eq. 1): u_l = σ_w W_l h/√M_{l−1} + σ_b b_l;
        * ``"standard"`` — u_l = W′_l h + b′_l (PyTorch, JAX, most code). The same function in Eq. 1 has

              W_l = (√M_{l−1}/σ_w) W′_l,        b_l = b′_l/σ_b.

        The function f(x) is the same; the Fisher, the NTK and every Θ̄ are those of the NTK
        parameterisation θ (the paper's), not of θ′ (their Jacobians differ by the constant factors
        above). Biases need σ_b > 0 (``sigma_b2``, required when biases are given: it sets the scale of
        b in θ); ``biases=None`` with σ_b² = 0 (or omitted), or σ_b² = 0 with all-zero biases, is a network without
        biases; ``biases=None`` with σ_b² > 0 is a network *with* biases, all zero (θ_l then holds the bias
        column, P counts it and the Fisher includes it). Non-finite weights or biases are refused."""
        if parameterization not in ("ntk", "standard"):
            raise ConfigError(f"parameterization must be 'ntk' or 'standard', got {parameterization!r}")
        ws = [np.asarray(to_host(w), dtype=np.float64) for w in weights]
        if len(ws) < 2 or any(w.ndim != 2 for w in ws):
            raise ConfigError("weights must be a list of L >= 2 matrices W_l of shape (M_l, M_{l-1})")
        widths = [ws[0].shape[1]] + [w.shape[0] for w in ws]
        for l, w in enumerate(ws, start=1):
            if not np.all(np.isfinite(w)):
                raise ConfigError(f"W_{l} has non-finite entries (NaN or inf); give finite weights")
            if w.shape[1] != widths[l - 1]:
                raise ConfigError(f"W_{l} has shape {w.shape}: its {w.shape[1]} columns do not match the "
                                  f"{widths[l - 1]} outputs of layer {l - 1} (W_l is (M_l, M_(l-1)), out x in)")
        bs = None
        if biases is not None:
            bs = [np.asarray(to_host(b), dtype=np.float64) for b in biases]
            if len(bs) != len(ws):
                raise ConfigError(f"{len(bs)} bias vectors for {len(ws)} weight matrices")
            for l, b in enumerate(bs, start=1):
                if b.shape != (widths[l],):
                    raise ConfigError(f"b_{l} has shape {b.shape}, expected ({widths[l]},)")
                if not np.all(np.isfinite(b)):
                    raise ConfigError(f"b_{l} has non-finite entries (NaN or inf); give finite biases")
            if sigma_b2 is None:
                raise ConfigError("biases given: pass sigma_b2 > 0, the bias scale σ_b² of Eq. 1 (b enters as σ_b b)")
            if float(sigma_b2) == 0:
                if any(np.any(b != 0) for b in bs):
                    raise ConfigError("nonzero biases need sigma_b2 > 0 (σ_b² = 0 means a network without biases)")
                bs = None
        net = cls(tuple(widths), get_activation(activation, shift), sigma_w2,
                  0.0 if sigma_b2 is None else float(sigma_b2))
        params = []
        for l, w in enumerate(ws, start=1):
            if parameterization == "standard":
                w = w * (math.sqrt(widths[l - 1]) / net.sigma_w)
            theta = w
            if net.has_bias:
                b = bs[l - 1] if bs is not None else np.zeros(widths[l])
                if parameterization == "standard":
                    b = b / net.sigma_b
                theta = np.concatenate([w, b[:, None]], axis=1)
            params.append(theta)
        if not isinstance(backend, Backend):
            backend = get_backend(backend, dtype or "float64")
        elif dtype is not None:
            backend = Backend(backend.name, backend.xp, dtype)
        return net, [to_device(p, backend) for p in params]

    def to_arrays(self, params, parameterization: str = "ntk") -> tuple[list, list | None]:
        """Inverse of :meth:`from_arrays`: host NumPy float64 (W_l (M_l, M_{l−1}) per layer, b_l (M_l,) per
        layer or ``None`` without biases), in the NTK parameterisation of Eq. 1 or as the standard
        W′_l = σ_w W_l/√M_{l−1}, b′_l = σ_b b_l."""
        if parameterization not in ("ntk", "standard"):
            raise ConfigError(f"parameterization must be 'ntk' or 'standard', got {parameterization!r}")
        self.check_params(params)
        weights, biases = [], []
        for l, p in enumerate(params, start=1):
            host = np.asarray(to_host(p), dtype=np.float64)
            m_in = self.widths[l - 1]
            w, b = host[:, :m_in].copy(), (host[:, m_in].copy() if self.has_bias else None)
            if parameterization == "standard":
                w *= self.sigma_w / math.sqrt(m_in)
                if b is not None:
                    b *= self.sigma_b
            weights.append(w)
            biases.append(b)
        return weights, (biases if self.has_bias else None)

    def check_params(self, params) -> None:
        if len(params) != self.depth:
            raise ConfigError(f"expected {self.depth} parameter blocks, got {len(params)}")
        for l, p in enumerate(params, start=1):
            if tuple(p.shape) != self.layer_shape(l):
                raise ConfigError(f"θ_{l} has shape {tuple(p.shape)}, expected {self.layer_shape(l)}")

    def flatten(self, params):
        """θ as one vector of length P in the documented order."""
        xp = namespace_of(params[0])
        return xp.concat([xp.reshape(p, (-1,)) for p in params])

    def unflatten(self, vector):
        """Inverse of :meth:`flatten`."""
        xp = namespace_of(vector)
        if tuple(vector.shape) != (self.n_params,):
            raise ConfigError(f"parameter vector of length {self.n_params} expected, got {tuple(vector.shape)}")
        off = self.layer_offsets
        return [
            xp.reshape(vector[off[l - 1] : off[l]], self.layer_shape(l)) for l in range(1, self.depth + 1)
        ]

    def unit_slice(self, layer: int, unit: int) -> slice:
        """Flat indices of θ_i^{(l)} = {W_{l,i·}, b_{l,i}} (1-based layer, 0-based unit)."""
        m_out, fan = self.layer_shape(layer)
        if not 0 <= unit < m_out:
            raise ConfigError(f"layer {layer} has {m_out} units, got unit {unit}")
        start = self.layer_offsets[layer - 1] + unit * fan
        return slice(start, start + fan)

    # -- forward and backward ------------------------------------------------------------
    def _check_inputs(self, x):
        if len(x.shape) != 2 or x.shape[1] != self.input_dim:
            raise ConfigError(
                f"inputs of shape (N, {self.input_dim}) expected, got {tuple(x.shape)} "
                f"(network input width M0 = {self.input_dim})"
            )

    def scaled_input(self, h):
        """a = [σ_w h/√M, σ_b 1]: the layer input whose product with θ_lᵀ gives u_l (Eq. 1)."""
        xp = namespace_of(h)
        scale = self.sigma_w / math.sqrt(h.shape[1])
        if not self.has_bias:
            return scale * h
        # One copy (concat) and one in-place pass, instead of scale·h and then a second copy.
        a = xp.concat([h, xp.ones((h.shape[0], 1), dtype=h.dtype)], axis=1)
        a *= scale
        a[:, -1] = self.sigma_b
        return a

    def forward(self, params, x) -> "Signals":
        """Forward pass (Eq. 1) keeping u_l, h_l and the scaled inputs a_{l−1}; δ not yet computed."""
        self._check_inputs(x)
        h, feats, us = [x], [], []
        for l, theta in enumerate(params, start=1):
            a = self.scaled_input(h[-1])
            u = a @ theta.T
            feats.append(a)
            us.append(u)
            if l < self.depth:
                h.append(self.activation.phi(u))
        return Signals(self, h, feats, us, None, us[-1])

    def output(self, params, x):
        """f_θ(x) = u_L, shape (N, C)."""
        return self.forward(params, x).f

    def signals(self, params, x) -> "Signals":
        """Forward pass plus backward signals δ_l^{(k)} = ∂f_k/∂u_l for every output k (S.65)."""
        return self._backward(params, self.forward(params, x))

    def signals_and_output(self, params, x, x_other):
        """(``signals(params, x)``, ``output(params, x_other)``) from one forward pass over the rows of both
        (Eq. 1: each layer's product reads θ_l once for N + N′ rows, not twice; 13–15 % faster at M = 4096,
        N = N′ = 100), the backward pass (S.65) on x's rows only. The signals' arrays are row blocks (views)
        of the joint pass (which they keep alive, x′'s rows included, N′ × Σ M_l entries more than ``signals``);
        each row is the same product as alone, up to the GEMM's rounding."""
        self._check_inputs(x_other)
        xp = namespace_of(x)
        n = x.shape[0]
        both = self.forward(params, xp.concat([x, x_other], axis=0))
        rows = [h[:n, ...] for h in both.h], [a[:n, ...] for a in both.a], [u[:n, ...] for u in both.u]
        s = Signals(self, rows[0], rows[1], rows[2], None, both.f[:n, ...])
        return self._backward(params, s), both.f[n:, ...]

    def _backward(self, params, s: "Signals") -> "Signals":
        """δ_l^{(k)} = ∂f_k/∂u_l for every output k (S.65) on the forward signals ``s``, stored in ``s.delta``."""
        xp = namespace_of(s.f)
        n, c = s.n, self.n_outputs
        eye = xp.eye(c, dtype=s.f.dtype)
        delta = [xp.broadcast_to(xp.reshape(eye, (c, 1, c)), (c, n, c))]  # δ_L^{(k)} = e_k
        for l in range(self.depth - 1, 0, -1):
            w_next = params[l][:, : self.widths[l]]  # W_{l+1}, (M_{l+1}, M_l)
            back = delta[0] @ w_next  # a fresh (C, N, M_l) product: scaled in place below
            back *= self.activation.dphi(s.u[l - 1])
            back *= self.sigma_w / math.sqrt(self.widths[l])
            delta.insert(0, back)
        s.delta = delta
        return s


@dataclass
class Signals:
    """Per-layer signals of one batch of inputs.

    ``h[l]`` (l = 0…L−1): h_l, (N, M_l). ``a[l−1]``: scaled input of layer l,
    (N, M_{l−1}+[bias]). ``u[l−1]``: u_l, (N, M_l). ``delta[l−1]``: δ_l, (C, N, M_l).
    ``f``: u_L, (N, C).
    """

    network: Network
    h: list
    a: list
    u: list
    delta: list | None
    f: object

    @property
    def n(self) -> int:
        return int(self.f.shape[0])

    def delta_matrix(self, layer: int):
        """δ_l stacked over outputs: (C·N, M_l), rows in output-major order."""
        d = self.delta[layer - 1]
        xp = namespace_of(d)
        return xp.reshape(d, (d.shape[0] * d.shape[1], d.shape[2]))


def function_vector(f_nc):
    """(N, C) outputs → CN vector, output-major (row k·N + n)."""
    xp = namespace_of(f_nc)
    return xp.reshape(f_nc.T, (-1,))
