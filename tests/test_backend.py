"""The backend switch and the strict guard that stands in for a GPU on CPU-only CI."""

from __future__ import annotations

import numpy as np
import pytest

from ngdref import Network, empirical_ntk, get_backend, to_device, to_host
from ngdref.backend import BackendError, namespace_of

from .conftest import GPU, unit_rows


def test_strict_backend_refuses_host_calls():
    b = get_backend("strict")
    a = to_device(np.eye(3), b)
    with pytest.raises(TypeError, match="implicit conversion"):
        np.linalg.pinv(a)
    with pytest.raises(TypeError):
        a + np.ones((3, 3))
    import scipy.linalg

    with pytest.raises(TypeError):
        scipy.linalg.eigh(a)
    np.testing.assert_array_equal(to_host(a), np.eye(3))


def test_unknown_backend_and_dtype():
    with pytest.raises(BackendError, match="unknown backend"):
        get_backend("tpu")
    with pytest.raises(BackendError, match="unknown dtype"):
        get_backend("numpy", "float16")


@pytest.mark.skipif(GPU, reason="CuPy is usable here")
def test_cupy_absent_is_a_clear_error():
    with pytest.raises(BackendError, match="cupy"):
        get_backend("cupy")


def test_env_variable_selects_backend(monkeypatch):
    monkeypatch.setenv("NGDREF_BACKEND", "strict")
    assert get_backend().name == "strict"


def test_mixed_namespaces_rejected():
    b = get_backend("strict")
    with pytest.raises(TypeError, match="mixed"):
        namespace_of(np.ones(2), to_device(np.ones(2), b))


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy and a CUDA GPU")
def test_gpu_parity_float64():
    rng = np.random.default_rng(0)
    net = Network((20, 64, 64, 1), "relu", sigma_b2=0.5)
    x = unit_rows(rng, 10, 20)
    k_cpu = empirical_ntk(net, net.init(1), x)
    g = get_backend("cupy")
    k_gpu = to_host(empirical_ntk(net, net.init(1, g), to_device(x, g)))
    assert np.max(np.abs(k_cpu - k_gpu)) <= 1e-10 * np.max(np.abs(k_cpu))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(7, 3, 5), (1, 1, 1), (6, 0, 4), (5, 4, 9)])
def test_subtract_product_matches_the_explicit_update(backend, dtype, shape):
    """out −= s·(left @ right) in place: NumPy's BLAS β = 1 GEMM (into out's own memory) and the row blocks
    of the other backends both equal out − s·(left @ right) computed in float64 here."""
    from ngdref.backend import subtract_product, to_device, to_host

    m, k, n = shape
    rng = np.random.default_rng(3)
    host = [rng.standard_normal(s).astype(dtype).astype(np.float64) for s in ((m, n), (m, k), (k, n))]
    want = host[0] - 0.7 * (host[1] @ host[2])  # in float64 from the inputs as ``dtype`` holds them
    out, left, right = (to_device(a, backend, dtype) for a in host)
    assert subtract_product(out, left, right, 0.7, 2) is None  # in place: nothing returned
    got = to_host(out)
    assert got.dtype == np.dtype(dtype)
    scale = np.abs(host[0]) + 0.7 * (np.abs(host[1]) @ np.abs(host[2]))  # the sum's magnitude, entry by entry
    tol = 1e-15 if dtype == "float64" else 1e-6
    assert np.all(np.abs(got - want) <= tol * (k + 2) * scale)


@pytest.mark.parametrize("orders", ["CC", "CF", "FC", "FF"])
def test_subtract_product_numpy_blas_path_writes_in_place(orders, monkeypatch):
    """NumPy: one ``dgemm`` whose result *is* out's memory (a spy on SciPy's BLAS checks it), for C- and
    Fortran-ordered factors (a Fortran-ordered one is a transposed view such as δᵀ); a layout the BLAS path
    does not take (a strided out, a mixed dtype) goes by row blocks without calling it. All equal
    out − s·(left @ right) to the last bits."""
    import scipy.linalg.blas as blas

    from ngdref.backend import subtract_product

    calls = []
    real = blas.dgemm

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(np.shares_memory(result, kwargs["c"]))
        return result

    monkeypatch.setattr(blas, "dgemm", spy)
    rng = np.random.default_rng(4)
    out = rng.standard_normal((9, 6))
    left = np.asarray(rng.standard_normal((9, 4)), order=orders[0])
    right = np.asarray(rng.standard_normal((4, 6)), order=orders[1])
    want = out - 0.3 * (left @ right)
    fast = out.copy()
    subtract_product(fast, left, right, 0.3, 4)
    assert calls == [True]
    wide = np.zeros((9, 12))
    wide[:, ::2] = out  # a strided view: the row-block path
    view = wide[:, ::2]
    subtract_product(view, left, right, 0.3, 4)
    mixed = out.copy()
    subtract_product(mixed, left.astype(np.float32), right, 0.3, 4)
    assert calls == [True]
    for got, tol in ((fast, 1e-15), (view, 1e-15), (mixed, 1e-7)):
        assert np.max(np.abs(got - want)) <= tol * np.max(np.abs(want))
    assert np.array_equal(wide[:, 1::2], 0.0 * wide[:, 1::2])  # the gaps were not written
