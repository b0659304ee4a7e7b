"""Every Fisher approximation as a matrix-free linear operator: G, G⁻¹ and G⁻¹F (Eq. 7–11).

The curvature-library convention (curvlinops' ``GGNLinearOperator``, kfac-jax's blocks): a P×P
operator whose products never form G (P×P) nor the Jacobian J (CN×P). Each approximation
provides its pieces on its own class (:class:`~ngdref.fisher.base.FisherApproximation`):

* ``of="G"`` — :meth:`fisher_matvec`, G v with its damping (exact/layer-wise through J v and Jᵀu
  per layer; K-FAC as (B*+ρI) V (A*+ρI) per layer with S.123's bias block; unit-wise per unit;
  diag/quasi-diag entry by entry);
* ``of="G-inverse"`` — :meth:`inverse_matvec`, G⁻¹ v on *any* v (G⁺ v at ρ = 0, the zero-damping
  limit): push-through/Woodbury with the N- or CN-sized kernels (exact, layer-wise), inverse
  Kronecker factors (K-FAC), per-unit N×N duals (unit-wise), entry-wise maps (diag, quasi-diag);
* ``of="G-inverse-F"`` — :meth:`preconditioned_fisher_matvec`, G⁻¹F v with F = JᵀJ/N (MSE):
  G⁻¹Jᵀ(Jv)/N, i.e. the structured :meth:`precondition` of J v. Not symmetric; its transpose is
  F G⁻¹. Its nonzero eigenvalues are those of Θ̄(x, x) = J G⁻¹ Jᵀ/N (Eq. 11; AB and BA share
  their nonzero spectrum), so the isotropic condition Θ̄ = αI (Eq. 12) reads, in parameter space,
  "the nonzero spectrum of G⁻¹F is α·1" (condition number 1).

G and G⁻¹ are symmetric (``rmatvec = matvec``). The N-sized factors (kernels, their inverses)
are computed on the first product and kept by the operator, so CG and Lanczos pay them once.

Flat parameter vectors use the order of :mod:`ngdref.network` (the columns of J): layer by layer,
within a layer unit by unit (the rows of θ_l = [W_l | b_l], row-major), within a unit its incoming
weights then its bias (no bias entries when σ_b = 0). :func:`to_layers` / :func:`to_flat` go
between flat vectors (P,) or (P, k) and per-layer θ_l-shaped arrays; :func:`split_layer` splits
θ_l into (W_l, b_l).

Backends: :class:`FisherOperator` works on every backend through ``matvec``/``rmatvec``/``matmat``
(and ``@``) without any conversion to NumPy (the strict backend included);
:func:`fisher_operator` returns a ``scipy.sparse.linalg.LinearOperator`` on NumPy, a
``cupyx.scipy.sparse.linalg.LinearOperator`` on CuPy and the :class:`FisherOperator` itself on
other backends. :func:`top_eigenvalues` runs Lanczos (``eigsh``; ``eigs`` for the non-symmetric
G⁻¹F) on them; off NumPy it goes through the host explicitly (:meth:`FisherOperator.to_scipy`
with ``host=True``).
"""

from __future__ import annotations

import numpy as np

from ..backend import backend_of, namespace_of, to_device, to_host
from ..errors import ConfigError, NgdrefError
from ..network import Network, Signals
from .base import FisherApproximation

__all__ = ["OPERATORS", "FisherOperator", "fisher_operator", "max_eigenvalues", "split_layer", "to_flat", "to_layers",
           "top_eigenvalues"]

#: what an operator represents: G (damping included), G⁻¹ (G⁺ at ρ = 0), G⁻¹F (F = JᵀJ/N)
OPERATORS = ("G", "G-inverse", "G-inverse-F")
_SYMMETRIC = {"G": True, "G-inverse": True, "G-inverse-F": False}


# ---- flat vectors ↔ per-layer [W_l | b_l] ---------------------------------------------------------
def to_layers(network: Network, vector) -> list:
    """A flat parameter vector (P,) as per-layer θ_l-shaped arrays (views), or a (P, k) block as
    per-layer (k, M_l, fan_l) stacks; the order of :mod:`ngdref.network`."""
    xp = namespace_of(vector)
    if len(vector.shape) == 1:
        return network.unflatten(vector)
    if len(vector.shape) != 2 or vector.shape[0] != network.n_params:
        raise ConfigError(f"parameter vectors of shape ({network.n_params},) or ({network.n_params}, k) expected, "
                          f"got {tuple(vector.shape)}")
    off, k = network.layer_offsets, vector.shape[1]
    return [xp.reshape(vector[off[l - 1] : off[l], :].T, (k, *network.layer_shape(l)))
            for l in range(1, network.depth + 1)]


