"""Unit-wise FIM: the per-unit solves run on a thread pool (NumPy backend) and give the same bits
whatever the number of threads; the other backends stay serial.

The reference is the same code with one thread (``ngdref.threads.THREADS = 1``): every chunk is split
into contiguous pieces of units solved side by side, and each operation acts unit by unit, so the
results must be *identical*, not merely close (the oracle tests of test_fisher_unit_diag.py check
the values themselves). N > 64 so that some compacted systems take the blocked solve.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ngdref import Network, get_backend, to_device, to_host
from ngdref.fisher import UnitWiseFisher
from ngdref import threads

from .conftest import unit_rows

# (widths, activation, ρ): damped (ReLU: dead samples compacted away, shared-eigenbasis units in the
# last hidden layer), ρ = 0 with layer 1's K ≻ 0 (exact mode, alive and dead groups) and layer 2's K
# singular (pseudo-inverse mode), tanh (every unit alive on every sample), C = 2
CASES = [
    ((100, 24, 20, 1), "relu", 1e-3),
    ((100, 24, 20, 1), "relu", 0.0),
    ((100, 24, 20, 2), "tanh", 1e-6),
    ((100, 16, 12, 2), "relu", 0.0),
]


def _run(widths, act, rho, n_threads, monkeypatch, n=80, n_test=30):
    monkeypatch.setattr(threads, "THREADS", n_threads)
    rng = np.random.default_rng(3)
    net = Network(widths, act, 2.0, 0.5)
    be = get_backend("numpy")
    p = net.init(4, be)
    x, xt = unit_rows(rng, n, widths[0]), unit_rows(rng, n_test, widths[0])
    s, st = net.signals(p, to_device(x, be)), net.signals(p, to_device(xt, be))
    v = to_device(rng.standard_normal((widths[-1], n)), be)
    fim = UnitWiseFisher(net, rho)
    pair = fim.coefficient_pair(st, s)
    return ([to_host(o) for o in fim.precondition(s, v)] + [to_host(c) for c in pair]
            + [to_host(fim.coefficient(s)), to_host(fim.coefficient(st, s))])


@pytest.mark.parametrize("widths,act,rho", CASES)
def test_unit_wise_results_do_not_depend_on_the_thread_count(widths, act, rho, monkeypatch):
    names = []
    original = UnitWiseFisher._phi_alive

    def spy(self, *args):
        names.append(threading.current_thread().name)
        return original(self, *args)

    monkeypatch.setattr(UnitWiseFisher, "_phi_alive", spy)
    one = _run(widths, act, rho, 1, monkeypatch)
    assert not any(name.startswith("ngdref-unit") for name in names)
    names.clear()
    for n_threads in (2, 3):
        many = _run(widths, act, rho, n_threads, monkeypatch)
        assert len(many) == len(one)
        for a, b in zip(one, many):
            assert np.array_equal(a, b)  # bit for bit
    assert any(name.startswith("ngdref-unit") for name in names)  # the pieces did run on the pool
