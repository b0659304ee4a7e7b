"""Block-partition FIM (ngdref.fisher.blockpartition, issue 16 part 2): the structured path on every
core backend vs the explicit P×P twin of tests/oracles.py (F masked to tiles of g units × k columns,
+ρI), its unit-wise / block-diagonal / diagonal limits against those approximations, its α for
whole-row tiles, its options, and the quick ``sub-unit`` extension figure."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from ngdref import Network, to_device, to_host
from ngdref.errors import ConfigError
from ngdref.fisher import REGISTRY, fisher_class, get_fisher
from ngdref.fisher.blockpartition import block_alpha
from ngdref.fisher.unitwise import unit_alpha

from . import oracles as O
from .conftest import structured, theta_bar, unit_rows

# tiny nets, N = 4: C = 1 and C = 2, biases off and on, fan-in >= N (and one layer with fan-in < N: (3, …))
CONFIGS = [
    ((6, 10, 1), "tanh", 0.0),
    ((6, 12, 10, 1), "relu", 0.5),
    ((5, 10, 9, 2), "tanh", 0.3),
    ((3, 7, 6, 2), "erf", 0.0),
]
# (k, g): entry-wise, sub-unit (k not dividing the fan), tiles of both kinds, whole rows, whole layers
PARTITIONS = [(1, 1), (3, 1), (2, 2), (4, 3), ("all", 1), (1, "all"), ("all", "all")]


def _setup(widths, act, sb2, seed=0, n=4, n_test=3):
    rng = np.random.default_rng(seed)
    net = Network(widths, act, 2.0, sb2)
    return net, net.init(seed + 1), unit_rows(rng, n, widths[0]), unit_rows(rng, n_test, widths[0]), \
        rng.standard_normal((n, widths[-1]))


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@functools.lru_cache(maxsize=None)
def _oracle_case(widths, act, sb2, k, g, rho):
    """(Δθ, Θ̄(x, x), Θ̄(x′, x), tol) of the explicit twin; tol 1e-9, widened to 1e4·eps·κ(G) where the
    pseudo-inverse of an ill-conditioned G is compared (ρ = 0)."""
    net, p, x, xt, y = _setup(widths, act, sb2)
    orc = O.oracle("block", net, p, x, rho, k=k, g=g)
    return orc.direction(y), orc.theta_bar(), orc.theta_bar(xt), max(1e-9, 1e4 * O.EPS * orc.condition())


@pytest.mark.parametrize("widths,act,sb2", CONFIGS)
@pytest.mark.parametrize("k,g", PARTITIONS)
@pytest.mark.parametrize("rho", [0.0, 1e-2])
def test_structured_matches_explicit_oracle(widths, act, sb2, k, g, rho, backend):
    """G⁻¹Jᵀv/N, Θ̄(x, x) and Θ̄(x′, x) against the P×P masked FIM, C = 1 and 2, biases on and off."""
    net, _, x, xt, y = _setup(widths, act, sb2)
    got = structured(get_fisher("block", net, rho, k=k, g=g), net, x, xt, y, backend)
    *want, tol = _oracle_case(widths, act, sb2, k, g, rho)
    for a, b in zip(got, want):
        assert _rel(a, b) < tol


def test_the_oracle_is_a_partition():
    """The twin's tiles: k = 1, g = 1 is the diagonal mask, whole rows the unit mask, whole layers BD's."""
    net = O.Net.of(Network((5, 7, 6, 2), "relu", 2.0, 0.4))
    assert np.array_equal(O.mask(net, "block", k=1, g=1), O.mask(net, "diag"))
    assert np.array_equal(O.mask(net, "block", k=None, g=1), O.mask(net, "unit"))
    assert np.array_equal(O.mask(net, "block", k=None, g=None), O.mask(net, "bd"))
    m = O.mask(net, "block", k=4, g=3)
    tiles = {tuple(row) for row in m.astype(bool)}  # each row of the mask is its tile's indicator
    sizes = sorted(int(sum(t)) for t in tiles)
    # layer 1: 7 units → groups of 3 and 4, fan 6 → one group (the last group takes the remainder): 4×6
    assert sum(sizes) == net.n_params and max(sizes) == 24 and min(sizes) == 12
    # the bias is the unit's last column and joins the last group: fan 6 = 5 weights + bias, k = 3
    sep = O.mask(net, "block", k=3, g=1)
    assert sep[0, :3].all() and not sep[0, 3:].any()
    assert sep[5, 3:6].all() and not sep[5, :3].any() and not sep[5, 6:].any()
    # k = 4 on fan 6: one group of 6 (no group smaller than k), = unit-wise in that layer
    assert sep.shape == O.mask(net, "block", k=4, g=1).shape
    assert np.array_equal(O.mask(net, "block", k=4, g=1)[:6, :6], np.ones((6, 6)))


@pytest.mark.parametrize("widths,act,sb2", CONFIGS)
@pytest.mark.parametrize("rho", [0.0, 1e-6, 0.3])
def test_whole_rows_are_unit_wise(widths, act, sb2, rho, backend):
    """k = M_{l−1} + 1 (the largest fan, as an integer) and k = "all": exactly the unit-wise FIM (Eq. 23)."""
    net, _, x, xt, y = _setup(widths, act, sb2)
    ref = structured(get_fisher("unit", net, rho), net, x, xt, y, backend)
    fan = max(net.layer_shape(l)[1] for l in range(1, net.depth + 1))
    for k in (fan, "all"):
        got = structured(get_fisher("block", net, rho, k=k, g=1), net, x, xt, y, backend)
        for a, b in zip(got, ref):
            assert _rel(a, b) < 1e-8, (k, rho)


@pytest.mark.parametrize("widths,act,sb2", CONFIGS)
@pytest.mark.parametrize("rho", [0.0, 1e-6, 0.3])
def test_whole_layers_are_block_diagonal(widths, act, sb2, rho, backend):
    """g = M_l (the largest width, as an integer) and g = "all" with whole rows: the block-diagonal FIM
    (Section 4.1) with the same ρ in G = F_l + ρI."""
    net, _, x, xt, y = _setup(widths, act, sb2)
    ref = structured(get_fisher("bd", net, rho), net, x, xt, y, backend)
    for g in (max(net.widths[1:]), "all"):
        got = structured(get_fisher("block", net, rho, k="all", g=g), net, x, xt, y, backend)
        for a, b in zip(got, ref):
            assert _rel(a, b) < 1e-8, (g, rho)


@pytest.mark.parametrize("rho", [1e-6, 0.3])
def test_single_entries_are_the_diagonal_fim(rho, backend):
    """k = g = 1: G_ii = F_ii + ρ, the diagonal FIM of Fig. 3."""
    net, _, x, xt, y = _setup((5, 10, 9, 2), "tanh", 0.3)
    ref = structured(get_fisher("diag", net, rho), net, x, xt, y, backend)
    got = structured(get_fisher("block", net, rho, k=1, g=1), net, x, xt, y, backend)
    for a, b in zip(got, ref):
        assert _rel(a, b) < 1e-10


def test_alpha_of_whole_row_tiles(backend):
    """α = Σ_{l<L} Σ_groups (1 − (1 − γ_l)^{|group|}) + 1: unit-wise's at g = 1, → L at g = M_l; and at
    ρ = 0 with fan-in >= N, Θ̄(x, x) is exactly diag(number of groups with a unit alive on x_n)."""
    net = Network((24, 40, 40, 1), "relu", 2.0, 0.5)
    assert block_alpha(net, 1) == pytest.approx(unit_alpha(net, include_output_layer=True), rel=1e-12)
    assert block_alpha(net, None) == pytest.approx(3.0, abs=1e-10)
    assert block_alpha(net, 4) == pytest.approx(1 + 2 * 10 * (1 - 0.5**4), rel=1e-12)
    assert get_fisher("block", net, 0.0, k="all", g=4).analytic_alpha(16) == block_alpha(net, 4)
    assert get_fisher("block", net, 0.0, k=8, g=1).analytic_alpha(16) is None
    assert get_fisher("block", Network((24, 40, 2), "relu", 2.0, 0.0)).analytic_alpha(16) is None
    rng = np.random.default_rng(3)
    x = unit_rows(rng, 16, 24)
    params = net.init(0, backend)
    s = net.signals(params, to_device(x, backend))
    tb = to_host(theta_bar(get_fisher("block", net, 0.0, k="all", g=4), s))
    delta = [np.asarray(to_host(d))[0] for d in s.delta]  # (N, M_l)
    count = 1.0 + sum((np.abs(d.reshape(16, -1, 4)).max(axis=2) > 0).sum(axis=1) for d in delta[:-1])
    np.testing.assert_allclose(tb, np.diag(count), atol=1e-8)


def test_options_and_registration():
    """k and g: positive integers or 'all', from the command line and the library; the class is in the
    registry with a complete spec; a default object is unit-wise."""
    spec = fisher_class("block").spec
    assert REGISTRY["block"] is fisher_class("sub-unit") is fisher_class("block_partition")
    assert spec.parse_options({"k": "3", "g": "all"}) == {"k": 3, "g": None}
    assert spec.damping == "optional" and spec.default_damping == 1e-12
    for bad in ("0", "-2", "x", "1.5", ""):
        with pytest.raises(ConfigError, match="positive integer or 'all'"):
            spec.parse_options({"k": bad})
    with pytest.raises(ConfigError, match="positive integer or 'all'"):
        get_fisher("block", Network((4, 6, 1), "relu", 2.0, 0.0), g=True)
    net = Network((5, 8, 1), "relu", 2.0, 0.0)
    fim = get_fisher("block", net)
    assert (fim.k, fim.g, fim.damping) == (None, 1, 1e-12)
    assert fim.to_dict()["k"] == "all" and fim.to_dict()["g"] == 1
    from ngdref.fisher.cost import Shape

    shape = Shape((6, 8, 8, 1), 5, True)
    unit = spec.flops(shape, 0.0)["direction"][0]
    finer = get_fisher("block", Network((6, 8, 8, 1), "relu", 2.0, 0.5), k=2).flops(shape, 0.0)["direction"][0]
    assert unit > 0 and finer > 0 and finer != unit


@pytest.mark.parametrize("widths,act,sb2", CONFIGS[1:3])
@pytest.mark.parametrize("k,g", [(3, 1), (2, 2), (1, "all"), (4, 3)])
@pytest.mark.parametrize("rho", [0.0, 1e-2])
def test_matrix_free_products_match_the_explicit_metric(widths, act, sb2, k, g, rho, backend):
    """fisher_matvec = G X and inverse_matvec = G⁻¹X (G⁺X at ρ = 0) of the P×P twin for partitions other
    than the default (tests/test_operators.py covers the registry's default, unit-wise), primal and dual
    tiles; at ρ > 0 G⁻¹(G X) = X, at ρ = 0 the projector onto range(G)."""
    from ngdref.fisher.operators import FisherOperator

    net, p, x, _, _ = _setup(widths, act, sb2)
    fim = get_fisher("block", net, rho, k=k, g=g)
    orc = O.oracle("block", net, p, x, rho, k=k, g=g)
    tol = max(1e-9, 1e4 * O.EPS * orc.condition())
    s = net.signals(net.init(1, backend), to_device(x, backend))
    xs = np.random.default_rng(7).standard_normal((net.n_params, 3))
    xs_dev = to_device(xs, backend)
    g_op, inv_op = FisherOperator(fim, s, "G"), FisherOperator(fim, s, "G-inverse")
    assert _rel(to_host(g_op.matmat(xs_dev)), orc.g @ xs) < 1e-12
    assert _rel(to_host(inv_op.matmat(xs_dev)), orc.g_inv @ xs) < tol
    back = to_host(inv_op.matmat(g_op.matmat(xs_dev)))
    if rho > 0:
        assert _rel(back, xs) < tol
    else:
        w, v = np.linalg.eigh(orc.g)
        keep = w > w.size * O.EPS * w.max()
        assert _rel(back, v[:, keep] @ v[:, keep].T @ xs) < tol


def test_quick_subunit_figure(reproduced):
    """`ngdref reproduce sub-unit --quick`'s sweep end to end (cells → CSV, JSON, PNG, caption): an
    extension, labelled so; cond(Θ̄) falls with k on both data sets (k > fan/2: whole rows); whole layers (g = all) are
    block-diagonal NGD (cond = 1 on Gaussian inputs); unit-wise by the block class equals unit-wise by its
    own code."""
    from ngdref.experiments.figures import get_figure

    fig = get_figure("sub-unit")
    assert fig.title.startswith("Extension:")
    out, rec, _ = reproduced("sub-unit")  # conftest: one run per session, shared with test_figures
    for ext in ("csv", "json", "png"):
        assert (out / f"sub-unit.{ext}").stat().st_size > 0
    stats = rec["summary"]["stats"]  # as written (keys: str)
    for data in ("gaussian", "mnist"):
        cond = {vid: by_width["32"]["cond_mean"] for vid, by_width in stats[data].items()}
        assert cond["k1"] > cond["k5"] > cond["k10"] > cond["k20"] >= 1.0
        if data == "gaussian":  # k = 20 > fan/2 in every layer (fans 31, 33, 33): one group per row, unit-wise
            assert cond["k20"] == pytest.approx(cond["kall"], rel=1e-12)
        else:  # MNIST: layer 1's fan 785 is split into 40 groups of 20 weights, so k = 20 is still sub-unit
            assert cond["k20"] > cond["kall"]
        assert cond["kall"] == pytest.approx(cond["unit"], rel=1e-6)  # ρ = 1e-12: rounding of two solvers
    assert stats["gaussian"]["gall"]["32"]["cond_mean"] == pytest.approx(1.0, abs=1e-6)
    claims = rec["claims"]
    assert claims and all({"claim", "measured", "paper", "holds"} <= set(c) for c in claims)
    rows = rec["rows"]  # C1: one type per column, null = n/a
    by_variant = {r["variant"]: (r["k"], r["g"]) for r in rows}
    assert by_variant["k5"] == ("5", "1") and by_variant["kall"] == ("all", "1")
    assert by_variant["gall"] == ("all", "all")
    assert by_variant["unit"] == (None, None) and by_variant["kfac"] == (None, None)
    assert {type(r[c]) for r in rows for c in ("k", "g")} == {str, type(None)}


def test_subunit_grid_is_settable_and_checked():
    """The k/g grid of `reproduce sub-unit` is set by ``--set ks=[…]``/``gs=[…]`` (the cells follow it);
    a k < 1, a g < 2 (g = 1 is the whole-row variant, always swept) or an ``extra`` variant no longer in
    the grid is refused in one line before any work."""
    from ngdref.errors import ConfigError
    from ngdref.experiments.figures import figure_config, get_figure
    from ngdref.experiments.figures.overrides import apply_overrides, parse_set

    fig = get_figure("sub-unit")
    cfg = apply_overrides(fig, figure_config("sub-unit", True), parse_set(["ks=[2, 7]", "gs=[3]"]))
    ids = {c.params["variant"]["id"] for c in fig.cells(cfg, "numpy", "float64")}
    assert ids == {"k2", "k7", "kall", "g3", "gall", "unit", "kfac"}
    k7 = next(c.params["variant"] for c in fig.cells(cfg, "numpy", "float64") if c.params["variant"]["id"] == "k7")
    assert k7["options"] == {"k": 7, "g": 1}
    for pair, needle in (("ks=[0, 3]", "ks = .*integer ≥ 1"), ("gs=[1]", "gs = .*integer ≥ 2"),
                         ("ks=[1.5]", "expected an integer")):
        with pytest.raises(ConfigError, match=needle):
            apply_overrides(fig, figure_config("sub-unit", True), parse_set([pair]))
    full = figure_config("sub-unit", False)  # its M = 1024 extra names k60, k80, k120
    with pytest.raises(ConfigError, match="k60.*not in the sweep"):
        apply_overrides(fig, full, parse_set(["ks=[1, 8]"]))


def test_whole_row_direction_holds_no_index_per_parameter():
    """Whole-row tiles (the default k = "all") come in θ_l's order, so the direction is assembled by
    concatenation: by tracemalloc its peak stays near 2 P (the pieces and their concatenation). The scatter
    by an int64 index per parameter, its argsort and a take, which only sub-unit tiles need, peaked at 5.7 P
    here (5.4 P at M = 4096)."""
    import tracemalloc

    net = Network((16, 256, 256, 1), "relu", 2.0, 0.5)
    params = net.init(0)
    x = np.random.default_rng(1).standard_normal((6, 16))
    s = net.signals(params, x)
    fim = get_fisher("block", net, 1e-6)
    fim.direction(params, x, np.zeros((6, 1)), s)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fim.direction(params, x, np.zeros((6, 1)), s)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 3.0 * 8 * net.n_params


# tanh at σ_w² = 60 (g = 1) or 200 (g = 2) saturates: some units' δ spans many orders of magnitude over the
# samples, so a mix of certified and uncertified whole-row tiles in one chunk (g = 1, layer 1: 11 of 12 tiles)
_SATURATED = ((8, 12, 10, 1), "tanh", {1: 60.0, 2: 200.0}, 0.3)


def _saturated(g, seed=1):
    widths, act, sw2, sb2 = _SATURATED
    sw2 = sw2[g]
    rng = np.random.default_rng(seed)
    net = Network(widths, act, sw2, sb2)
    return net, net.init(seed + 1), unit_rows(rng, 6, widths[0]), unit_rows(rng, 4, widths[0]), \
        rng.standard_normal((6, 1))


@pytest.mark.parametrize("g", [1, 2])
def test_certified_tiles_keep_every_eigenvalue(g):
    """Soundness of the Cholesky path's certificate: on every tile it certifies, each eigenvalue of the tile
    kernel J_BJ_Bᵀ/N on its alive samples (J_B written out row by row here) is above the range inverse's cut-off
    rtol·λ_max, so that path drops nothing; the saturated net gives tiles of both kinds (else the test proves
    nothing)."""
    net, p, x, _, _ = _saturated(g)
    fim = get_fisher("block", net, 0.0, g=g)
    s = net.signals(p, x)
    n = x.shape[0]
    kinds = set()
    for l in range(1, net.depth + 1):
        d, a = np.asarray(s.delta[l - 1])[0], np.asarray(s.a[l - 1])  # (N, M_l), (N, fan_l)
        units = d.shape[1]
        groups = [list(range(i, min(i + g, units))) for i in range(0, units, g)]
        if len(groups) > 1 and len(groups[-1]) < g:  # the last group takes the remainder
            groups[-2:] = [groups[-2] + groups[-1]]
        for rows in groups:
            d_t = np.transpose(d[:, rows])[None, None, :, :].transpose(0, 1, 3, 2)  # (1, 1, N, r)
            ok, _ = fim._certified(d_t, {}, a @ a.T)
            jac = np.array([np.concatenate([d[m, i] * a[m] for i in rows]) for m in range(n)])  # (N, r·fan)
            if jac.shape[1] <= n:
                continue  # primal tiles are never certified (their range inverse is not a dual kernel's)
            kinds.add(bool(ok[0]))
            if ok[0]:
                alive = np.flatnonzero((d[:, rows] != 0).any(axis=1))
                ev = np.linalg.eigvalsh((jac @ jac.T / n)[np.ix_(alive, alive)]) if alive.size else np.ones(1)
                assert ev.min() > n * np.finfo(float).eps * ev.max()
    assert kinds == {True, False}


def test_certificate_refuses_a_near_singular_feature_gram():
    """Two samples 1e-9 apart make a aᵀ numerically singular in every layer. The spectral bound then certifies
    nothing; the Cholesky test on a tile's alive block certifies exactly the tiles that are not alive on both
    samples (their block leaves one of the pair out), and refuses every tile alive on both, whose kernel has an
    eigenvalue on its alive samples at rounding level — where a Cholesky solve would invert rounding."""
    rng = np.random.default_rng(3)
    net = Network((6, 12, 10, 1), "relu", 2.0, 0.5)
    p = net.init(4)
    x = unit_rows(rng, 4, 6)
    x[1] = x[0] + 1e-9 * rng.standard_normal(6)
    s = net.signals(p, x)
    fim = get_fisher("block", net, 0.0)
    eps = np.finfo(float).eps
    kinds = set()
    for l in range(1, net.depth + 1):
        d, a = np.asarray(s.delta[l - 1])[0], np.asarray(s.a[l - 1])
        ok, _ = fim._certified(np.transpose(d)[:, None, :, None], {}, a @ a.T)
        for i in range(d.shape[1]):
            alive = np.flatnonzero(d[:, i])
            if not alive.size:
                continue
            ev = np.linalg.eigvalsh((d[alive, i, None] * a[alive]) @ (d[alive, i, None] * a[alive]).T)
            pair = d[0, i] != 0 and d[1, i] != 0
            if pair:
                assert not ok[i] and ev.min() <= 4 * eps * ev.max()
            kinds.add((bool(ok[i]), bool(pair)))
            if ok[i]:
                assert ev.min() > 64 * x.shape[0] * eps * ev.max()
    assert {(False, True), (True, False)} <= kinds


@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("rho", [0.0, 1e-2])
def test_certified_and_uncertified_tiles_in_one_chunk_match_the_oracle(g, rho, backend, monkeypatch):
    """Chunks that mix Cholesky-solved (certified) and eigh-inverted tiles: every other tile the certificate
    passes is withheld (always allowed: the certificate only says where the two paths agree), on a well-conditioned
    net where both paths are accurate — direction, Θ̄(x, x) (at ρ = 0 the certified tiles' projector S.137 in
    closed form, the rest by the range inverse) and Θ̄(x′, x) against the P×P twin at 1e-9, so that a tile solved
    by one path but placed at another's position, or counted twice, fails."""
    import ngdref.fisher.blockpartition as blockpartition

    certified = blockpartition.BlockPartitionFisher._certified
    seen = []

    def every_other(self, d_t, grams, gram):
        ok, alive = certified(self, d_t, grams, gram)
        if ok is not None:
            ok = ok & (np.arange(ok.size) % 2 == 0)
            seen.append((bool(ok.any()), bool((~ok).any())))
        return ok, alive

    monkeypatch.setattr(blockpartition.BlockPartitionFisher, "_certified", every_other)
    net, _, x, xt, y = _setup((4, 32, 32, 1), "relu", 0.5, n=3, n_test=2)  # wide enough for chunks of many tiles
    got = structured(get_fisher("block", net, rho, g=g), net, x, xt, y, backend)
    orc = O.oracle("block", net, net.init(1), x, rho, g=g)
    for a, b in zip(got, (orc.direction(y), orc.theta_bar(), orc.theta_bar(xt))):
        assert _rel(a, b) < 1e-9
    assert (True, True) in seen  # a chunk held tiles of both kinds


@pytest.mark.parametrize("k,g", [("all", 1), (2, 1)])
def test_results_do_not_depend_on_the_thread_count(k, g, monkeypatch):
    """The tiles' range inverses are split over the thread pool (BLAS at one thread): direction, Θ̄(x, x),
    Θ̄(x′, x) and the operators' G⁻¹v the same bit for bit on 1, 2 and 3 threads (dual tiles at k = all, primal
    ones at k = 2 with N = 3), and the oracle's. The net is wide enough that a chunk stacks several tiles —
    on a tiny net every stack holds one matrix, which no thread count splits (checked below)."""
    import ngdref.fisher.blockpartition as blockpartition
    import ngdref.threads as ngdref_threads

    net, p, x, xt, y = _setup((4, 32, 32, 1), "relu", 0.5, n=3, n_test=2)
    fim = get_fisher("block", net, 1e-6, k=k, g=g)
    s, st = net.signals(p, x), net.signals(p, xt)
    stacks = []
    inverse = blockpartition.BlockPartitionFisher._range_inverse
    monkeypatch.setattr(blockpartition.BlockPartitionFisher, "_range_inverse",
                        lambda self, m: stacks.append(int(m.shape[0])) or inverse(self, m))
    solve, solves = blockpartition.spd_solve_hadamard, {}  # thread count -> tiles per Cholesky call
    monkeypatch.setattr(blockpartition, "spd_solve_hadamard", lambda g, f, sh, b: solves.setdefault(
        ngdref_threads.THREADS, []).append(int(f.shape[0])) or solve(g, f, sh, b))
    runs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(ngdref_threads, "THREADS", threads)
        d = fim.direction(p, x, y, s)
        runs.append([np.concatenate([np.ravel(to_host(w)) for w in d]), to_host(theta_bar(fim, s)),
                     to_host(theta_bar(fim, s, st)),
                     np.concatenate([np.ravel(to_host(w)) for w in fim.inverse_matvec(s, d)])])
    assert max(stacks) >= 3  # the 3-thread run split a stack into three
    if k == "all":  # certified dual tiles: Cholesky solves, in pieces (a chunk of T tiles on 3 threads: T/3 each):
        # the same tiles in more calls (sizes alone differ between chunks and layers, split or not)
        assert sum(solves[3]) == sum(solves[1]) > 0 and len(solves[3]) > len(solves[1])
    for run in runs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(run, runs[0]))
    orc = O.oracle("block", net, p, x, 1e-6, k=k, g=g)
    assert _rel(runs[1][1], orc.theta_bar()) < 1e-9
    assert _rel(runs[1][2], orc.theta_bar(xt)) < 1e-9


