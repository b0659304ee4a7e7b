"""NGD training with any Fisher approximation, beside its closed-form prediction.

The pieces, each usable alone:

* :func:`ngd_step` — θ_{t+1} = θ_t − η G_t⁻¹ ∇L(θ_t) = θ_t − η G_t⁻¹ J_tᵀ r_t / N (Eq. 7), with
  r = N ∂L/∂f the loss's residual and G_t built from the signals of θ_t (structured path), written into
  θ by one GEMM per layer (NumPy) or a block of rows at a time where the approximation gives its
  direction as per-layer factors (:func:`apply_factors`: no parameter-sized Δθ);
* :func:`linearized_step` — the same step for the linearised model
  f^lin = f_0 + J_0(θ − θ_0) with G_0 fixed (S.23–S.24), in terms of Δθ = θ − θ_0;
* observers, which see every step and write the records: :class:`LossRecorder` (losses and
  accuracies), :class:`TheoryRecorder` (Eq. 10 / S.25 with the approximation's Θ̄ — Eq. 5 for
  gd — and Eq. 24 f_t = y + (1 − αη)^t (f_0 − y)), :class:`DistanceRecorder` (‖θ_t − θ_0‖),
  :class:`LinearizedModel` (trains and records f^lin) and :class:`Eq22Check` (θ_T − θ_0 against
  Eq. 22, at the end). Each copies what it needs to the host once per step.

:func:`train` composes them. Learning rate: ``lr`` if given; otherwise ``lr_scale``·/α
(Corollary 4.2) with the analytic α, or the measured mean diagonal of Θ̄(x, x) where the paper
gives no α (recorded as ``alpha_source``); for ``gd`` ``lr_scale``/λ_max(Θ) (LeCun et al.).

Cross-entropy (Appendix D): softmax outputs with one-hot targets, G = Jᵀ(Λ + ρ̃I)J/N + ρI
(S.159) for exact and layer-wise approximations (S.164); no closed form is claimed, so
no theory lines are reported.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .backend import Backend, namespace_of, row_blocks, subtract_product, to_device, to_host
from .data import Dataset
from .diagnostics import isotropy
from .dynamics import displacement_vector, isotropic_trajectory, linearized_trajectory
from .errors import ConfigError, MemoryLimitError
from .fisher import REGISTRY, get_fisher
from .fisher.base import FisherApproximation
from .jacobian import jvp
from .losses import LOSSES, Loss, MSELoss, correct_fraction, get_loss
from .memory import human, max_bytes
from .network import Network, Signals, function_vector
from .threads import map_on_threads


@dataclass
class TrainConfig:
    """Everything that defines a run besides the network and the data."""

    fim: str = "unit"
    steps: int = 10
    lr: float | None = None
    lr_scale: float = 1.0
    damping: float | None = None  # None: the approximation's default (its spec)
    loss: str = "mse"
    ce_damping: float = 1.0
    linearized: bool = False
    divergence_factor: float = 1e6
    fim_options: dict = field(default_factory=dict)

    def validate(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral) or self.steps < 0:
            raise ConfigError(f"steps must be an integer >= 0, got {self.steps!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"the learning rate must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.lr_scale) and self.lr_scale > 0):
            raise ConfigError(f"lr-scale c must be a finite number > 0 (0 < c < 2 converges), got {self.lr_scale}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if not (math.isfinite(self.ce_damping) and self.ce_damping > 0):
            raise ConfigError(f"the cross-entropy damping ρ̃ of Λ (S.159) must be a finite number > 0 "
                              f"(Λ is singular), got {self.ce_damping}")
        if self.loss == "ce" and self.linearized:
            raise ConfigError("the linearised model (S.23–S.24) is trained with the MSE loss only; "
                              "drop --linearized or use --loss mse")
        if not self.divergence_factor > 1:
            raise ConfigError("divergence factor must be > 1")

    def lr_scale_warning(self) -> str | None:
        """A one-line warning when η = c/α (MSE, no ``lr`` given) uses c outside 0 < c < 2, where
        Corollary 4.2 guarantees convergence (|1 − c| < 1 in Eq. 24); ``None`` otherwise."""
        if self.lr is not None or self.loss != "mse" or 0 < self.lr_scale < 2:
            return None
        return (f"--lr-scale c = {self.lr_scale:g} is outside 0 < c < 2, where Corollary 4.2 guarantees "
                "convergence (Eq. 24: |1 − c| < 1); training is expected to diverge")


@dataclass
class TrainResult:
    status: str  # "ok", "diverged", "non-finite"
    message: str
    records: list
    summary: dict

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return {"status": self.status, "message": self.message, "summary": self.summary, "records": self.records}


# ---- the steps -------------------------------------------------------------------------------


#: rows per block of a factored update (:func:`apply_factors`) and of the Eq. 22 check are chosen so a
#: block has about this many entries (16 MiB in float64): large enough for an efficient GEMM
_UPDATE_BLOCK = 1 << 21


def _row_blocks(rows: int, cols: int, budget: int):
    """(r0, r1) blocks of ``rows`` rows with about ``budget`` entries each (:func:`~ngdref.backend.row_blocks`)."""
    return row_blocks(rows, budget // max(1, cols))


def apply_factors(params: list, factors: list, eta: float, *, in_place: bool = False) -> list:
    """The NGD update θ_{t+1} = θ_t − η G⁻¹∇L (Eq. 7), θ_l − η·left_l @ right_l per layer, for a factored
    direction (:meth:`~ngdref.fisher.base.FisherApproximation.precondition_factors`), written into θ_{t+1}
    itself by :func:`~ngdref.backend.subtract_product` (one BLAS GEMM with β = 1 for NumPy arrays, C- or
    Fortran-ordered factors alike; row blocks of ``_UPDATE_BLOCK`` entries elsewhere), so that no parameter-sized Δθ exists. ``in_place`` as in
    :func:`ngd_step`; otherwise θ_{t+1} starts as a copy of θ_t. Agrees with the unfactored path's
    θ − η(left @ right) up to the last bits."""
    xp = namespace_of(params[0])
    out = params if in_place else [xp.asarray(p, copy=True) for p in params]
    for p, (left, right) in zip(out, factors):
        subtract_product(p, left, right, eta, max(1, _UPDATE_BLOCK // max(1, p.shape[1])))
    return out


def ngd_step(fim: FisherApproximation, params: list, signals: Signals, residual, eta: float,
             output_metric=None, *, in_place: bool = False, factors: list | None = None) -> list:
    """θ_{t+1} = θ_t − η G_t⁻¹ J_tᵀ r / N (Eq. 7; ∇_θL = Jᵀr/N), per layer.

    ``signals`` are those of ``params`` (θ_t) on the training inputs, ``residual`` r = N ∂L/∂f
    of shape (C, N) (:meth:`ngdref.losses.Loss.residual`: (f − y)ᵀ for MSE), ``output_metric``
    the FIM's Λ̃ (cross-entropy, S.159) or ``None`` (MSE).

    Memory contract: with ``in_place=False`` θ_{t+1} is a new list of new arrays and ``params`` is
    left as it was (so θ_0 can be kept); with ``in_place=True`` the arrays of ``params`` are
    overwritten with θ_{t+1} and the same list is returned. Where ``fim`` has a factored direction
    (``precondition_factors``: exact, bd, tridiag, layer, kfac, unit, gd; block where its tiles are whole rows and
    dual) it is written into θ_{t+1} (:func:`apply_factors`) and no parameter-sized array is made besides θ_{t+1}'s own
    (``in_place=False``). Otherwise the only parameter-sized arrays made are those of the direction
    returned by ``fim.precondition`` (fresh, its contract): scaled by η in place, and with
    ``in_place=False`` turned into θ_{t+1} = θ_t − ηΔθ in place (−ηΔθ + θ_t is the same floating-point
    sum), so that θ_t, θ_{t+1} and Δθ never coexist. ``factors``: the direction's factors where the caller
    has them already (:meth:`~ngdref.fisher.base.FisherApproximation.precondition_factors_many`).
    """
    if factors is None:
        factors = fim.precondition_factors(signals, residual, output_metric)
    if factors is not None:
        return apply_factors(params, factors, eta, in_place=in_place)
    direction = fim.precondition(signals, residual, output_metric)
    if not in_place:
        for p, d in zip(params, direction):
            d *= -eta
            d += p
        return direction
    for d in direction:
        d *= eta
    for p, d in zip(params, direction):
        p -= d
    return params


def linearized_output(signals0: Signals, delta: list):
    """f^lin = f_0 + J_0 Δθ (S.23), (N, C), for Δθ = θ − θ_0 given per layer."""
    return signals0.f + jvp(signals0, delta).T


def linearized_step(fim: FisherApproximation, signals0: Signals, delta: list, y, eta: float,
                    f_lin=None, *, in_place: bool = False) -> list:
    """Δθ_{t+1} = Δθ_t − η G_0⁻¹ J_0ᵀ (f^lin_t − y)/N (S.24): the MSE NGD step of the linearised
    model f^lin_t = f_0 + J_0 Δθ_t (S.23), with G_0 and J_0 those of ``signals0`` (θ_0) throughout.

    ``f_lin`` is f^lin_t if already known (else computed); ``in_place`` as in :func:`ngd_step`.
    """
    f_lin = linearized_output(signals0, delta) if f_lin is None else f_lin
    return ngd_step(fim, delta, signals0, (f_lin - y).T, eta, in_place=in_place)


# ---- observers -------------------------------------------------------------------------------


@dataclass
class Step:
    """What observers see at step t: θ_t, its signals on the training inputs and f_t(x′) on the
    test inputs (``None`` without test data)."""

    t: int
    params: list
    signals: Signals
    test_output: object | None


class Observer:
    """Sees every step (:meth:`observe`: record entries) and the last one (:meth:`finish`: summary
    entries, called only when training ended normally)."""

    def observe(self, step: Step) -> dict:
        return {}

    def finish(self, step: Step) -> dict:
        return {}


def fetch(*arrays) -> list:
    """Copy several arrays of one backend and dtype to the host in one transfer; NumPy arrays of
    the same shapes, in order."""
    xp = namespace_of(*arrays)
    flat = to_host(xp.concat([xp.reshape(a, (-1,)) for a in arrays]))
    out, start = [], 0
    for a in arrays:
        size = math.prod(a.shape)
        out.append(flat[start : start + size].reshape(tuple(a.shape)))
        start += size
    return out


class LossRecorder(Observer):
    """``train_loss``, ``train_accuracy`` (and ``test_loss``, ``test_accuracy``) of f_t."""

    def __init__(self, loss: Loss, y, y_test=None):
        self.loss, self.y, self.y_test = loss, y, y_test

    def observe(self, step):
        f, ft = step.signals.f, step.test_output
        parts = [self.loss.total(f, self.y), correct_fraction(f, self.y)]
        if ft is not None:
            parts += [self.loss.total(ft, self.y_test), correct_fraction(ft, self.y_test)]
        h = [float(v) for v in fetch(*parts)]
        rec = {"train_loss": h[0] / self.loss.normaliser(f.shape[0]), "train_accuracy": h[1]}
        if ft is not None:
            rec.update(test_loss=h[2] / self.loss.normaliser(ft.shape[0]), test_accuracy=h[3])
        return rec


def _half_mean_square(a: np.ndarray, b: np.ndarray, n: int) -> float:
    return float(np.sum((a - b) ** 2) / (2 * n))


class TheoryRecorder(Observer):
    """The MSE closed forms beside the network: ``theory_train_loss`` of f_t^lin (Eq. 10 / S.25),
    ``isotropic_train_loss`` of Eq. 24, ``max_abs_f_minus_flin_train`` = max |f_t − f_t^lin|,
    and on test data ``theory_test_loss`` and ``max_abs_f_minus_flin_test``. ``theory``,
    ``isotropic`` and ``test_theory`` are host arrays (steps+1, CN) from :mod:`ngdref.dynamics`;
    ``y``, ``y_test`` host CN vectors."""

    def __init__(self, theory, isotropic, y, test_theory=None, y_test=None):
        self.theory, self.isotropic, self.y = theory, isotropic, y
        self.test_theory, self.y_test = test_theory, y_test

    def observe(self, step):
        f, ft, t = step.signals.f, step.test_output, step.t
        n = f.shape[0]
        outputs = fetch(function_vector(f), *([function_vector(ft)] if ft is not None else []))
        rec = {"theory_train_loss": _half_mean_square(self.theory[t], self.y, n),
               "isotropic_train_loss": _half_mean_square(self.isotropic[t], self.y, n),
               "max_abs_f_minus_flin_train": float(np.max(np.abs(outputs[0] - self.theory[t])))}
        if ft is not None:
            rec["theory_test_loss"] = _half_mean_square(self.test_theory[t], self.y_test, ft.shape[0])
            rec["max_abs_f_minus_flin_test"] = float(np.max(np.abs(outputs[1] - self.test_theory[t])))
        return rec


#: rows per block of :func:`squared_distance` are chosen so a block has about this many entries
_DISTANCE_BLOCK = 1 << 16


def _blockwise_sum(blocks, term, like):
    """Σ term(block) over ``blocks`` (tuples of 0-d arrays summed entry by entry), added in the blocks' order.
    The blocks go to the thread pool in contiguous groups (:func:`~ngdref.threads.map_on_threads`: NumPy's
    element-wise passes are single-threaded; at M = 4096 a pass over θ_t and θ_0 took 25–34 ms on one thread,
    17–27 ms on two: memory-bound); the partial sums come back in order and are added as by the serial loop, so
    the sum does not depend on the number of threads."""
    groups = [blocks[j * len(blocks) // _SUM_GROUPS : (j + 1) * len(blocks) // _SUM_GROUPS] for j in range(_SUM_GROUPS)]
    parts = map_on_threads(lambda group: [term(*b) for b in group], [g for g in groups if g], like, "ngdref-sum")
    total = None
    for group in parts:
        for part in group:
            total = part if total is None else tuple(a + b for a, b in zip(total, part))
    return total


#: contiguous groups of blocks of :func:`_blockwise_sum` (a fixed number: the sums never depend on it)
_SUM_GROUPS = 8


def squared_distance(params, params0, shift=None):
    """‖θ − θ_0 (− shift)‖₂² over all layers as a 0-d array, summed a block of rows at a time so
    the differences stay small (no parameter-sized temporary); a ``None`` layer of ``params0`` is 0."""
    xp = namespace_of(params[0])

    def term(l, r0, r1):
        p, q = params[l], params0[l]
        diff = p[r0:r1, :] - q[r0:r1, :] if q is not None else p[r0:r1, :] * 1.0  # a block copy (exact)
        if shift is not None:
            diff -= shift[l][r0:r1, :]
        return (xp.sum(diff * diff),)

    blocks = [(l, r0, r1) for l, p in enumerate(params) for r0, r1 in _row_blocks(p.shape[0], p.shape[1], _DISTANCE_BLOCK)]
    return _blockwise_sum(blocks, term, params[0])[0]


class DistanceRecorder(Observer):
    """``param_distance`` = ‖θ_t − θ_0‖₂."""

    def __init__(self, params0: list):
        self.params0 = params0

    def observe(self, step):
        (d2,) = fetch(squared_distance(step.params, self.params0))
        return {"param_distance": math.sqrt(float(d2))}


def factored_distances(params, params0, factors):
    """(‖θ − θ_0 − Δ‖₂², ‖Δ‖₂²) as 0-d arrays for Δ_l = left_l @ right_l given as factors
    (:meth:`~ngdref.fisher.base.FisherApproximation.precondition_factors`), Δ made and used a block of
    rows at a time (no parameter-sized temporary; :func:`_blockwise_sum`: each block's product a GEMM at one
    BLAS thread on the pool, 119–215 ms at M = 4096 against 140–283 ms on the calling thread with BLAS
    threading each GEMM)."""
    xp = namespace_of(params[0])

    def term(l, r0, r1):
        left, right = factors[l]
        shift = left[r0:r1, :] @ right
        diff = params[l][r0:r1, :] - params0[l][r0:r1, :]
        diff -= shift
        return xp.sum(diff * diff), xp.sum(shift * shift)

    blocks = [(l, r0, r1) for l, p in enumerate(params) for r0, r1 in _row_blocks(p.shape[0], p.shape[1], _UPDATE_BLOCK)]
    return _blockwise_sum(blocks, term, params[0])


class Eq22Check(Observer):
    """At the end (T = ``steps`` > 0): ``eq22_relative_error`` = ‖(θ_T − θ_0) − Δθ^{Eq. 22}‖ /
    ‖Δθ^{Eq. 22}‖ with Δθ^{Eq. 22} = G_0⁻¹J_0ᵀ/N · Θ̄⁻¹(I − (I − ηΘ̄)^T)(y − f_0); with the
    approximation's factored direction where it has one (:func:`factored_distances`: no parameter-sized
    Δθ^{Eq. 22}), else its ``precondition``. ``vector`` is the sample-space v of G_0⁻¹J_0ᵀv/N for
    T = ``steps``: :func:`train` has its factors made together with step 0's (``factors``), which shares
    G_0's factorisation (unit-wise: one per unit) between the two."""

    def __init__(self, fim, signals0: Signals, theta_bar, y_vec, eta: float, params0: list, steps: int):
        self.fim, self.signals0, self.theta_bar = fim, signals0, theta_bar
        self.y_vec, self.eta, self.params0, self.steps = y_vec, eta, params0, steps
        self.vector = self._vector(steps) if steps > 0 else None
        self.factors = None

    def _vector(self, t: int):
        return displacement_vector(self.signals0, self.theta_bar, function_vector(self.signals0.f), self.y_vec,
                                   self.eta, t)

    def finish(self, step):
        if step.t == 0:
            return {}
        if step.t == self.steps and self.factors is not None:
            factors, v = self.factors, self.vector
        else:
            v = self.vector if step.t == self.steps else self._vector(step.t)
            factors = self.fim.precondition_factors(self.signals0, v)
        if factors is not None:
            parts = factored_distances(step.params, self.params0, factors)
        else:
            predicted = self.fim.precondition(self.signals0, v)
            parts = (squared_distance(step.params, self.params0, predicted),
                     squared_distance(predicted, [None] * len(predicted)))
        h = [float(x) for x in fetch(*parts)]
        diff, norm = math.sqrt(h[0]), math.sqrt(h[1])
        return {"eq22_relative_error": diff / norm if norm > 0 else float("nan")}