def to_flat(network: Network, layers):
    """Inverse of :func:`to_layers`: θ_l-shaped arrays → (P,); (k, M_l, fan_l) stacks → (P, k)."""
    xp = namespace_of(layers[0])
    if len(layers[0].shape) == 2:
        return network.flatten(layers)
    k = layers[0].shape[0]
    return xp.concat([xp.reshape(x, (k, -1)).T for x in layers], axis=0)


def split_layer(network: Network, layer: int, theta):
    """(W_l, b_l) of θ_l = [W_l | b_l] (1-based ``layer``); b_l is None without biases (σ_b = 0)."""
    m_in = network.widths[layer - 1]
    return theta[:, :m_in], (theta[:, m_in] if network.has_bias else None)


# ---- the operator --------------------------------------------------------------------------------
class FisherOperator:
    """G, G⁻¹ or G⁻¹F of one approximation on one batch of signals, as a P×P linear operator.

    ``matvec(x)`` takes (P,) or (P, 1), ``matmat(X)`` (P, k), both on the signals' backend and dtype;
    ``A @ x`` dispatches on the dimension; ``A.T`` (``A.H``) is the transposed operator."""

    def __init__(self, fisher: FisherApproximation, signals: Signals, of: str = "G", _transposed: bool = False):
        if of not in OPERATORS:
            raise ConfigError(f"unknown operator {of!r}; choose one of {', '.join(OPERATORS)}")
        if signals.delta is None:
            raise ConfigError("the operator needs the backward signals: use network.signals(params, x)")
        if fisher.network != signals.network:
            raise ConfigError("the approximation and the signals belong to different networks")
        self.fisher, self.signals, self.of = fisher, signals, of
        self.network = signals.network
        p = self.network.n_params
        self.shape = (p, p)
        self.dtype = signals.f.dtype
        self.xp = namespace_of(signals.f)
        self.symmetric = _SYMMETRIC[of]
        self._transposed = _transposed and not self.symmetric
        self._cache: dict = {}

    def __repr__(self) -> str:
        t = "ᵀ" if self._transposed else ""
        return f"<{self.shape[0]}x{self.shape[1]} FisherOperator {self.of}{t} of {self.fisher.name}>"

    # ---- products --------------------------------------------------------------------------------
    def _apply_layers(self, v: list, transpose: bool) -> list:
        f, s = self.fisher, self.signals
        if self.of == "G":
            return f.fisher_matvec(s, v, self._cache)
        if self.of == "G-inverse":
            return f.inverse_matvec(s, v, self._cache)
        if transpose:
            return f.preconditioned_fisher_rmatvec(s, v, self._cache)
        return f.preconditioned_fisher_matvec(s, v, self._cache)

    def _apply(self, x, transpose: bool):
        xp = self.xp
        if len(x.shape) == 2 and x.shape[1] == 1:
            return xp.reshape(self._apply(xp.reshape(x, (-1,)), transpose), (-1, 1))
        if tuple(x.shape) != (self.shape[1],):
            raise ConfigError(f"vector of shape ({self.shape[1]},) expected, got {tuple(x.shape)}")
        out = self._apply_layers(self.network.unflatten(x), transpose != self._transposed)
        return self.network.flatten(out)

    def matvec(self, x):
        """A x for x of shape (P,) or (P, 1)."""
        return self._apply(x, False)

    def rmatvec(self, x):
        """Aᵀ x (G, G⁻¹: A itself)."""
        return self._apply(x, True)

    def _columns(self, x, transpose: bool):
        if len(x.shape) != 2 or x.shape[0] != self.shape[1]:
            raise ConfigError(f"matrix of shape ({self.shape[1]}, k) expected, got {tuple(x.shape)}")
        cols = [self._apply(x[:, j], transpose) for j in range(x.shape[1])]
        if not cols:
            return self.xp.zeros((self.shape[0], 0), dtype=self.dtype)
        return self.xp.stack(cols, axis=1)

    def matmat(self, x):
        """A X for X of shape (P, k), column by column."""
        return self._columns(x, False)

    def rmatmat(self, x):
        return self._columns(x, True)

    def __matmul__(self, x):
        return self.matvec(x) if len(x.shape) == 1 else self.matmat(x)

    @property
    def T(self) -> "FisherOperator":
        """The transposed operator (the same one for G and G⁻¹; F G⁻¹ for G⁻¹F). Shares the cache."""
        if self.symmetric:
            return self
        op = FisherOperator(self.fisher, self.signals, self.of, not self._transposed)
        op._cache = self._cache
        return op

    H = T

    # ---- native operators ------------------------------------------------------------------------
    def to_scipy(self, host: bool = False):
        """A ``scipy.sparse.linalg.LinearOperator`` (NumPy arrays). ``host=True`` on another backend:
        every product copies its vector to the device and the result back (explicitly, through
        :func:`ngdref.backend.to_device`/:func:`~ngdref.backend.to_host`), e.g. for SciPy's ``eigs``."""
        from scipy.sparse.linalg import LinearOperator

        backend = backend_of(self.signals.f)
        if backend.name != "numpy" and not host:
            raise NgdrefError(f"to_scipy() needs NumPy arrays; this operator lives on {backend.name} "
                              "(use to_scipy(host=True), or the operator itself / native())")
        if backend.name == "numpy":
            return LinearOperator(self.shape, matvec=self.matvec, rmatvec=self.rmatvec, matmat=self.matmat,
                                  rmatmat=self.rmatmat, dtype=np.dtype(backend.dtype_name))

        def bridge(fn):
            return lambda x: to_host(fn(to_device(np.asarray(x), backend)))

        return LinearOperator(self.shape, matvec=bridge(self.matvec), rmatvec=bridge(self.rmatvec),
                              matmat=bridge(self.matmat), rmatmat=bridge(self.rmatmat),
                              dtype=np.dtype(backend.dtype_name))

    def to_cupyx(self):
        """A ``cupyx.scipy.sparse.linalg.LinearOperator`` (CuPy arrays)."""
        if backend_of(self.signals.f).name != "cupy":
            raise NgdrefError("to_cupyx() needs CuPy arrays")
        from cupyx.scipy.sparse.linalg import LinearOperator  # type: ignore[import-not-found]

        return LinearOperator(self.shape, matvec=self.matvec, rmatvec=self.rmatvec, matmat=self.matmat,
                              dtype=self.dtype)

    def native(self):
        """SciPy's LinearOperator on NumPy, CuPy's on CuPy, this object elsewhere (strict backend)."""
        name = backend_of(self.signals.f).name
        if name == "numpy":
            return self.to_scipy()
        if name == "cupy":
            return self.to_cupyx()
        return self


