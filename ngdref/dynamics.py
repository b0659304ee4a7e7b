"""Closed-form linearised dynamics of (approximate) NGD (Eq. 5, 10, 12, 22, 24; S.23–S.25).

With the coefficient matrix Θ̄ = Θ̄(x, x) of Eq. 11 on the training set and
Θ̄(x′, x) on any other inputs, the infinite-width dynamics are (Eq. 10)

    f_t(x′) = f_0(x′) + Θ̄(x′, x) Θ̄⁻¹ (I − (I − ηΘ̄)^t) (y − f_0),

which for G = I (plain GD, Θ̄ = Θ) is Eq. 5, and under the isotropic condition
Θ̄ = αI (Eq. 12) reduces on the training set to (Section 3.3; Eq. 24 is this form for
unit-wise NGD, Theorem 5.1)

    f_t = y + (1 − αη)^t (f_0 − y).

The parameters move by (Eq. 22 in its general, not necessarily isotropic, form)

    θ_t − θ_0 = G_0⁻¹ J_0ᵀ/N · Θ̄⁻¹ (I − (I − ηΘ̄)^t) (y − f_0),

which under Θ̄ = αI is α⁻¹(1 − (1 − αη)^t) G_0⁻¹J_0ᵀ(y − f_0)/N.

The matrix function Θ̄⁻¹(I − (I − ηΘ̄)^t) is evaluated from the eigen-decomposition of
the symmetric Θ̄ as Σ_i (1 − (1 − ηλ_i)^t)/λ_i v_i v_iᵀ, with the limit tη for λ_i = 0,
so a singular Θ̄ needs no special care. These are small (CN × CN) host computations.
"""

from __future__ import annotations

import numpy as np

from .backend import backend_of, to_device, to_host


def _host(a) -> np.ndarray:
    return np.asarray(to_host(a), dtype=np.float64)


def _eigh(theta_bar):
    """Eigen-decomposition (λ, V) of the symmetric part of Θ̄, on the host in float64."""
    tb = _host(theta_bar)
    return np.linalg.eigh((tb + tb.T) / 2.0)


def resolvent_factor(eigenvalues: np.ndarray, eta: float, t: int) -> np.ndarray:
    """(1 − (1 − ηλ)^t)/λ elementwise, with its λ → 0 limit tη."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    small = np.abs(lam) < 1e-300
    safe = np.where(small, 1.0, lam)
    out = (1.0 - (1.0 - eta * safe) ** t) / safe
    return np.where(small, t * eta, out)


def linearized_trajectory(theta_bar, f0, y, eta: float, steps: int, theta_bar_test=None, f0_test=None):
    """f_t^lin on train (and test) samples for t = 0 … steps (Eq. 10 / S.25).

    ``theta_bar`` (CN × CN), ``theta_bar_test`` (CN′ × CN); ``f0``, ``y`` CN vectors,
    ``f0_test`` a CN′ vector. Returns ``(train, test)`` arrays of shape (steps+1, CN)
    and (steps+1, CN′) (``test`` is None without test inputs).
    """
    lam, vec = _eigh(theta_bar)
    r = vec.T @ (_host(y) - _host(f0))
    f0h = _host(f0)
    train = np.empty((steps + 1, f0h.size))
    test = None
    if theta_bar_test is not None:
        tbt = _host(theta_bar_test) @ vec
        f0t = _host(f0_test)
        test = np.empty((steps + 1, f0t.size))
    for t in range(steps + 1):
        coeff = resolvent_factor(lam, eta, t) * r
        train[t] = f0h + vec @ (lam * coeff)
        if test is not None:
            test[t] = f0t + tbt @ coeff
    return train, test


def isotropic_trajectory(f0, y, alpha: float, eta: float, steps: int) -> np.ndarray:
    """f_t = y + (1 − αη)^t (f_0 − y) on the training set, t = 0 … steps: Eq. 10 under the
    isotropic condition Θ̄ = αI (Eq. 12, Section 3.3; Eq. 24 for unit-wise NGD)."""
    f0h, yh = _host(f0), _host(y)
    decay = (1.0 - alpha * eta) ** np.arange(steps + 1)
    return yh[None, :] + decay[:, None] * (f0h - yh)[None, :]


def displacement_vector(signals0, theta_bar, f0, y, eta: float, t: int):
    """The function-space vector v = Θ̄⁻¹(I − (I − ηΘ̄)^t)(y − f_0) of Eq. 22, θ_t − θ_0 = G_0⁻¹J_0ᵀv/N,
    as a (C, N) array on the backend of ``signals0``."""
    lam, vec = _eigh(theta_bar)
    v = vec @ (resolvent_factor(lam, eta, t) * (vec.T @ (_host(y) - _host(f0))))
    c, n = signals0.f.shape[1], signals0.n
    return to_device(v.reshape(c, n), backend_of(signals0.f))


def parameter_displacement(fim, signals0, theta_bar, f0, y, eta: float, t: int) -> list:
    """θ_t − θ_0 = G_0⁻¹J_0ᵀ/N · Θ̄⁻¹(I − (I − ηΘ̄)^t)(y − f_0) (Eq. 22, general form), per layer,
    on the backend of ``signals0``, with the structured G_0⁻¹J_0ᵀ/N of ``fim`` (its ``precondition``;
    :func:`displacement_vector` gives the function-space vector for ``precondition_factors``).
    """
    return fim.precondition(signals0, displacement_vector(signals0, theta_bar, f0, y, eta, t))


def gd_learning_rate(theta) -> float:
    """η = 1/λ_max(Θ), the rate LeCun et al. recommend for GD (Fig. 1a)."""
    th = _host(theta)
    return 1.0 / float(np.linalg.eigvalsh((th + th.T) / 2.0)[-1])
