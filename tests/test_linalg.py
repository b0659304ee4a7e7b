"""ngdref.linalg against explicit constructions that share no code with it (numpy and strict backends)."""

import numpy as np
import pytest

from ngdref.backend import get_backend, to_device, to_host
from ngdref.linalg import add_to_diagonal, psd_pinv


@pytest.mark.parametrize("shift", [0.0, 1e-3, 0.5])
def test_psd_pinv_with_shift_is_the_damped_inverse_on_the_range(backend, rng, shift):
    """psd_pinv(K, shift=ρ) = (K + ρI)⁻¹ P on range(K), P the orthogonal projector onto it: for K = B Bᵀ
    of rank 3 < 6, P = B B⁺ (an SVD pseudo-inverse of B, not K's eigendecomposition) and (K + ρI)⁻¹P by
    a linear solve; a stack of two such matrices at once."""
    bs = [rng.standard_normal((6, 3)), 2.0 * rng.standard_normal((6, 3))]
    ks = np.stack([b @ b.T for b in bs])
    want = np.stack([np.linalg.solve(k + shift * np.eye(6), b @ np.linalg.pinv(b)) if shift > 0 else np.linalg.pinv(k)
                     for k, b in zip(ks, bs)])
    got, rank = psd_pinv(to_device(ks, backend), with_rank=True, shift=shift)
    got = to_host(got)
    assert got.shape == (2, 6, 6) and list(to_host(rank)) == [3, 3]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
    # on the null space it is 0, not 1/ρ
    null = np.linalg.svd(bs[0].T)[2][3:].T  # (6, 3): orthonormal basis of null(Bᵀ) = null(K)
    assert np.abs(got[0] @ null).max() < 1e-12 * np.abs(want[0]).max()


def _spd_stack(rng, c, p):
    """c SPD p×p matrices B Bᵀ/p + diag(u), u ~ U(0.01, 1), with different B."""
    b = rng.standard_normal((c, p, 2 * p))
    return b @ np.swapaxes(b, 1, 2) / p + np.eye(p) * rng.uniform(0.01, 1.0, (c, 1, p))


@pytest.mark.parametrize("c,p,q", [(5, 30, 1), (4, 100, 3), (3, 8, 200), (6, 4, 1), (2, 70, 0), (0, 30, 2)])
def test_spd_solve_stack_solves_each_system(backend, rng, c, p, q):
    """X[u] = A[u]⁻¹B[u] unit by unit, through LAPACK's Cholesky loop (NumPy, p >= 24 or p·q >= 800) or the
    batched LU (small systems; every other backend): residuals against each A[u] at rounding level, shapes and
    dtype kept, and ``a`` left as it was (the loop factors a scratch copy)."""
    from ngdref.linalg import spd_solve_stack

    a, b = _spd_stack(rng, c, p), rng.standard_normal((c, p, q))
    a_before = a.copy()
    got = spd_solve_stack(*(to_device(m, backend) for m in (a, b)))
    got = to_host(got)
    assert got.shape == (c, p, q) and got.dtype == np.float64
    for u in range(c):
        want = np.linalg.solve(a[u], b[u])
        assert np.abs(got[u] - want).max(initial=0.0) <= 1e-12 * max(1.0, np.abs(want).max(initial=0.0))
    assert np.array_equal(a, a_before)


def test_spd_solve_stack_takes_transposed_views_and_falls_back_to_lu(rng):
    """Non-contiguous inputs (transposed views) solve as their copies do; a matrix that is not positive definite
    (dposv stops at a non-positive pivot) is solved by LU instead, beside SPD ones in the same stack."""
    from ngdref.linalg import spd_solve_stack

    a = _spd_stack(rng, 4, 40)
    a[2] = -a[2]  # negative definite: Cholesky fails at the first pivot
    a[3, :, :] = np.diag(np.r_[np.ones(20), -np.ones(20)])  # indefinite: fails at pivot 21, after overwriting
    b = rng.standard_normal((4, 5, 40))
    got = spd_solve_stack(np.swapaxes(np.swapaxes(a, 1, 2).copy(), 1, 2), np.swapaxes(b, 1, 2))
    for u in range(4):
        want = np.linalg.solve(a[u], b[u].T)
        assert np.abs(got[u] - want).max() <= 1e-12 * np.abs(want).max()


def test_spd_solve_stack_float32_stays_float32(rng):
    """Only float64 stacks take the Cholesky loop; a float32 one is solved in float32 by the batched LU."""
    from ngdref.linalg import spd_solve_stack

    a, b = _spd_stack(rng, 3, 40).astype(np.float32), rng.standard_normal((3, 40, 2)).astype(np.float32)
    got = spd_solve_stack(a, b)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.linalg.solve(a, b), rtol=0, atol=1e-4 * np.abs(got).max())