class LinearizedModel(Observer):
    """The linearised model f^lin_t = f_0 + J_0 Δθ_t (S.23) trained by :func:`linearized_step`
    with G_0 fixed (S.24) beside the network; records ``linearized_model_train_loss`` (MSE)."""

    def __init__(self, fim, signals0: Signals, params0: list, y):
        xp = namespace_of(signals0.f)
        self.fim, self.signals0, self.y = fim, signals0, y
        self.delta = [xp.zeros_like(p) for p in params0]
        self.f = linearized_output(signals0, self.delta)

    def observe(self, step):
        return {"linearized_model_train_loss": MSELoss().value(self.f, self.y)}

    def step(self, eta: float) -> None:
        self.delta = linearized_step(self.fim, self.signals0, self.delta, self.y, eta, self.f, in_place=True)
        self.f = linearized_output(self.signals0, self.delta)


# ---- training --------------------------------------------------------------------------------


def one_hot(labels: np.ndarray, classes) -> np.ndarray:
    """One-hot targets (N, C) of ``labels`` over ``classes`` (cross-entropy, Appendix D; C > 1 MSE)."""
    idx = np.searchsorted(np.asarray(classes), labels)
    out = np.zeros((labels.size, len(classes)))
    out[np.arange(labels.size), idx] = 1.0
    return out


