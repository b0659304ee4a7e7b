"""Matrix-free operators G, G⁻¹, G⁻¹F of every approximation (ngdref.fisher.operators, issue 15)
against the explicit P×P twins of tests/oracles.py (host float64, tiny networks), on every core
backend: matvec, rmatvec, matmat, G⁻¹·G = the projector onto range(G), CG on G = the structured
direction, Lanczos (eigsh/eigs) = eigh of the explicit matrix, and at paper width (M = 4096) the
nonzero spectrum of G⁻¹F = the spectrum of Θ̄ from ``coefficient``.

The approximations are read from the registry: every registered class that provides the
matrix-free products (``fisher_matvec``/``inverse_matvec``) is tested, with each spec's damping
policy (ρ = 0 only where it is allowed, no ρ where G has no damping term); a registered class
without them is skipped with that reason. Options that cannot be given generically: the
layer-wise Σ (given here: a dense positive definite Σ) and K-FAC's bias mode (both modes)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import scipy.sparse.linalg as sla
from threadpoolctl import threadpool_limits

from ngdref import Network, to_device, to_host
from ngdref.errors import ConfigError, NgdrefError
from ngdref.fisher import REGISTRY, FisherApproximation, get_fisher
from ngdref.fisher.operators import FisherOperator, fisher_operator, split_layer, to_flat, to_layers, top_eigenvalues
from ngdref.jacobian import mse_gradient

from . import oracles as O
from .conftest import unit_rows

# tiny nets, N = 4 samples: C = 1 and C > 1, with and without biases, L = 2 and 3
CASES = [
    ((6, 10, 1), "tanh", 0.0),
    ((6, 12, 10, 1), "relu", 0.5),
    ((5, 9, 8, 2), "tanh", 0.3),
    ((6, 9, 10, 2), "erf", 0.0),
]
RHOS = (0.0, 1e-2)


def _dense_sigma(depth: int) -> np.ndarray:
    i = np.arange(depth)
    return 0.5 ** np.abs(i[:, None] - i[None, :]) + np.diag(1.0 + 0.25 * i)


def _variants():
    """(name, options) for every registered approximation (K-FAC: both bias modes of S.123)."""
    out = []
    for name, cls in REGISTRY.items():
        if name == "kfac":
            out += [(name, (("bias", "separate"),)), (name, (("bias", "folded"),))]
        elif name == "layer":
            out.append((name, (("sigma", "dense"),)))
        else:
            out.append((name, ()))
    return out


VARIANTS = _variants()


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Every matrix here is small (P ~ 10², N ~ 10): a threaded BLAS on a shared machine only loses
    time in eigh (seconds instead of milliseconds). Results do not depend on it."""
    with threadpool_limits(1, user_api="blas"):
        yield
IDS = [n + "".join(f"-{v}" for _, v in o) for n, o in VARIANTS]


def _provides(cls) -> bool:
    return (cls.fisher_matvec is not FisherApproximation.fisher_matvec
            and cls.inverse_matvec is not FisherApproximation.inverse_matvec)


def _options(opts, depth):
    return {k: (_dense_sigma(depth) if v == "dense" else v) for k, v in opts}


def _setup(widths, act, sb2, n=4, seed=0):
    rng = np.random.default_rng(seed)
    net = Network(widths, act, 2.0, sb2)
    return net, net.init(seed + 1), unit_rows(rng, n, widths[0]), rng.standard_normal((n, widths[-1]))