def fisher_operator(fisher: FisherApproximation, signals: Signals, of: str = "G", native: bool = True):
    """The matrix-free operator ``of`` ("G", "G-inverse" or "G-inverse-F") of ``fisher`` on the
    training signals ``signals`` (``network.signals(params, x)``). ``native=True``: a SciPy
    LinearOperator on NumPy, a cupyx one on CuPy, a :class:`FisherOperator` elsewhere;
    ``native=False``: always the :class:`FisherOperator`."""
    op = FisherOperator(fisher, signals, of)
    return op.native() if native else op


# ---- spectra -------------------------------------------------------------------------------------
#: up to this P, :func:`top_eigenvalues` forms the operator column by column and diagonalises it densely
DENSE_P = 64


def max_eigenvalues(n_params: int) -> int:
    """How many eigenvalues :func:`top_eigenvalues` can return for P = ``n_params``: all P when the
    operator is diagonalised densely (P ≤ :data:`DENSE_P`), else P − 2 (ARPACK needs k < P − 1)."""
    return int(n_params) if n_params <= DENSE_P else int(n_params) - 2


def _imaginary_tolerance(operator: FisherOperator, scale: float) -> float:
    """Largest imaginary part of a G⁻¹F eigenvalue still taken as rounding: Arnoldi on the
    non-symmetric G⁻¹F resolves eigenvalues to about ‖G⁻¹F‖·eps·√P (eps of the operator's dtype),
    and a cluster (an isotropic spectrum is one multiple eigenvalue) splits into complex pairs of
    about that size, amplified by the conditioning of G (ρ small). 1e4·√P·eps·scale covers both in
    float64 (≈1e-10 relative at P = 1e4) and float32 (≈5e-2) while a genuinely complex spectrum
    (a non-symmetric Θ̄, a bug) stays far above it in float64."""
    eps = float(np.finfo(np.dtype(backend_of(operator.signals.f).dtype_name)).eps)
    return 1e4 * np.sqrt(operator.shape[0]) * eps * max(scale, 1e-300)


