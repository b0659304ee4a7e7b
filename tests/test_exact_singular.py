"""Exact NGD at ρ = 0 under the cross-entropy FIM (S.159) with a singular NTK Θ: the step is G⁺∇L.

G = JᵀΛ̃J/N = J̃ᵀJ̃/N with J̃ = Λ̃^{1/2}J, so (push-through, valid for the pseudo-inverse)
G⁺Jᵀr/N = Jᵀ Λ̃^{1/2} Θ̃⁺ Λ̃^{−1/2} r / N with Θ̃ = Λ̃^{1/2} Θ Λ̃^{1/2}. Θ⁺Λ̃⁻¹ (S.165–S.167) is the same
only when Θ is invertible; a network with fewer parameters than CN makes Θ singular.
"""

from __future__ import annotations

import numpy as np
import pytest

from ngdref import Network, to_device, to_host
from ngdref.fisher import get_fisher
from ngdref.losses import cross_entropy_metric, softmax

from . import oracles as O
from .conftest import unit_rows


@pytest.mark.parametrize("name,opts", [("exact", {}), ("layer", {"sigma": 2.0 * np.ones((3, 3))})])
@pytest.mark.parametrize("rho_tilde", [0.1, 1.0])
def test_cross_entropy_zero_damping_with_singular_ntk_is_pseudo_inverse(name, opts, rho_tilde, backend):
    rng = np.random.default_rng(4)
    net = Network((3, 2, 2, 3), "tanh", 2.0, 0.2)  # P = 8 + 6 + 9 = 23 < CN = 24: Θ is singular
    p = net.init(0)
    x = unit_rows(rng, 8, 3)
    y = np.eye(3)[[0, 1, 2, 1, 0, 2, 2, 1]]
    f = O.outputs(O.Net.of(net), p, x)
    resid = (softmax(f) - y).T
    orc = O.oracle(name, net, p, x, 0.0, output_metric=O.softmax_metric(f, rho_tilde), **opts)
    want = orc.precondition(resid)
    s = net.signals(net.init(0, backend), to_device(x, backend))
    fim = get_fisher(name, net, 0.0, **opts)
    got = to_host(net.flatten(fim.precondition(s, to_device(resid, backend), cross_entropy_metric(s.f, rho_tilde))))
    tol = max(1e-9, 1e4 * O.EPS * orc.condition())  # as every oracle comparison: rounding × cond(G on its range)
    assert np.max(np.abs(got - want)) < tol * np.max(np.abs(want)), (tol, orc.condition())
