"""Test-set predictions of the trained model (Section 4.4, Fig. 2): kernel regression with Θ̄.

The trained network's output on test inputs is (Eq. 10 at t → ∞, Eq. 14)

    f_∞(x′) = f_0(x′) + Θ̄(x′, x) Θ̄⁻¹ (y − f_0(x)),

which under the isotropic condition is f_0(x′) + α⁻¹ Θ̄(x′, x)(y − f_0(x)). With
``kernel="analytic"`` Θ̄ is each approximation's infinite-width Θ̄ (``fim.analytic_theta_bar``
on the kernels of :mod:`ngdref.kernels`) and
f_0 is drawn from the infinite-width output Gaussian process, covariance σ_w² A_{L−1} + σ_b²
(the spread over random initialisations); seed ``None`` means f_0 = 0, the mean prediction
α⁻¹Θ̄(x′, x) y. With ``kernel="empirical"`` Θ̄ is the structured Θ̄ of a finite network
initialised with that seed, and f_0 its own output.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg as sla
from scipy.sparse.linalg import LinearOperator

from .. import kernels as K
from ..backend import Backend, backend_of, namespace_of, to_device, to_float, to_host
from ..data import Dataset
from ..errors import ConfigError, NgdrefError
from ..fisher import fisher_class, get_fisher
from ..network import Network

def _accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    if y.shape[1] == 1:  # targets ±0.5: the sign decides
        return float(np.mean(np.sign(pred[:, 0]) == np.sign(y[:, 0])))
    return float(np.mean(np.argmax(pred, axis=1) == np.argmax(y, axis=1)))


#: Gaussian probe vectors of the isotropy check, and their seed
ISOTROPY_PROBES, ISOTROPY_SEED = 8, 0
#: what :func:`isotropy_deviation` reports (the JSON's ``isotropy_check``)
ISOTROPY_CHECK = (f"max|(Θ̄(x,x)/α − I)V| / max|V| over {ISOTROPY_PROBES} standard Gaussian probe vectors V "
                  f"(seed {ISOTROPY_SEED}); isotropic if < 1e-6")
#: the isotropic condition is taken to hold below this deviation
ISOTROPY_TOL = 1e-6


def isotropy_deviation(theta_bar_train, alpha: float, probes: int = ISOTROPY_PROBES,
                       seed: int = ISOTROPY_SEED) -> float:
    """max|(Θ̄(x, x)/α − I)V| / max|V| for ``probes`` standard Gaussian columns V (``seed``): the
    departure from the isotropic condition Θ̄(x, x) = αI (Eq. 12) along random directions.

    ``theta_bar_train`` is Θ̄(x, x) as ``fim.analytic_theta_bar_train`` gives it: an (N, N) array (any
    backend) or a SciPy ``LinearOperator`` (exact and layer-wise NGD apply Σ_l w_lΘ_l(Θ_l⁻¹V) from their
    Cholesky factors, O(N²) per probe, instead of forming ΘΘ⁻¹ by a 2N³ solve). Bounds against the
    entry-wise max|E_ij| of E = Θ̄/α − I: each entry of EV is Σ_j E_ij V_j, so the measure is at most
    N·max|E_ij|; and (EV)_ik ~ N(0, Σ_j E_ij²) has |·| >= 0.1·max_j|E_ij| with probability 0.92 per probe,
    so the measure is at least 0.1·max|E_ij|/max|V| except with probability 0.08^probes.
    tests/test_prediction.py checks both against the explicit measure, isotropic and not."""
    n = theta_bar_train.shape[0]
    v_host = np.random.default_rng(seed).standard_normal((n, probes))
    if isinstance(theta_bar_train, LinearOperator):
        tv, v, xp = theta_bar_train @ v_host, v_host, np
    else:
        xp = namespace_of(theta_bar_train)
        v = to_device(v_host, backend_of(theta_bar_train))
        tv = theta_bar_train @ v
    return to_float(xp.max(xp.abs(tv / alpha - v))) / float(np.max(np.abs(v_host)))


#: rows and columns of a tile of :func:`_tile_pairs`
_TILE = 1024


def _tile_pairs(n: int):
    """(rows, cols, diagonal) of the tiles on and below the diagonal of an n × n array, ``_TILE`` square (the
    last row and column of tiles clipped to n)."""
    step = _TILE
    for i in range(0, n, step):
        for j in range(0, i + 1, step):
            yield slice(i, min(n, i + step)), slice(j, min(n, j + step)), i == j


def _lower_from_upper(mat: np.ndarray) -> None:
    """Strictly lower triangle ← transposed strictly upper one, in place, a tile at a time."""
    for ii, jj, diagonal in _tile_pairs(mat.shape[0]):
        if diagonal:
            tile = mat[ii, ii]
            low = np.tril_indices(tile.shape[0], -1)
            tile[low] = tile.T[low]
        else:
            mat[ii, jj] = mat[jj, ii].T


def _zero_upper(mat: np.ndarray) -> None:
    """Strictly upper triangle ← 0, in place, a tile at a time."""
    for ii, jj, diagonal in _tile_pairs(mat.shape[0]):
        if diagonal:
            tile = mat[ii, ii]
            tile[np.triu_indices(tile.shape[0], 1)] = 0.0
        else:
            mat[jj, ii] = 0.0


def _jittered(k: np.ndarray, jitter: float) -> np.ndarray:
    out = k.copy()
    out.flat[:: k.shape[0] + 1] += jitter
    return out


class AnalyticPredictor:
    """Seed-independent part of the analytic predictions: one regression matrix per approximation
    and the Cholesky factor of the joint train/test covariance of f_0.

    Memory (N training, N′ test samples): the kernels are computed a tile at a time
    (:class:`ngdref.kernels.AnalyticKernels`) and released once the regression matrices are built;
    each approximation keeps its N′×N regression matrix, exact NGD instead Θ's Cholesky factor and
    Θ(x′, x) (``reg`` is then the operator r ↦ Θ(x′, x)(Θ⁻¹r): O(N²) per draw of f_0 instead of the
    2N²N′ solve that forms Θ(x′, x)Θ⁻¹); the joint covariance of f_0 is factored by blocks,
    [[L₁₁, 0], [L₂₁, L₂₂]] with L₁₁L₁₁ᵀ = K(x, x), L₂₁ = K(x′, x)L₁₁⁻ᵀ and L₂₂L₂₂ᵀ = K(x′, x′) − L₂₁L₂₁ᵀ
    (each with the jitter), never as one (N + N′)² array, and L₁₁ overwrites K(x, x) (the last
    layer's feature Gram, kept by the pass that computed Θ: no pass of its own)."""

    def __init__(self, network: Network, dataset: Dataset, fim_names, fim_options: dict | None = None):
        self.network, self.dataset = network, dataset
        net1 = Network(network.widths[:-1] + (1,), network.activation, network.sigma_w2, network.sigma_b2)
        last = network.depth  # f_0's covariance is the feature Gram of the last layer, σ_w² A_{L−1} + σ_b²:
        # kept by the first pass that computes the kernels of Θ̄ (which go through A_{L−1} anyway)
        train = K.analytic_kernels(net1, dataset.x_train, keep_grams=(last,))
        cross = K.analytic_kernels(net1, dataset.x_test, dataset.x_train, keep_grams=(last,))
        n = dataset.n_train
        self.methods: dict = {}
        for name in fim_names:
            fim = get_fisher(name, network, **(fim_options or {}).get(name, {}))
            try:  # the approximation's infinite-width Θ̄ (C = 1 block), Section 4 / Appendix E
                alpha = fim.analytic_alpha(n)
                tb_train = fim.analytic_theta_bar_train(train)  # an array, or an operator (exact, layer-wise)
                dev = None if alpha is None else isotropy_deviation(tb_train, alpha)
                if alpha is not None and dev < ISOTROPY_TOL:
                    del tb_train  # not needed (for exact NGD this frees Θ(x, x): its factor is kept)
                    # an array, or an operator (exact NGD: Θ(x′, x)(Θ⁻¹r), applied per draw of f_0)
                    reg, formula = fim.analytic_theta_bar_operator(cross, train), "α⁻¹ Θ̄(x′,x) (isotropic, Section 4.4)"
                    if isinstance(reg, LinearOperator):
                        reg = reg / alpha
                    else:
                        reg /= alpha
                else:
                    if isinstance(tb_train, LinearOperator):  # the solve needs Θ̄(x, x) itself
                        tb_train = fim.analytic_theta_bar(train, train)
                    tb_cross = fim.analytic_theta_bar(cross, train)
                    reg, formula = np.linalg.solve(tb_train.T, tb_cross.T).T, "Θ̄(x′,x) Θ̄⁻¹ (Eq. 10, t → ∞)"
                    del tb_train, tb_cross
            except NgdrefError as err:
                self.methods[name] = {"error": str(err)}
                continue
            self.methods[name] = {"reg": reg, "alpha": alpha, "isotropy_deviation": dev,
                                  "isotropy_check": None if dev is None else ISOTROPY_CHECK, "formula": formula}
        k_train, k_cross = train.feature_gram(last), cross.feature_gram(last)
        del train, cross  # the kernels' cached N×N arrays
        k_test = K.analytic_kernels(net1, dataset.x_test).feature_gram(last)
        scale = float(np.mean(np.concatenate([np.diag(k_train), np.diag(k_test)])))
        self.l11 = self.l21 = self.l22 = None
        self.jitter = 0.0
        diag = np.diag(k_train).copy()
        for exponent in range(-12, -3):
            self.jitter = scale * 10.0**exponent
            # K(x, x) + jitter·I factored in place, as its transpose (the same symmetric matrix in the
            # Fortran order LAPACK works in): the strict upper triangle keeps K for a retry
            if exponent > -12:
                _lower_from_upper(k_train.T)
            k_train.flat[:: n + 1] = diag + self.jitter
            try:
                l11 = sla.cho_factor(k_train.T, lower=True, overwrite_a=True, check_finite=False)[0]
                l21 = sla.solve_triangular(l11, k_cross.T, lower=True, check_finite=False).T  # K(x′, x) L₁₁⁻ᵀ
                schur = _jittered(k_test, self.jitter)
                schur -= l21 @ l21.T
                l22 = sla.cholesky(schur, lower=True, overwrite_a=True, check_finite=False)
            except (np.linalg.LinAlgError, sla.LinAlgError):
                continue
            _zero_upper(l11)  # L₁₁ itself (scipy's cholesky returns it so)
            self.l11, self.l21, self.l22 = l11, l21, l22
            break
        if self.l11 is None:
            raise NgdrefError("the covariance of f_0 is not positive definite even with jitter 1e-4·mean diagonal")

    def sample_f0(self, seed: int | None):
        """(f_0(x), f_0(x′)) for one initialisation (GP sample), or zeros for ``seed=None``."""
        ds = self.dataset
        if seed is None:
            return np.zeros_like(ds.y_train), np.zeros_like(ds.y_test)
        n = ds.n_train
        z = np.random.default_rng(seed).standard_normal((n + ds.n_test, ds.n_outputs))
        return self.l11 @ z[:n], self.l21 @ z[:n] + self.l22 @ z[n:]

    def accuracies(self, seed: int | None) -> dict:
        f0, f0t = self.sample_f0(seed)
        y, yt = np.asarray(self.dataset.y_train), np.asarray(self.dataset.y_test)
        return {name: (None if "error" in st else _accuracy(f0t + st["reg"] @ (y - f0), yt))
                for name, st in self.methods.items()}

    def info(self) -> dict:
        return {name: {k: v for k, v in st.items() if k != "reg"} for name, st in self.methods.items()}


def empirical_accuracies(network: Network, dataset: Dataset, fim_names, seed: int, backend: Backend,
                         damping: float | None = None, fim_options: dict | None = None) -> dict:
    """Test accuracy of f_∞ with the finite network's own Θ̄ and f_0 (initialisation ``seed``);
    ``damping`` None takes each approximation's default (its spec)."""
    params = network.init(seed, backend)
    x, xt = to_device(dataset.x_train, backend), to_device(dataset.x_test, backend)
    s, st = network.signals(params, x), network.signals(params, xt)
    f0 = np.asarray(to_host(s.f)).T.reshape(-1)
    f0t = np.asarray(to_host(st.f)).T.reshape(-1)
    y = np.asarray(dataset.y_train).T.reshape(-1)
    c = dataset.n_outputs
    out = {}
    for name in fim_names:
        cls = fisher_class(name)
        fim = cls(network, None if damping is None else cls.spec.applicable_damping(damping),
                  **(fim_options or {}).get(name, {}))
        tb = np.asarray(to_host(fim.coefficient(s)))
        tb_cross = np.asarray(to_host(fim.coefficient(st, s)))
        pred = f0t + tb_cross @ np.linalg.lstsq(tb, y - f0, rcond=None)[0]
        out[name] = _accuracy(pred.reshape(c, -1).T, np.asarray(dataset.y_test))
    return out


def prediction_study(network: Network, dataset: Dataset, fim_names, kernel: str = "analytic", seeds: int = 10,
                     backend: Backend | None = None, damping: float | None = None, progress=None,
                     fim_options: dict | None = None, first_seed: int = 0) -> dict:
    """Accuracy of f_∞ on the test set per approximation: mean ± std over ``seeds`` initialisations,
    seeds ``first_seed``, ``first_seed`` + 1, … (and, for analytic kernels, the f_0 = 0 mean
    prediction); ``fim_options`` maps a name to its constructor options."""
    if dataset.n_test < 1:
        raise ConfigError("predictions need test samples (--n-test >= 1)")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    per_seed, info, mean_pred = [], {}, None
    if kernel == "analytic":
        predictor = AnalyticPredictor(network, dataset, fim_names, fim_options)
        info = predictor.info()
        mean_pred = predictor.accuracies(None)
        for k in range(first_seed, first_seed + seeds):
            per_seed.append(predictor.accuracies(k))
            if progress:
                progress(k)
    elif kernel == "empirical":
        for k in range(first_seed, first_seed + seeds):
            per_seed.append(empirical_accuracies(network, dataset, fim_names, k, backend, damping, fim_options))
            if progress:
                progress(k)
    else:
        raise ConfigError(f"unknown --kernel {kernel!r}; use analytic or empirical")
    rows = []
    for name in fim_names:
        accs = [a[name] for a in per_seed if a.get(name) is not None]
        rows.append({
            "fim": name,
            "mean": float(np.mean(accs)) if accs else None,
            "std": float(np.std(accs)) if accs else None,
            "f0_zero": None if mean_pred is None else mean_pred.get(name),
            "per_seed": [a.get(name) for a in per_seed],
            **({"error": info[name]["error"]} if "error" in info.get(name, {}) else {}),
        })
    return {"kernel": kernel, "seeds": seeds, "initialisations": list(range(first_seed, first_seed + seeds)),
            "rows": rows, "methods": info}