def _check_setup(fim, loss: Loss, config: TrainConfig, network: Network, y_host) -> None:
    if y_host.shape[1] != network.n_outputs:
        raise ConfigError(f"the network has {network.n_outputs} outputs but the targets have {y_host.shape[1]}")
    if loss.name == "ce" and not fim.spec.cross_entropy:
        supported = ", ".join(n for n, cls in REGISTRY.items() if cls.spec.cross_entropy)
        raise ConfigError(f"'{fim.name}' is implemented for the MSE loss only; the cross-entropy FIM "
                          f"(Appendix D) is available for {supported}")
    reason = fim.step_needs_learning_rate(y_host.shape[0])
    if reason and config.lr is None:
        raise ConfigError(f"{reason}, so η = c/α is undefined; give the learning rate with --lr")


#: host bytes per recorded step besides the trajectories: one record dict (about a dozen floats)
#: and its share of the JSON text, generously
_RECORD_BYTES = 2048


def _check_fits(config: TrainConfig, network: Network, dataset: Dataset) -> None:
    """Refuse, before any work, a run whose per-step host memory would exceed the limit of
    :mod:`ngdref.memory`: the MSE closed forms (Eq. 10 on train and test, Eq. 24) hold
    (steps + 1) × (2CN + CN′) floats, and every step keeps a record."""
    c = network.n_outputs
    per_step = _RECORD_BYTES + (0 if config.loss == "ce" else 8 * c * (2 * dataset.n_train + dataset.n_test))
    nbytes = (config.steps + 1) * per_step
    limit = max_bytes()
    if nbytes > limit:
        raise MemoryLimitError(
            f"{config.steps} steps would keep {human(nbytes)} of trajectories and records, above the limit of "
            f"{human(limit)}; reduce --steps or raise NGDREF_MAX_BYTES"
        )