def top_eigenvalues(operator: FisherOperator, k: int, tol: float = 0.0, seed: int = 0,
                    ncv: int | None = None) -> np.ndarray:
    """The k eigenvalues of largest magnitude (host float64, ordered by descending |λ|) by Lanczos:
    SciPy's ``eigsh`` for a symmetric operator (G, G⁻¹), ``eigs`` (implicitly restarted Arnoldi) for
    G⁻¹F, whose eigenvalues are real (those of the symmetric Θ̄) — their imaginary parts are dropped;
    above :func:`_imaginary_tolerance` (rounding in the operator's dtype) a RuntimeWarning names the
    residue (a numerical limit, not a user error). CuPy's ``eigsh`` for symmetric operators on CuPy
    (with the same start vector, on the device); otherwise the host bridge of
    :meth:`FisherOperator.to_scipy`. ``tol`` is ARPACK's (0: machine precision); the start vector is
    drawn from ``seed``, so the result is reproducible. For P ≤ 64 the operator is formed column by
    column and diagonalised densely (Lanczos needs k < P − 1)."""
    p = operator.shape[0]
    k = int(k)
    if p <= DENSE_P:
        if not 1 <= k <= p:
            raise ConfigError(f"k must be between 1 and P = {p} (got {k}); use --top {p} or fewer")
        xp = operator.xp
        dense = to_host(operator.matmat(xp.eye(p, dtype=operator.dtype))).astype(np.float64)
        w = np.linalg.eigvalsh((dense + dense.T) / 2) if operator.symmetric else np.linalg.eigvals(dense)
        w = _real_part(operator, w)
        return w[np.argsort(-np.abs(w), kind="stable")][:k]
    if not 1 <= k < p - 1:
        raise ConfigError(f"k must be between 1 and P − 2 = {p - 2} for Lanczos (got {k}); use --top {p - 2} or fewer")
    name = backend_of(operator.signals.f).name
    v0 = np.random.default_rng(seed).standard_normal(p)
    if operator.symmetric and name == "cupy":
        from cupyx.scipy.sparse.linalg import eigsh as cu_eigsh  # type: ignore[import-not-found]

        backend = backend_of(operator.signals.f)
        v0_dev = to_device(v0.astype(np.dtype(backend.dtype_name)), backend)
        w = to_host(cu_eigsh(operator.to_cupyx(), k=k, which="LM", tol=tol, ncv=ncv, v0=v0_dev,
                             return_eigenvectors=False))
    else:
        from scipy.sparse.linalg import eigs, eigsh

        lin = operator.to_scipy(host=name != "numpy")
        if operator.symmetric:
            w = eigsh(lin, k=k, which="LM", tol=tol, v0=v0, ncv=ncv, return_eigenvectors=False)
        else:
            w = _real_part(operator, eigs(lin, k=k, which="LM", tol=tol, v0=v0, ncv=ncv, return_eigenvectors=False))
    w = np.asarray(w, dtype=np.float64)
    return w[np.argsort(-np.abs(w), kind="stable")]


def _real_part(operator: FisherOperator, w) -> np.ndarray:
    """Real parts of G⁻¹F's eigenvalues; a RuntimeWarning when the imaginary residue exceeds rounding."""
    import warnings

    w = np.asarray(w)
    if not np.iscomplexobj(w):
        return w.astype(np.float64)
    scale = float(np.max(np.abs(w))) if w.size else 0.0
    residue = float(np.max(np.abs(w.imag), initial=0.0))
    if residue > _imaginary_tolerance(operator, scale):
        warnings.warn(f"G⁻¹F's computed eigenvalues have imaginary parts up to {residue:.3g} (relative "
                      f"{residue / max(scale, 1e-300):.3g}), above rounding in {backend_of(operator.signals.f).dtype_name}; reporting the "
                      "real parts (the exact spectrum, Θ̄'s, is real: ill-conditioned G at small ρ or low "
                      "precision — use float64 or a larger --damping)", RuntimeWarning, stacklevel=3)
    return np.asarray(w.real, dtype=np.float64)
