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

import re
from functools import lru_cache

import numpy as np

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


def add_to_diagonal(stack, d):
    """stack[u] + diag(d[u]) for a (c, p, p) stack and d (c, p): in place through a writable view of the
    diagonals for a NumPy array (O(c·p)); elsewhere stack + d ∘ I (the array API has no such view), whose
    entries are the same sums (off the diagonal a + 0·d = a), so every backend computes the same numbers."""
    if type(stack) is np.ndarray and stack.flags.writeable:
        np.einsum("cii->ci", stack)[...] += d
        return stack
    xp = namespace_of(stack)
    return stack + d[:, :, None] * xp.eye(stack.shape[-1], dtype=stack.dtype)


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


# ---- stacks of SPD solves --------------------------------------------------------------------
#: :func:`spd_solve_stack` calls LAPACK one matrix at a time for p >= SPD_LOOP_MIN or p·q >= SPD_LOOP_WORK
#: (development machine, one thread: NumPy's batched LU, whose overhead per matrix is 5 µs lower, was as fast
#: at p = 24, q = 1 and 10× faster at p = 4, q = 1; the loop was 1.1× faster at p = 4, q = 200)
SPD_LOOP_MIN, SPD_LOOP_WORK = 24, 800


#: the C signature of SciPy's ``cython_lapack.dposv`` capsule that :func:`_dposv` binds: LP64 ``int`` and
#: ``double`` (Cython names it ``__pyx_t_5scipy_6linalg_13cython_lapack_d``); the capsule points at SciPy's C
#: wrapper, so no Fortran hidden length of ``uplo`` is passed here
_DPOSV_SIGNATURE = re.compile(r"void \(char \*, int \*, int \*, (double|\w+cython_lapack_d) \*, int \*, \1 \*, int \*, int \*\)")


@lru_cache(maxsize=None)
def _dposv():
    """LAPACK's ``dposv`` (Cholesky factorisation and solve) from SciPy's ``cython_lapack`` as a ctypes function
    (calling it releases the GIL), or None where that capsule is missing or its signature is not the LP64 one
    of :data:`_DPOSV_SIGNATURE` (the batched LU is used then). The capsule's C API is read through prototypes of
    its own, not by setting ``argtypes`` on ``ctypes.pythonapi``'s shared function objects (other users)."""
    try:
        import ctypes

        from scipy.linalg import cython_lapack

        capsule = cython_lapack.__pyx_capi__["dposv"]
        api = ctypes.pythonapi
        get_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", api))
        get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(("PyCapsule_GetPointer", api))
        name = get_name(capsule)
        if name is None or _DPOSV_SIGNATURE.fullmatch(name.decode("ascii", "replace")) is None:
            return None
        address = get_pointer(capsule, name)
        if not address:
            return None
        integer = ctypes.POINTER(ctypes.c_int)
        # dposv(uplo, n, nrhs, a, lda, b, ldb, info), every argument by reference (Fortran)
        proto = ctypes.CFUNCTYPE(None, ctypes.c_char_p, integer, integer, ctypes.c_void_p, integer,
                                 ctypes.c_void_p, integer, integer)
        return proto(address), ctypes
    except (ImportError, KeyError, AttributeError, ValueError, TypeError):  # pragma: no cover - other SciPy builds
        return None


def spd_solve_shifted(k, shifts, b):
    """X[u] = (K + diag(shifts[u]))⁻¹ B[u] for one symmetric K (p, p), shifts (c, p) that keep every
    K + diag(shifts[u]) positive definite, and B (c, p, q): :func:`spd_solve_stack` without the (c, p, p) stack — where the ``dposv``
    loop runs (NumPy float64, systems as large as :data:`SPD_LOOP_MIN` asks) each unit's matrix is made from K in
    the scratch matrix itself (K stays in cache; the stack would be written and read back from memory); elsewhere
    (small systems, other backends) the stack K + shifts ∘ I and the batched LU."""
    xp = namespace_of(k, shifts, b)
    c, p = int(shifts.shape[0]), int(k.shape[0])
    if _posv_loop(k, b, p) is None:
        return spd_solve_stack(k[None, :, :] + shifts[:, :, None] * xp.eye(p, dtype=k.dtype), b)
    k = np.ascontiguousarray(k)
    diagonal = np.ascontiguousarray(np.diagonal(k))

    def fill(u, scratch):
        np.copyto(scratch, k)
        np.einsum("ii->i", scratch)[...] = diagonal + shifts[u]

    def matrix(u):
        return k + np.diag(shifts[u])

    return _solve_loop(fill, matrix, c, p, b)


