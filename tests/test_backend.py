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