@pytest.mark.parametrize("p,q", [(40, 1), (100, 7), (6, 1), (5, 300)])
def test_spd_solve_shifted_solves_k_plus_each_diagonal(backend, rng, p, q):
    """X[u] = (K + diag(d[u]))⁻¹ B[u] against each matrix written out and solved by LU; a d[u] that makes the
    matrix indefinite takes the LU fallback; K is left as it was."""
    from ngdref.linalg import spd_solve_shifted

    k = _spd_stack(rng, 1, p)[0] - 0.5 * np.eye(p)  # K itself may be indefinite: the shifts make it definite
    d = rng.uniform(0.6, 2.0, (4, p))
    d[3, : p // 2] = -5.0  # unit 3: indefinite
    b = rng.standard_normal((4, p, q))
    k_before = k.copy()
    got = to_host(spd_solve_shifted(*(to_device(m, backend) for m in (k, d, b))))
    assert got.shape == (4, p, q)
    for u in range(4):
        want = np.linalg.solve(k + np.diag(d[u]), b[u])
        assert np.abs(got[u] - want).max() <= 1e-12 * np.abs(want).max()
    assert np.array_equal(k, k_before)


@pytest.mark.parametrize("p,r,q", [(40, 1, 1), (100, 3, 7), (6, 1, 1), (30, 2, 0)])
def test_spd_solve_hadamard_solves_each_written_out_kernel(backend, rng, p, r, q):
    """X[u] = ((F[u]F[u]ᵀ) ∘ G + diag(s[u]))⁻¹ B[u] against each matrix written out entry by entry and solved by
    LU: factors with zero rows (dead samples) and a shift of 1 there, one unit's shifts negative enough to make its
    matrix indefinite (the LU fallback); G, F, s left as they were."""
    from ngdref.linalg import spd_solve_hadamard

    c = 4
    g = _spd_stack(rng, 1, p)[0]
    f = rng.standard_normal((c, p, r))
    f[0, : p // 3, :] = 0.0
    s = rng.uniform(0.1, 1.0, (c, p))
    s[0, : p // 3] = 1.0
    s[3, :] = -50.0 * np.abs(f[3]).max() ** 2 * np.abs(g).max()  # indefinite
    b = rng.standard_normal((c, p, q))
    before = [m.copy() for m in (g, f, s)]
    got = to_host(spd_solve_hadamard(*(to_device(m, backend) for m in (g, f, s, b))))
    assert got.shape == (c, p, q)
    for u in range(c):
        mat = np.array([[sum(f[u, i, j] * f[u, k, j] for j in range(r)) * g[i, k] for k in range(p)] for i in range(p)])
        want = np.linalg.solve(mat + np.diag(s[u]), b[u])
        assert np.abs(got[u] - want).max(initial=0.0) <= 1e-11 * max(1.0, np.abs(want).max(initial=0.0))
    assert all(np.array_equal(m, m0) for m, m0 in zip((g, f, s), before))


def test_spd_solve_loop_runs_where_documented_and_batched_lu_where_the_capsule_is_missing(rng, monkeypatch):
    """Where SciPy's ``cython_lapack`` has the LP64 ``dposv`` capsule (the wheels CI installs) the loop is bound and
    taken for p >= 24 (or p·q >= 800) and not below, in both functions; with the capsule missing (``_dposv`` None)
    the same calls solve by the batched LU. A SciPy build without that capsule still runs the second half and
    reports the first as skipped (the library falls back by itself; only the speed is lost)."""
    import ngdref.linalg as L

    bound = L._dposv() is not None  # SciPy's cython_lapack.dposv, LP64 signature
    loops = []
    original = L._solve_loop

    def spy(*args):
        loops.append(args[3])  # p
        return original(*args)

    monkeypatch.setattr(L, "_solve_loop", spy)
    k = _spd_stack(rng, 1, 30)[0]
    d = rng.uniform(0.1, 1.0, (3, 30))
    cases = [(_spd_stack(rng, 3, 30), rng.standard_normal((3, 30, 2))),
             (_spd_stack(rng, 3, 6), rng.standard_normal((3, 6, 2)))]
    want = [np.linalg.solve(a, b) for a, b in cases] + [np.linalg.solve(k + d[:, :, None] * np.eye(30), cases[0][1])]
    for missing in (False, True):
        if not missing and not bound:
            continue
        if missing:
            monkeypatch.setattr(L, "_dposv", lambda: None)
        loops.clear()
        got = [L.spd_solve_stack(a, b) for a, b in cases] + [L.spd_solve_shifted(k, d, cases[0][1])]
        assert loops == ([] if missing else [30, 30])
        for g, w in zip(got, want):
            assert np.abs(g - w).max() <= 1e-12 * np.abs(w).max()
    if not bound:
        pytest.skip("this SciPy's cython_lapack has no LP64 dposv capsule: only the batched-LU fallback was checked")


def test_add_to_diagonal_in_place_and_by_identity():
    """NumPy's in-place diagonal update and the array-API form stack + d ∘ I give the same numbers bit for bit
    (so the backends agree), the first without a new array."""
    rng = np.random.default_rng(23)
    stack, d = rng.standard_normal((4, 5, 5)), rng.standard_normal((4, 5)) * 1e-3
    want = stack + np.stack([np.diag(row) for row in d])
    inplace = stack.copy()
    assert add_to_diagonal(inplace, d) is inplace and np.array_equal(inplace, want)
    strict = get_backend("strict")
    got = add_to_diagonal(to_device(stack, strict), to_device(d, strict))
    assert np.array_equal(to_host(got), want)