def spd_solve_hadamard(gram, factors, shifts, b):
    """X[u] = ((F[u] F[u]ᵀ) ∘ G + diag(shifts[u]))⁻¹ B[u] for one symmetric G (p, p), factors F (c, p, r), shifts
    (c, p) and B (c, p, q), every matrix symmetric positive definite: the kernels of stacked Hadamard form
    (δ_R δ_Rᵀ) ∘ (a aᵀ) of the block-partition FIM's whole-row tiles (:mod:`ngdref.fisher.blockpartition`) without
    their (c, p, p) stack. Where the ``dposv`` loop runs (NumPy float64, :func:`_posv_loop`) each matrix is made in
    the scratch matrix from G (in cache) — F[u]F[u]ᵀ by one product (for r = 1 a broadcast product, each entry one
    multiplication, so the matrix is symmetric to the bit), times G, plus the shifts; elsewhere the stack and
    :func:`spd_solve_stack`."""
    xp = namespace_of(gram, factors, shifts, b)
    c, p = int(factors.shape[0]), int(gram.shape[0])
    if _posv_loop(gram, b, p) is None or type(factors) is not np.ndarray or type(shifts) is not np.ndarray:
        stack = (factors @ xp.linalg.matrix_transpose(factors)) * gram[None, :, :]
        return spd_solve_stack(add_to_diagonal(stack, shifts), b)
    gram = np.ascontiguousarray(gram)
    outer = np.multiply if int(factors.shape[2]) == 1 else np.matmul  # r = 1: a broadcast product, no BLAS call

    def fill(u, scratch):
        outer(factors[u], factors[u].T, out=scratch)
        np.multiply(scratch, gram, out=scratch)
        scratch.reshape(-1)[:: p + 1] += shifts[u]  # the diagonal, a strided view

    def matrix(u):
        return (factors[u] @ factors[u].T) * gram + np.diag(shifts[u])

    return _solve_loop(fill, matrix, c, p, b)


def _posv_loop(a, b, p: int):
    """LAPACK's ``dposv`` (:func:`_dposv`) where a loop over it is the faster way to solve (NumPy float64, large
    enough systems), else None."""
    if type(a) is not np.ndarray or type(b) is not np.ndarray or a.dtype != np.float64 or b.dtype != np.float64:
        return None
    if b.shape[0] == 0 or b.shape[2] == 0 or (p < SPD_LOOP_MIN and p * int(b.shape[2]) < SPD_LOOP_WORK):
        return None
    return _dposv()


def _solve_loop(fill, matrix, c: int, p: int, b):
    """The ``dposv`` loop: ``fill(u, scratch)`` writes unit u's matrix into the (p, p) scratch matrix, which LAPACK
    overwrites with its factor; ``matrix(u)`` gives it again for the LU fallback where Cholesky fails."""
    call, ctypes = _dposv()
    x = np.array(np.swapaxes(b, 1, 2), order="C")  # (c, q, p): each X[u]ᵀ row by row is X[u] column by column
    q = int(x.shape[1])
    scratch = np.empty((p, p), dtype=np.float64)
    n, nrhs, info = ctypes.c_int(p), ctypes.c_int(q), ctypes.c_int(0)
    ref_n, ref_q, ref_info = ctypes.byref(n), ctypes.byref(nrhs), ctypes.byref(info)
    lower, scratch_at, x_at, x_step = b"L", scratch.ctypes.data, x.ctypes.data, x.strides[0]
    failed = []
    for u in range(c):
        fill(u, scratch)
        call(lower, ref_n, ref_q, scratch_at, ref_n, x_at + u * x_step, ref_n, ref_info)
        if info.value < 0:  # an argument LAPACK refuses: a defect here, not a property of the matrix
            raise RuntimeError(f"dposv: argument {-info.value} illegal (n = {p}, nrhs = {q})")
        if info.value > 0:
            failed.append(u)
    for u in failed:  # info > 0: a non-positive pivot stopped the factorisation (x[u] was not touched)
        x[u] = np.linalg.solve(matrix(u), b[u]).T
    return np.swapaxes(x, 1, 2)


def spd_solve_stack(a, b):
    """X[u] = A[u]⁻¹ B[u] for a stack of symmetric positive definite A (c, p, p) and B (c, p, q).

    NumPy float64 stacks of large enough systems (:data:`SPD_LOOP_MIN`): LAPACK's Cholesky solver ``dposv``, one
    matrix at a time through ctypes (a symmetric row-major matrix is its own column-major one; each A[u] is copied
    into a scratch matrix, so ``a`` is left as it was). The factorisation reads only A[u]'s upper triangle
    (row-major), the LU below all of it: A[u] must be symmetric to the bit for both to solve the same system.
    NumPy's ``linalg.solve`` is LU (``getrf``: twice the factorisation's flops) and copies every matrix into
    Fortran order; ``dposv`` was 1.6–2.7× faster per 100×100 system on one core of the development machine
    (q = 1 and 200), and the ctypes call releases the GIL, so pieces on two threads ran 1.6–1.8× faster than
    NumPy's batched solve on two threads (SciPy's f2py ``lapack.dposv`` holds the GIL: no gain on two threads). A matrix whose Cholesky factorisation fails (not numerically
    positive definite) is solved by LU, as is every other stack (``xp.linalg.solve``)."""
    xp = namespace_of(a, b)
    c, p = int(a.shape[0]), int(a.shape[-1])
    if _posv_loop(a, b, p) is None:
        return xp.linalg.solve(a, b)
    a = np.ascontiguousarray(a)
    return _solve_loop(lambda u, scratch: np.copyto(scratch, a[u]), lambda u: a[u], c, p, b)