def _fim(name, opts, net, rho):
    """The approximation, or pytest.skip with the reason its spec (or the class) gives."""
    cls = REGISTRY[name]
    if not _provides(cls):
        pytest.skip(f"{name} provides no matrix-free products (fisher_matvec / inverse_matvec)")
    if cls.spec.damping == "none" and rho:
        pytest.skip(f"{name} has no damping term")
    if cls.spec.damping == "required" and not rho:
        pytest.skip(f"{name} needs ρ > 0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a singular Σ at ρ > 0 warns
        try:
            return cls(net, rho, **_options(opts, net.depth))
        except NgdrefError as err:  # tri-diagonal Σ at L = 3s + 2 refuses ρ = 0 (Lemma 4.3)
            assert rho == 0 and name == "tridiag", err
            pytest.skip("the tri-diagonal Σ is singular at L = 3s + 2: no ρ = 0 (Lemma 4.3)")


@functools.lru_cache(maxsize=None)
def _oracle(widths, act, sb2, name, opts, rho):
    """(G, G⁻¹, G⁻¹F, projector onto range G, tolerance) of the explicit twin (host float64)."""
    net, p, x, _ = _setup(widths, act, sb2)
    orc = O.oracle(name, net, p, x, rho, **_options(opts, net.depth))
    fisher = orc.j.T @ orc.j / orc.n
    w, v = np.linalg.eigh((orc.g + orc.g.T) / 2.0)
    keep = np.abs(w) > w.size * O.EPS * np.max(np.abs(w))
    proj = v[:, keep] @ v[:, keep].T
    tol = max(1e-9, 1e4 * O.EPS * orc.condition())  # as tests/test_fisher.py: κ(G) at ρ = 0 for K-FAC
    return orc.g, orc.g_inv, orc.g_inv @ fisher, proj, tol


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / max(float(np.max(np.abs(b))), 1e-300))


def _block(rng, p, k=3):
    return rng.standard_normal((p, k))


# ---- operator vs explicit matrix -------------------------------------------------------------------
@pytest.mark.parametrize("widths,act,sb2", CASES)
@pytest.mark.parametrize("name,opts", VARIANTS, ids=IDS)
@pytest.mark.parametrize("rho", RHOS)
def test_operators_match_explicit_matrices(widths, act, sb2, name, opts, rho, backend):
    """matvec, rmatvec, matmat (and ``@``) of G, G⁻¹ (G⁺ at ρ = 0) and G⁻¹F = the explicit twins' products
    on random vectors; G⁻¹(G X) = Π X with Π the projector onto range(G) (I for ρ > 0)."""
    net, p, x, _ = _setup(widths, act, sb2)
    fim = _fim(name, opts, net, rho)
    g, g_inv, g_inv_f, proj, tol = _oracle(widths, act, sb2, name, opts, rho)
    s = net.signals(net.init(1, backend), to_device(x, backend))
    rng = np.random.default_rng(7)
    xs = _block(rng, net.n_params)
    xs_dev = to_device(xs, backend)
    for of, ref in (("G", g), ("G-inverse", g_inv), ("G-inverse-F", g_inv_f)):
        op = FisherOperator(fim, s, of)
        assert op.shape == (net.n_params, net.n_params)
        assert _rel(to_host(op.matvec(xs_dev[:, 0])), ref @ xs[:, 0]) < tol, of
        assert _rel(to_host(op.matvec(xs_dev[:, :1])), ref @ xs[:, :1]) < tol, of
        assert _rel(to_host(op.rmatvec(xs_dev[:, 1])), ref.T @ xs[:, 1]) < tol, of
        assert _rel(to_host(op.matmat(xs_dev)), ref @ xs) < tol, of
        assert _rel(to_host(op @ xs_dev), ref @ xs) < tol, of
        assert _rel(to_host(op.T.matmat(xs_dev)), ref.T @ xs) < tol, of
    g_op, inv_op = FisherOperator(fim, s, "G"), FisherOperator(fim, s, "G-inverse")
    assert _rel(to_host(inv_op.matmat(g_op.matmat(xs_dev))), proj @ xs) < tol
    if rho > 0:
        assert _rel(to_host(g_op.matmat(inv_op.matmat(xs_dev))), xs) < tol


def test_every_builtin_approximation_provides_the_operators():
    """The nine approximations of the paper (Fig. 3 and Section 4–5) all have matrix-free G v and G⁻¹ v."""
    for name in ("gd", "exact", "layer", "bd", "tridiag", "kfac", "unit", "diag", "quasi-diag"):
        assert _provides(REGISTRY[name]), name


