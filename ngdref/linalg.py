"""Small dense linear algebra shared by the structured paths (N×N or CN×CN matrices).

Zero damping means the Moore–Penrose pseudo-inverse (the paper's zero-damping
limit, Section 3.2): eigenvalues below ``rtol · λ_max`` are treated as zero. The
default cut-off is ``rtol = n · eps(dtype)`` (NumPy's ``pinv`` convention, n the
matrix size): 2.2e-14 for n = 100 in float64, 1.2e-5 in float32. That rule is for a
matrix whose eigenvalues are computed together (each carries an error ~ eps·λ_max).
A *diagonal* metric's entries are computed one by one, each accurate relative to itself:
there the cut-off is absolute and per entry (:func:`sum_of_squares_floor`).
"""

from __future__ import annotations

from .backend import dtype_name_of, namespace_of
from .errors import NgdrefError

#: machine epsilon per dtype name (the one table of ngdref's cut-off conventions)
EPS = {"float32": 1.1920928955078125e-07, "float64": 2.220446049250313e-16}


def eps(dtype_name: str) -> float:
    """Machine epsilon of ``dtype_name`` ("float32" or "float64")."""
    return EPS[dtype_name]


def default_rtol(n: int, dtype_name: str) -> float:
    """NumPy's ``pinv`` cut-off for an n×n matrix: n·eps."""
    return float(max(n, 1)) * eps(dtype_name)


#: smallest positive normal number per dtype name (below it a value is subnormal or flushed to 0)
TINY = {"float32": 1.1754943508222875e-38, "float64": 2.2250738585072014e-308}


def sum_of_squares_floor(dtype_name: str) -> float:
    """Absolute cut-off tiny/eps for a sum of non-negative terms (a diagonal Fisher entry Σ_n J_ni²/N).

    Such a sum has no cancellation: rounding leaves it accurate to about (number of terms)·eps
    relative to itself, however small it is next to other entries. Underflow is the one exception:
    a term below ``tiny`` (the smallest normal number) is subnormal or, where the hardware flushes
    subnormals, 0 — an absolute error up to ``tiny`` per term. Above tiny/eps that is again below
    eps relative per term, i.e. within the rounding bound; below it the entry has lost its
    relative accuracy (its inverse would be ~1/tiny, at the edge of overflow). 9.9e-32 in
    float32, 1.0e-292 in float64.
    """
    return TINY[dtype_name] / EPS[dtype_name]


#: reciprocal condition number (LAPACK ``pocon``) below which a training-set kernel of the analytic,
#: infinite-width theory (N×N, host float64) is refused as singular: Θ̄ = K(x′, x)K⁻¹ is then
#: meaningless at any precision worth reporting
SPD_RCOND = 1e-10


def small_matrix_rtol(n: int) -> float:
    """Relative tolerance for exact properties of a small host float64 matrix given by the user
    (Σ of Eq. 15: symmetric, singular, a multiple of 11ᵀ): 100·n·eps, far above rounding in
    forming it and far below any meaningful difference."""
    return 100.0 * max(n, 1) * eps("float64")


def numerically_singular(eigenvalues, rtol: float) -> bool:
    """min|λ| <= rtol·max|λ| (or all λ = 0): the matrix is singular to the given relative accuracy."""
    xp = namespace_of(eigenvalues)
    mag = xp.abs(eigenvalues)
    scale = float(xp.max(mag))
    return scale == 0.0 or float(xp.min(mag)) <= rtol * scale


def symmetrize(k):
    return (k + namespace_of(k).linalg.matrix_transpose(k)) / 2.0


def psd_pinv(k, rtol: float | None = None, with_rank: bool = False, shift: float = 0.0):
    """Pseudo-inverse of a symmetric PSD matrix (or a stack of them) by ``eigh`` with relative cut-off:
    Σ_{λ > τ} u uᵀ / (λ + ``shift``), τ = rtol·max|λ|.

    ``shift`` = ρ > 0 gives the damped inverse restricted to the range of k (the block-partition
    Fisher's per-tile (K + ρI)⁻¹ on range(K)); 0 is the Moore–Penrose pseudo-inverse.
    ``with_rank=True`` also returns the number of eigenvalues kept (per matrix), so a caller
    that needs to know whether K was singular does not decompose it a second time."""
    xp = namespace_of(k)
    n = k.shape[-1]
    rtol = default_rtol(n, dtype_name_of(k)) if rtol is None else float(rtol)
    w, v = xp.linalg.eigh(symmetrize(k))
    lam_max = xp.max(xp.abs(w), axis=-1, keepdims=True)
    keep = w > rtol * lam_max
    safe = xp.where(keep, w + float(shift) if shift else w, xp.ones_like(w))
    inv_w = xp.where(keep, 1.0 / safe, xp.zeros_like(w))
    pinv = (v * inv_w[..., None, :]) @ xp.linalg.matrix_transpose(v)
    if with_rank:
        return pinv, xp.sum(xp.astype(keep, xp.int64), axis=-1)
    return pinv


def symmetric_pinv(k, rtol: float | None = None):
    """Pseudo-inverse of a symmetric, possibly indefinite matrix by ``eigh``: eigenvalues with
    |λ| <= rtol·max|λ| are dropped (rtol = n·eps by default, as :func:`psd_pinv`). The absolute
    value matters for an indefinite matrix (the layer-wise K of a tri-diagonal Σ, whose negative
    eigenvalues are as real as its positive ones); on a PSD matrix both rules agree."""
    xp = namespace_of(k)
    n = k.shape[-1]
    rtol = default_rtol(n, dtype_name_of(k)) if rtol is None else float(rtol)
    w, v = xp.linalg.eigh(symmetrize(k))
    mag = xp.abs(w)
    keep = mag > rtol * xp.max(mag, axis=-1, keepdims=True)
    safe = xp.where(keep, w, xp.ones_like(w))
    inv_w = xp.where(keep, 1.0 / safe, xp.zeros_like(w))
    return (v * inv_w[..., None, :]) @ xp.linalg.matrix_transpose(v)


def spd_sqrt(k):
    """(K^{1/2}, K^{-1/2}) of a symmetric positive definite K by ``eigh`` (the cross-entropy output
    metric Λ̃ = Λ + ρ̃I of S.159, positive definite for ρ̃ > 0)."""
    xp = namespace_of(k)
    mu, q = xp.linalg.eigh(symmetrize(k))
    if not float(xp.min(mu)) > 0.0:
        raise NgdrefError("the output metric Λ̃ is not positive definite (S.159 needs ρ̃ > 0)")
    root = xp.sqrt(mu)
    qt = xp.linalg.matrix_transpose(q)
    return (q * root[None, :]) @ qt, (q / root[None, :]) @ qt


def damped_inverse(k, damping: float, rtol: float | None = None):
    """(K + ρI)⁻¹ for ρ > 0, the pseudo-inverse K⁺ for ρ = 0 (K symmetric PSD, possibly stacked)."""
    if damping > 0:
        xp = namespace_of(k)
        n = k.shape[-1]
        eye = xp.eye(n, dtype=k.dtype)
        return xp.linalg.inv(symmetrize(k) + damping * eye)
    return psd_pinv(k, rtol)


def damped_solve(k, rhs, damping: float, rtol: float | None = None):
    """(K + ρI)⁻¹ rhs for ρ > 0, K⁺ rhs for ρ = 0."""
    if damping > 0:
        xp = namespace_of(k)
        eye = xp.eye(k.shape[-1], dtype=k.dtype)
        return xp.linalg.solve(k + damping * eye, rhs)
    return psd_pinv(k, rtol) @ rhs