def _step_size(fim, config: TrainConfig, n: int, theta_bar, summary: dict) -> tuple[float, float]:
    """(α, η), with how they were chosen written to ``summary``. η = ``config.lr`` if given, else the
    approximation's rule (c/α, Corollary 4.2) with α analytic where the paper gives one and the measured
    mean diagonal of Θ̄(x, x) otherwise. Cross-entropy (``theta_bar`` None): α analytic or 1, η = c/α."""
    alpha = fim.analytic_alpha(n)
    if theta_bar is None:
        summary["alpha_source"] = "analytic" if alpha else "none (cross-entropy: 1)"
        alpha = alpha or 1.0
        return alpha, (config.lr if config.lr is not None else config.lr_scale / alpha)
    iso_stats = isotropy(theta_bar)
    summary["theta_bar_train"] = {k: v for k, v in iso_stats.items() if k != "eigenvalues"}
    if alpha is not None:
        summary["alpha_source"] = "analytic"
    else:
        alpha = iso_stats["mean_diagonal"]
        summary["alpha_source"] = "measured mean diagonal of Θ̄(x, x)" + (f" ({fim.alpha_note()})" if fim.alpha_note() else "")
    if config.lr is not None:
        summary["lr_source"] = "given"
        return alpha, config.lr
    eta, rule = fim.learning_rate(config.lr_scale, alpha, theta_bar)
    summary["lr_source"] = f"{rule} ({summary['alpha_source']})" if rule == "c / α" else rule
    return alpha, eta