# ---- native operators, CG, Lanczos --------------------------------------------------------------------
def test_native_operator_per_backend(backend):
    """NumPy: a SciPy LinearOperator; otherwise (strict) the FisherOperator itself, used through matvec."""
    net, p, x, _ = _setup((6, 12, 10, 1), "relu", 0.5)
    s = net.signals(net.init(1, backend), to_device(x, backend))
    op = fisher_operator(get_fisher("bd", net, 0.0), s, "G")
    if backend.name == "numpy":
        assert isinstance(op, sla.LinearOperator)
    elif backend.name == "strict":
        assert isinstance(op, FisherOperator)
        with pytest.raises(NgdrefError, match="to_scipy"):
            op.to_scipy()
    v = np.random.default_rng(0).standard_normal(net.n_params)
    ref = O.oracle("bd", net, p, x).g @ v
    assert _rel(to_host(op.matvec(to_device(v, backend))), ref) < 1e-12


@pytest.mark.parametrize("name,opts", VARIANTS, ids=IDS)
def test_cg_on_g_reproduces_the_structured_direction(name, opts, backend):
    """ρ = 0.01: CG (MINRES for the indefinite tri-diagonal G) on the G operator, right-hand side the
    gradient ∇L = Jᵀ(f − y)/N, reproduces the structured NGD direction G⁻¹∇L of ``direction``."""
    widths, act, sb2 = (5, 9, 8, 2), "tanh", 0.3
    net, _, x, y = _setup(widths, act, sb2)
    rho = 0.0 if REGISTRY[name].spec.damping == "none" else 1e-2
    fim = _fim(name, opts, net, rho)
    params = net.init(1, backend)
    xb, yb = to_device(x, backend), to_device(y, backend)
    s = net.signals(params, xb)
    want = to_host(net.flatten(fim.direction(params, xb, yb, s)))
    grad = to_host(net.flatten(mse_gradient(s, yb)))
    lin = FisherOperator(fim, s, "G").to_scipy(host=backend.name != "numpy")
    solver = sla.minres if name == "tridiag" else sla.cg
    got, info = solver(lin, grad, rtol=1e-13, maxiter=20 * net.n_params)
    assert info == 0
    assert _rel(got, want) < 1e-7


@pytest.mark.parametrize("name,opts", VARIANTS, ids=IDS)
@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("widths,act,sb2", [((6, 12, 10, 2), "relu", 0.5), ((4, 6, 1), "tanh", 0.5)],
                         ids=["lanczos", "dense-P37"])
def test_lanczos_matches_eigh_of_the_explicit_matrix(name, opts, rho, widths, act, sb2, backend):
    """Top-4 eigenvalues (by magnitude) of G by ``eigsh`` and of G⁻¹F by ``eigs`` = eigh/eigvals of the twins;
    those of G⁻¹F are the nonzero eigenvalues of Θ̄(x, x) from ``coefficient``. P = 37 ≤ DENSE_P takes the
    dense path (the operator formed column by column), the larger net Lanczos/Arnoldi."""
    net, p, x, _ = _setup(widths, act, sb2)
    fim = _fim(name, opts, net, rho)
    g, _, g_inv_f, _, tol = _oracle(widths, act, sb2, name, opts, rho)
    s = net.signals(net.init(1, backend), to_device(x, backend))
    k = 4
    w = np.linalg.eigvalsh((g + g.T) / 2.0)
    want = w[np.argsort(-np.abs(w))][:k]
    got = top_eigenvalues(FisherOperator(fim, s, "G"), k)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12 * np.max(np.abs(w)))
    ev = np.linalg.eigvals(g_inv_f)
    want_f = np.sort(ev.real[np.argsort(-np.abs(ev))][:k])[::-1]
    got_f = np.sort(top_eigenvalues(FisherOperator(fim, s, "G-inverse-F"), k))[::-1]
    np.testing.assert_allclose(got_f, want_f, rtol=max(1e-7, tol), atol=1e-10 * np.max(np.abs(want_f)))
    tb = np.linalg.eigvalsh(to_host(fim.coefficient(s)))
    want_tb = np.sort(tb[np.argsort(-np.abs(tb))][:k])[::-1]
    np.testing.assert_allclose(got_f, want_tb, rtol=max(1e-7, tol), atol=1e-10 * np.max(np.abs(tb)))