@pytest.mark.parametrize("r", [1, 3])
def test_cholesky_certificate_holds_its_floor(r):
    """The certificate's second stage (``_definite_above``) says yes only where every eigenvalue of the tile's
    alive block m = (F_S F_Sᵀ) ∘ G_SS (written out entry by entry, eigenvalues by eigvalsh) is above ``floor``:
    a floor twice λ_min(m) is refused, half of it accepted (both far from the rounding term); samples where F
    vanishes are left out of the block (else m would be singular and every tile refused)."""
    from ngdref.fisher.blockpartition import _definite_above

    rng = np.random.default_rng(5)
    n = 9
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    g = (q * np.logspace(0, -9, n)) @ q.T
    f = rng.standard_normal((4, n, r))
    f[:, [2, 5], :] = 0.0  # dead samples
    lam = []
    for u in range(4):
        alive = [i for i in range(n) if f[u, i].any()]
        m = np.array([[sum(f[u, i, j] * f[u, k, j] for j in range(r)) * g[i, k] for k in alive] for i in alive])
        lam.append(np.linalg.eigvalsh(m).min())
    lam = np.array(lam)
    assert (lam > 1e-12).all()  # far above the rounding term 2(|S| + 1)·eps·tr(m)
    assert _definite_above(f, g, 0.5 * lam).all()
    assert not _definite_above(f, g, 2.0 * lam).any()
