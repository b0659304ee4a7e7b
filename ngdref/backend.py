"""Array backends: NumPy (default), CuPy (GPU) and a strict CPU stand-in for a device.

All library math is written against the Python array API standard, with the
namespace taken from the arrays themselves (``namespace_of``). Three backends:

``numpy``
    The default. NumPy >= 2 implements the standard in its main namespace.
``cupy``
    Chosen by ``--backend cupy`` or ``NGDREF_BACKEND=cupy``; refused with a
    clear :class:`BackendError` when CuPy (or a GPU) is absent.
``strict``
    ``array_api_strict`` with implicit conversion to NumPy disabled. It behaves
    like a device array library: calling a NumPy or SciPy function on one of its
    arrays, mixing it with a host ``numpy.ndarray``, or converting it to NumPy
    without going through :func:`to_host` raises ``TypeError``. Every array-level
    test takes the ``backend`` fixture of ``tests/conftest.py`` (numpy, strict, and
    cupy where present), so CI's ``pytest`` run exercises it: code which would break
    on CuPy fails on a CPU-only machine.

Random initialisation (Eq. 2) is drawn on the host from a seeded
``numpy.random.Generator`` and moved to the backend with :func:`to_device`, so a
seed gives the same network on every backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import NgdrefError

BACKENDS = ("numpy", "cupy", "strict")
DTYPES = ("float64", "float32")
ENV_BACKEND = "NGDREF_BACKEND"


class BackendError(NgdrefError):
    """A backend was requested that cannot be used here."""


#: the exception classes a backend's ``xp.linalg`` raises for a singular matrix: NumPy, the strict
#: backend (array-api-strict wraps NumPy) and CuPy (its cuSOLVER info check raises
#: ``numpy.linalg.LinAlgError``) all raise NumPy's class; ``except LINALG_ERRORS`` catches each of them
LINALG_ERRORS: tuple[type[Exception], ...] = (np.linalg.LinAlgError,)


_STRICT_PATCHED = False


def _strict_module():
    global _STRICT_PATCHED
    try:
        import array_api_strict as xps
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise BackendError(
            "the 'strict' backend needs array-api-strict (pip install 'ngdref[test]')"
        ) from exc
    if not _STRICT_PATCHED:
        array_type = type(xps.asarray(0.0))
        array_type._ngdref_host = array_type.__array__

        def _refuse(self, *args, **kwargs):
            raise TypeError(
                "implicit conversion of a device array to NumPy (use ngdref.backend.to_host); "
                "this would fail on CuPy"
            )

        array_type.__array__ = _refuse
        _STRICT_PATCHED = True
    return xps


def _cupy_module():
    try:
        import cupy  # type: ignore[import-not-found]
    except ImportError as exc:
        raise BackendError(
            "backend 'cupy' requested but CuPy is not installed (pip install 'ngdref[gpu]')"
        ) from exc
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise BackendError("backend 'cupy' requested but no CUDA device is visible")
    except BackendError:
        raise
    except Exception as exc:  # CUDA driver missing, etc.
        raise BackendError(f"backend 'cupy' requested but CUDA is unusable: {exc}") from exc
    return cupy


@dataclass(frozen=True)
class Backend:
    """A chosen array library and default floating dtype."""

    name: str
    xp: Any
    dtype_name: str = "float64"

    @property
    def dtype(self):
        return getattr(self.xp, self.dtype_name)


def get_backend(name: str | None = None, dtype: str = "float64") -> Backend:
    """Return the backend ``name`` (default: ``$NGDREF_BACKEND`` or ``numpy``)."""
    name = (name or os.environ.get(ENV_BACKEND) or "numpy").lower()
    if dtype not in DTYPES:
        raise BackendError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if name == "numpy":
        return Backend("numpy", np, dtype)
    if name == "cupy":
        return Backend("cupy", _cupy_module(), dtype)
    if name == "strict":
        return Backend("strict", _strict_module(), dtype)
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def namespace_of(*arrays):
    """The array namespace shared by ``arrays`` (Python scalars and ``None`` are ignored)."""
    namespaces = []
    for a in arrays:
        if a is None or isinstance(a, (int, float, complex, bool)):
            continue
        ns = a.__array_namespace__() if hasattr(a, "__array_namespace__") else None
        if ns is None:
            mod = type(a).__module__.split(".")[0]
            if mod == "cupy":
                import cupy  # type: ignore[import-not-found]

                ns = cupy
            else:
                raise TypeError(f"not an array: {type(a).__name__}")
        if ns not in namespaces:
            namespaces.append(ns)
    if not namespaces:
        return np
    if len(namespaces) > 1:
        names = ", ".join(getattr(n, "__name__", str(n)) for n in namespaces)
        raise TypeError(f"arrays from different libraries mixed: {names}")
    return namespaces[0]


def backend_of(array) -> Backend:
    """The :class:`Backend` an array lives on (dtype taken from the array)."""
    xp = namespace_of(array)
    name = {"numpy": "numpy", "cupy": "cupy", "array_api_strict": "strict"}.get(
        xp.__name__.split(".")[0], xp.__name__
    )
    return Backend(name, xp, dtype_name_of(array))


def as_float64(array):
    """``array`` in float64 on its own backend (no copy when it already is)."""
    xp = namespace_of(array)
    return array if array.dtype == xp.float64 else xp.astype(array, xp.float64)


def dtype_name_of(array) -> str:
    xp = namespace_of(array)
    if array.dtype == xp.float32:
        return "float32"
    if array.dtype == xp.float64:
        return "float64"
    raise TypeError(f"floating arrays of float32 or float64 expected, got {array.dtype}")


def to_device(host, backend: Backend, dtype=None):
    """Copy a host array onto ``backend`` (the only sanctioned host -> device move)."""
    dtype = backend.dtype if dtype is None else dtype
    if isinstance(dtype, str):
        dtype = getattr(backend.xp, dtype)
    if backend.name == "numpy":
        return np.asarray(host, dtype=dtype)
    host = np.asarray(host)
    if backend.name == "strict":
        return backend.xp.asarray(host.tolist() if host.ndim == 0 else host, dtype=dtype)
    return backend.xp.asarray(host, dtype=dtype)


def to_host(array) -> np.ndarray:
    """Copy an array of any backend to a NumPy array (the only sanctioned device -> host move)."""
    if isinstance(array, np.ndarray) or np.isscalar(array):
        return np.asarray(array)
    mod = type(array).__module__.split(".")[0]
    if mod == "cupy":
        return array.get()
    if hasattr(type(array), "_ngdref_host"):
        return np.asarray(type(array)._ngdref_host(array))
    return np.asarray(array)


def to_float(scalar_array) -> float:
    """A 0-d array as a Python float (a device synchronisation on GPUs)."""
    return float(to_host(scalar_array))


def erf(x):
    """Gauss error function on any backend (scipy.special / cupyx.scipy.special)."""
    xp = namespace_of(x)
    name = xp.__name__.split(".")[0]
    if name == "numpy":
        from scipy.special import erf as _erf

        return _erf(x)
    if name == "cupy":
        from cupyx.scipy.special import erf as _erf  # type: ignore[import-not-found]

        return _erf(x)
    # strict stand-in: array-api-strict has no special functions; an explicit,
    # documented host round trip (CuPy takes the branch above).
    from scipy.special import erf as _erf

    return xp.asarray(_erf(to_host(x)), dtype=x.dtype)


def subtract_product(out, left, right, scale: float, block_rows: int) -> None:
    """out −= scale · (left @ right) in place; out (m, n), left (m, k), right (k, n), one dtype.

    NumPy float32/float64 arrays with ``out`` C-ordered (a parameter matrix θ_l): one BLAS GEMM
    C := α·A·B + β·C with α = −scale, β = 1, written into ``out``'s own memory (BLAS is column-major, so
    it runs on the transposes: outᵀ −= scale·rightᵀ leftᵀ, every operand a view) — no (m, n) temporary
    and one pass over ``out`` instead of three (product, read, write). Elsewhere (the strict array API,
    CuPy, other layouts or mixed dtypes) ``block_rows`` rows at a time: out[r0:r1] −= (scale·left[r0:r1]) @
    right. The two may differ in the last bit (BLAS may fuse α·Σ_k left·right into the addition).
    """
    xp = namespace_of(out)
    if _blas_gemm_into(out, left, right, -float(scale)):
        return
    scaled = left * float(scale)
    for r0, r1 in row_blocks(out.shape[0], block_rows):
        out[r0:r1, ...] -= xp.matmul(scaled[r0:r1, ...], right)


def row_blocks(rows: int, step: int):
    """(r0, r1) blocks of ``step`` rows covering ``rows`` rows, the last one clipped (explicit ends: the array
    API does not clamp out-of-bounds slices)."""
    step = max(1, int(step))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def _blas_gemm_into(out, left, right, alpha: float) -> bool:
    """outᵀ := α·rightᵀ leftᵀ + outᵀ by SciPy's BLAS ``?gemm`` with ``overwrite_c`` (BLAS is column-major; a
    C-ordered ``out`` is a Fortran-ordered outᵀ, so f2py writes into its memory), when every operand is a 2-D
    NumPy array of ``out``'s float dtype and ``out`` is C-ordered; each factor goes in as its Fortran-ordered
    transpose, or, where the factor itself is Fortran-ordered (a transposed view such as δᵀ), untransposed with
    BLAS's transpose flag — so f2py copies nothing. False (nothing done) otherwise."""
    arrays = (out, left, right)
    if not all(type(a) is np.ndarray and a.ndim == 2 and a.dtype == out.dtype for a in arrays):
        return False
    if out.dtype not in (np.float32, np.float64) or not (out.flags.c_contiguous and out.flags.writeable):
        return False
    (a, trans_a), (b, trans_b) = _fortran_operand(right), _fortran_operand(left)  # op(a) = rightᵀ, op(b) = leftᵀ
    if a is None or b is None:
        return False
    if 0 in out.shape or left.shape[1] == 0:
        return True  # an empty product: nothing to subtract
    from scipy.linalg import blas

    gemm = blas.dgemm if out.dtype == np.float64 else blas.sgemm
    result = gemm(alpha, a, b, beta=1.0, c=out.T, trans_a=trans_a, trans_b=trans_b, overwrite_c=1)
    if not np.shares_memory(result, out):  # f2py made a copy after all: write it back (never expected)
        out[...] = result.T
    return True


def _fortran_operand(m):
    """(array, trans) with BLAS's op(array) = mᵀ and ``array`` Fortran-ordered, or (None, 0)."""
    if m.T.flags.f_contiguous:
        return m.T, 0
    if m.flags.f_contiguous:
        return m, 1
    return None, 0