# ---- paper scale ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bd", "kfac", "unit", "diag"])
def test_paper_width_spectrum_of_preconditioned_fisher_is_that_of_theta_bar(name):
    """M = 4096 (paper width), L = 2, N = 8, C = 1, M0 = 10 >= N, ρ = 0 (unit: its default 1e-12): the
    nonzero spectrum of G⁻¹F (P = 45 056) by Arnoldi (``eigs``, all CN = 8 nonzero eigenvalues) equals
    the eigenvalues of Θ̄(x, x) = ``coefficient`` of the same run to 1e-8 relative. For bd and K-FAC,
    isotropic here, it is α·1: α = L = 2 (Eq. 18) and α = NL = 16 (S.107), condition number 1 to 1e-8. For
    unit-wise and diag, whose Θ̄ is not α·1 here, also the eigenvalues of a Θ̄ written out in the test from
    J's entries (:func:`_explicit_theta_bar`), independent of ``coefficient``."""
    n, m0 = 8, 10
    rng = np.random.default_rng(3)
    net = Network((m0, 4096, 1), "relu", 2.0, 0.0)
    x = unit_rows(rng, n, m0)
    s = net.signals(net.init(0), x)
    fim = get_fisher(name, net)
    got = np.sort(top_eigenvalues(FisherOperator(fim, s, "G-inverse-F"), n))
    want = np.linalg.eigvalsh(to_host(fim.coefficient(s)))
    np.testing.assert_allclose(got, want, rtol=1e-8)
    if name in ("bd", "kfac"):
        alpha = fim.analytic_alpha(n)
        assert alpha == {"bd": 2.0, "kfac": 16.0}[name]
        np.testing.assert_allclose(got, alpha, rtol=1e-8)
    if name in ("unit", "diag"):  # Θ̄ built here from J's entries, sharing nothing with ``coefficient``
        np.testing.assert_allclose(got, np.linalg.eigvalsh(_explicit_theta_bar(name, s, fim.damping)), rtol=1e-8)


def _explicit_theta_bar(name, s, rho):
    """Θ̄(x, x) = Σ_B J_B(J_BᵀJ_B/N + ρI)⁺J_Bᵀ/N (Eq. 11) for C = 1, L = 2, written out from the rows
    J_{n,(i,j)} = δ_i(x_n) a_j(x_n) (S.64): unit-wise B = one unit (per unit J_B (N × fan), through the
    eigenvalues of K_B = J_BJ_Bᵀ/N, λ/(λ + ρ), since J_B(J_BᵀJ_B/N + ρ)⁻¹J_Bᵀ/N = K_B(K_B + ρ)⁻¹);
    diag B = one parameter (F_jj = Σ_n J_nj²/N, pseudo-inverse at F_jj = 0)."""
    n = s.n
    blocks = []  # per layer: J as (units, N, fan)
    for layer in range(2):
        a, d = np.asarray(to_host(s.a[layer])), np.asarray(to_host(s.delta[layer]))[0]  # (N, fan), (N, units)
        blocks.append(d.T[:, :, None] * a[None, :, :])
    if name == "diag":
        jac = np.concatenate([np.transpose(j, (1, 0, 2)).reshape(n, -1) for j in blocks], axis=1)  # (N, P)
        f = np.sum(jac * jac, axis=0) / n + rho
        inv = np.divide(1.0, f, out=np.zeros_like(f), where=f > 0)
        return (jac * inv) @ jac.T / n
    theta = np.zeros((n, n))
    for j in blocks:
        w, v = np.linalg.eigh(j @ np.transpose(j, (0, 2, 1)) / n)  # (units, N), K_B per unit
        w = np.clip(w, 0.0, None)
        theta += np.sum((v * (w / (w + rho))[:, None, :]) @ np.transpose(v, (0, 2, 1)), axis=0)
    return theta