def coefficients(fim, s0: Signals, s0t: Signals | None):
    """(Θ̄(x, x), Θ̄(x′, x)) at θ_0 (Eq. 11; the second ``None`` without test signals ``s0t``) by
    :meth:`~ngdref.fisher.base.FisherApproximation.coefficient_pair` (one set of factorisations
    where the approximation can share them: unit-wise)."""
    if s0t is None:
        return fim.coefficient(s0), None
    return fim.coefficient_pair(s0t, s0)


def _closed_form_observers(fim, s0: Signals, theta_bar, y, s0t: Signals | None, theta_bar_test, y_test, params0,
                           alpha: float, eta: float, steps: int, lin: LinearizedModel | None) -> list:
    """The MSE observers after the losses: theory lines (Eq. 10, with Θ̄(x′, x) ``theta_bar_test`` on
    the test signals ``s0t`` and targets ``y_test``, or None; Eq. 24), distance, the linearised model
    ``lin``, Eq. 22."""
    f0, y_vec = function_vector(s0.f), function_vector(y)
    test = s0t is not None
    f0t = function_vector(s0t.f) if test else None
    theory, test_theory = linearized_trajectory(theta_bar, f0, y_vec, eta, steps, theta_bar_test, f0t)
    iso = isotropic_trajectory(f0, y_vec, alpha, eta, steps)
    y_h = fetch(y_vec, *([function_vector(y_test)] if test else []))  # the targets as the backend holds them
    theory_rec = TheoryRecorder(theory, iso, y_h[0], test_theory, y_h[1] if test else None)
    return [theory_rec, DistanceRecorder(params0), *([lin] if lin else []),
            Eq22Check(fim, s0, theta_bar, y_vec, eta, params0, steps)]


