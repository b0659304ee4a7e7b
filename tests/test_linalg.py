"""ngdref.linalg against explicit constructions that share no code with it (numpy and strict backends)."""

import numpy as np
import pytest

from ngdref.backend import to_device, to_host
from ngdref.linalg import psd_pinv


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