# ---- flat vectors --------------------------------------------------------------------------------------
def test_flat_helpers_round_trip(backend):
    net = Network((3, 4, 2), "tanh", 2.0, 0.5)
    p = net.n_params
    v = to_device(np.arange(p, dtype=np.float64), backend)
    layers = to_layers(net, v)
    assert [tuple(x.shape) for x in layers] == [(4, 4), (2, 5)]
    assert float(to_host(layers[0])[1, 3]) == 7.0  # unit 1's bias: after unit 0's 4 entries and its own 3 weights
    w, b = split_layer(net, 1, layers[0])
    assert tuple(w.shape) == (4, 3) and to_host(b).tolist() == [3.0, 7.0, 11.0, 15.0]
    np.testing.assert_array_equal(to_host(to_flat(net, layers)), np.arange(p))
    block = to_device(np.arange(2 * p, dtype=np.float64).reshape(p, 2), backend)
    stacks = to_layers(net, block)
    assert tuple(stacks[1].shape) == (2, 2, 5)
    np.testing.assert_array_equal(to_host(stacks[0][1, ...]), np.arange(2 * 16).reshape(16, 2)[:, 1].reshape(4, 4))
    np.testing.assert_array_equal(to_host(to_flat(net, stacks)), to_host(block))
    assert split_layer(Network((3, 4, 2)), 1, to_host(layers[0])[:, :3])[1] is None


def test_operator_errors():
    net, p, x, _ = _setup((6, 10, 1), "tanh", 0.0)
    s = net.signals(p, x)
    fim = get_fisher("exact", net)
    with pytest.raises(ConfigError, match="unknown operator"):
        FisherOperator(fim, s, "F")
    with pytest.raises(ConfigError, match="backward signals"):
        FisherOperator(fim, net.forward(p, x), "G")
    with pytest.raises(ConfigError, match="different networks"):
        FisherOperator(get_fisher("exact", Network((6, 11, 1))), s, "G")
    op = FisherOperator(fim, s, "G")
    with pytest.raises(ConfigError, match="expected"):
        op.matvec(np.ones(3))
    with pytest.raises(ConfigError, match="between 1 and"):
        top_eigenvalues(op, net.n_params)