def _stop(t: int, rec: dict, loss0: float, config: TrainConfig, eta: float) -> tuple[str, str] | None:
    """(status, message) if training must stop after step t's record, else ``None``."""
    if not math.isfinite(rec["train_loss"]) or not math.isfinite(rec["param_distance"]):
        return "non-finite", f"non-finite loss or parameters at step {t}; training stopped"
    if t > 0 and rec["train_loss"] > config.divergence_factor * max(loss0, 1e-12):
        return "diverged", (
            f"training diverged at step {t}: loss {rec['train_loss']:.3e} > {config.divergence_factor:g} × "
            f"initial loss {loss0:.3e} (learning rate {eta:.3e}); try a smaller --lr-scale or a damping"
        )
    return None


def train(
    network: Network,
    dataset: Dataset,
    config: TrainConfig,
    backend: Backend,
    seed: int = 0,
    progress: Callable[[int, dict], None] | None = None,
    phase: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``network`` on ``dataset`` with NGD (Eq. 7) and record it beside the theory.

    ``progress(t, record)`` is called after every step; ``phase(text)`` when the run enters a phase
    (the set-up — initialisation, Θ̄(x, x), Θ̄(x′, x), the theory lines — then the steps)."""
    phase = phase or (lambda text: None)
    config.validate()
    _check_fits(config, network, dataset)
    t_start = time.perf_counter()
    fim = get_fisher(config.fim, network, config.damping, **config.fim_options)
    loss = get_loss(config.loss, config.ce_damping)
    ce = loss.name == "ce"
    y_host = one_hot(dataset.labels_train, dataset.classes) if ce else dataset.y_train
    yt_host = one_hot(dataset.labels_test, dataset.classes) if ce else dataset.y_test
    _check_setup(fim, loss, config, network, y_host)
    x, y = to_device(dataset.x_train, backend), to_device(y_host, backend)
    has_test = dataset.n_test > 0
    xt = to_device(dataset.x_test, backend) if has_test else None
    yt = to_device(yt_host, backend) if has_test else None
    n = dataset.n_train

    phase("set-up: initialising the network")
    params0 = network.init(seed, backend)
    s0 = network.signals(params0, x)
    phase("set-up: Θ̄(x, x), Θ̄(x′, x) and the theory lines (Eq. 10, 22)")

    summary: dict = {"fim": fim.to_dict(), "n_params": network.n_params, "damping": fim.damping,
                     "damping_source": fim.damping_source}
    # MSE: the test signals at θ_0 feed Θ̄(x′, x) and step 0's f_0(x′) (no second forward pass)
    s0t = network.signals(params0, xt) if (has_test and not ce) else None
    theta_bar, theta_bar_test = (None, None) if ce else coefficients(fim, s0, s0t)
    alpha, eta = _step_size(fim, config, n, theta_bar, summary)
    observers: list = [LossRecorder(loss, y, yt)]
    lin = LinearizedModel(fim, s0, params0, y) if (config.linearized and not ce) else None
    f0_test = None if s0t is None else s0t.f  # the initial test outputs, when set-up already has them
    if ce:
        observers.append(DistanceRecorder(params0))
    else:
        observers += _closed_form_observers(fim, s0, theta_bar, y, s0t, theta_bar_test, yt, params0, alpha, eta,
                                            config.steps, lin)
    summary.update({"alpha": alpha, "lr": eta, "lr_scale": config.lr_scale, "setup_seconds": time.perf_counter() - t_start})

    records: list = []
    eq22 = next((obs for obs in observers if isinstance(obs, Eq22Check)), None)
    status, message = "ok", f"trained {config.steps} steps"
    params = params0
    phase("steps")
    for t in range(config.steps + 1):
        if t == 0:
            s = s0
            ft = f0_test if f0_test is not None else (network.output(params, xt) if has_test else None)
        elif has_test:  # θ_t's signals on x and f_t(x′) from one forward pass
            s, ft = network.signals_and_output(params, x, xt)
        else:
            s, ft = network.signals(params, x), None
        step = Step(t, params, s, ft)
        rec = {"step": t}
        for obs in observers:
            rec.update(obs.observe(step))
        records.append(rec)
        if progress is not None:
            progress(t, rec)
        stop = _stop(t, rec, records[0]["train_loss"], config, eta)
        if stop is not None:
            status, message = stop
            break
        if t == config.steps:
            break
        # θ_0 is kept (distance, Eq. 22): the first update makes new arrays, later ones overwrite them
        residual, metric, factors = loss.residual(s.f, y), loss.output_metric(s.f), None
        if t == 0 and eq22 is not None and eq22.vector is not None and metric is None:  # share G_0⁻¹ (MSE: Λ = I)
            pair = fim.precondition_factors_many(s, [residual, eq22.vector], metric)
            if pair is not None:
                factors, eq22.factors = pair
        params = ngd_step(fim, params, s, residual, eta, metric, in_place=t > 0, factors=factors)
        if lin is not None:
            lin.step(eta)

    if status == "ok":
        for obs in observers:
            summary.update(obs.finish(step))
    summary["seconds"] = time.perf_counter() - t_start
    summary["train_loss_final"] = records[-1]["train_loss"]
    return TrainResult(status, message, records, summary)


def config_dict(config: TrainConfig) -> dict:
    return asdict(config)
