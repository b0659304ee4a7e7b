"""Shared fixtures. Core tests run on NumPy and on the strict backend (a CPU stand-in
for a device: NumPy/SciPy calls on its arrays raise), and on CuPy when a GPU is present.

Every array-level test takes ``backend``: it builds parameters and inputs there
(``net.init(seed, backend)``, ``to_device``) and compares on the host (``to_host``) with the
explicit oracles of tests/oracles.py or with NumPy. A test whose reference *is* the NumPy run
takes ``device_backend`` instead (every core backend but NumPy): NumPy against itself proves nothing."""

from __future__ import annotations

import numpy as np
import pytest

from ngdref.backend import BackendError, get_backend


def _gpu_available() -> bool:
    try:
        get_backend("cupy")
        return True
    except BackendError:
        return False


GPU = _gpu_available()
CORE_BACKENDS = ["numpy", "strict"] + (["cupy"] if GPU else [])


@pytest.fixture(params=CORE_BACKENDS)
def backend(request):
    return get_backend(request.param)


@pytest.fixture(params=[b for b in CORE_BACKENDS if b != "numpy"])
def device_backend(request):
    """The core backends other than NumPy, for tests that compare a backend with the NumPy run."""
    return get_backend(request.param)


#: tiny networks (widths, activation, σ_b²): every activation, with and without biases, C = 1, 2, 3
NETWORK_CASES = [
    ((4, 6, 3), "tanh", 0.0),
    ((4, 6, 3), "relu", 0.5),
    ((5, 7, 6, 1), "erf", 0.3),
    ((5, 7, 6, 2), "shifted-relu", 0.0),
    ((3, 5, 4, 6, 3), "linear", 0.4),
    ((3, 5, 4, 6, 1), "tanh", 0.0),
]


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def theta_bar(fim, s_train, s_test=None):
    """Θ̄(x′, x) of ``fim`` through its public ``coefficient``, G built on ``s_train``; Θ̄(x, x) when
    ``s_test`` is None. The one place in the tests that knows coefficient's argument order (x′ first)."""
    return fim.coefficient(s_train) if s_test is None else fim.coefficient(s_test, s_train)


def structured(fim, net, x, xt, y, backend=None, seed=1):
    """Δθ (flat), Θ̄(x, x), Θ̄(x′, x) of ``fim``'s structured path at θ_0 = ``net.init(seed, backend)``
    on ``backend`` (host arrays ``x``, ``xt``, ``y`` moved there; host arrays back), for the comparisons
    with the explicit oracles of tests/oracles.py."""
    from ngdref.backend import to_device, to_host

    p = net.init(seed, backend)
    xb, xtb, yb = (a if backend is None else to_device(a, backend) for a in (x, xt, y))
    s, st = net.signals(p, xb), net.signals(p, xtb)
    d = to_host(net.flatten(fim.direction(p, xb, yb, s)))
    return d, to_host(theta_bar(fim, s)), to_host(theta_bar(fim, s, st))


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory):
    """`ngdref reproduce NAME --quick --out DIR` once per figure per test session (lazily), shared by
    the modules that check its records and its drawing: ``reproduced(name)`` → (folder, JSON record,
    terminal output)."""
    import json

    from click.testing import CliRunner

    from ngdref_cli.main import cli

    root = tmp_path_factory.mktemp("reproduce")
    cache: dict = {}

    def get(name):
        if name not in cache:
            out = root / name
            r = CliRunner().invoke(cli, ["reproduce", name, "--quick", "--out", str(out)], catch_exceptions=False)
            assert r.exit_code == 0, r.output
            cache[name] = (out, json.loads((out / f"{name}.json").read_text()), r.output)
        return cache[name]

    return get