# ---- the command ----------------------------------------------------------------------------------------
def test_spectrum_command_json_and_table():
    """``ngdref spectrum`` on a tiny net: --of G equals eigh of the explicit twin on the same network and data,
    --of G-inverse-F (Arnoldi on the operator) equals --of theta-bar (eigh of coefficient), and for bd the
    statement checked is printed with α = L and cond 1; a --top beyond CN is a one-line error, exit 2."""
    import json

    from click.testing import CliRunner

    from ngdref.data import load_dataset
    from ngdref_cli.main import cli

    tiny = ["--data", "gaussian", "--input-dim", "6", "--n-train", "4", "--width", "10", "--depth", "3"]
    runner = CliRunner()

    def run(*args):
        r = runner.invoke(cli, ["spectrum", *tiny, *args, "--json", "-"])
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        assert [row["k"] for row in doc["rows"]] == list(range(1, len(doc["rows"]) + 1))  # one row per eigenvalue
        return {**doc["spectrum"], "eigenvalues": [row["lambda"] for row in doc["rows"]],
                "over_alpha": [row["lambda_over_alpha"] for row in doc["rows"]]}

    g = run("--fim", "kfac", "--of", "G", "--top", "3", "--damping", "0.01")
    net = Network.build(6, 10, 3, 1, "relu", 1.0, 2.0, 0.5)
    x = load_dataset("gaussian", classes=(0, 7), n_train=4, n_test=0, seed=0, input_dim=6).x_train
    w = np.linalg.eigvalsh(O.oracle("kfac", net, net.init(0), x, 0.01).g)
    np.testing.assert_allclose(g["eigenvalues"], w[::-1][:3], rtol=1e-8)
    f = run("--fim", "diag", "--top", "4")
    tb = run("--fim", "diag", "--top", "4", "--of", "theta-bar")
    np.testing.assert_allclose(f["eigenvalues"], tb["eigenvalues"], rtol=1e-8)
    assert f["condition_number"] > 1 and f["alpha_analytic"] is None and f["over_alpha"] == [None] * 4
    part = run("--fim", "diag", "--top", "2")  # not the whole spectrum: no condition number claimed
    assert part["condition_number"] is None and part["top_ratio"] == part["eigenvalues"][0] / part["eigenvalues"][1]
    bd = run("--fim", "bd", "--top", "4")
    np.testing.assert_allclose(bd["over_alpha"], np.asarray(bd["eigenvalues"]) / 3.0, rtol=1e-15)
    r = runner.invoke(cli, ["spectrum", *tiny, "--fim", "bd", "--sigma-b2", "0"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "nonzero spectrum of G⁻¹F" in text and "α·1" in text
    assert "λ₁/λ_4 (top 4; the condition number needs --top 4)" not in text and "α analytic = 3," in text
    r = runner.invoke(cli, ["spectrum", *tiny, "--fim", "bd", "--sigma-b2", "0", "--top", "4"])
    assert "cond = 1," in " ".join(r.output.split())
    r = runner.invoke(cli, ["spectrum", *tiny, "--fim", "bd", "--damping", "1e300", "--top", "2"])
    lam, over = r.output.split("│ 1 │")[1].split("│")[:2]
    assert float(over) > 0 and abs(float(over) - float(lam) / 3.0) <= 1e-9 * float(over)  # %.10g: not rounded to 0
    r = runner.invoke(cli, ["spectrum", *tiny, "--top", "5"])
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        "Error: --top 5 exceeds the CN = 4 nonzero eigenvalues of G-inverse-F (C = 1, N = 4); use --top 4 or fewer"]


@pytest.mark.parametrize("widths", [(6, 12, 10, 1), (5, 9, 8, 2)], ids=["C1", "C2"])
@pytest.mark.parametrize("name", ["unit", "block", "bd", "exact", "diag"])
def test_inverse_on_the_gradient_at_tiny_damping_is_accurate_to_the_stated_bound(name, widths, backend):
    """ρ = 1e-12 (unit-wise's default, C.3): G⁻¹∇L by ``inverse_matvec`` (Woodbury on an arbitrary vector)
    equals the structured ``direction`` (sample space, accurate to eps) to the bound the docstrings state,
    G's conditioning: ‖error‖ <= 1000·eps·‖∇L‖/ρ, at ρ = 1e-2 as well — and the bound is not vacuous
    (< 0.1 relative at 1e-12, < 1e-11 at 1e-2). Before the range inverse of block-partition's dual tiles,
    C = 2 erred by 3e4 relative (1/ρ applied twice). K-FAC is left out: its G = (B+ρI)⊗(A+ρI) has smallest
    eigenvalue ρ² (cond ~1e24 at ρ = 1e-12), beyond float64 for any algorithm."""
    net, _, x, y = _setup(widths, "relu", 0.5)
    params = net.init(1, backend)
    xb, yb = to_device(x, backend), to_device(y, backend)
    s = net.signals(params, xb)
    grad = to_host(net.flatten(mse_gradient(s, yb)))
    eps = np.finfo(np.float64).eps
    for rho in (1e-12, 1e-2):
        fim = get_fisher(name, net, rho)
        want = to_host(net.flatten(fim.direction(params, xb, yb, s)))
        got = to_host(FisherOperator(fim, s, "G-inverse").matvec(to_device(grad, backend)))
        bound = 1000 * eps * np.linalg.norm(grad) / rho
        assert bound / np.linalg.norm(want) < (0.1 if rho < 1e-6 else 1e-11)
        assert np.linalg.norm(got - want) <= bound, (rho, _rel(got, want))
