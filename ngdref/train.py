"""NGD training with any Fisher approximation, beside its closed-form prediction.

θ_{t+1} = θ_t − η G_t⁻¹ ∇L(θ_t) (Eq. 7) with G_t recomputed from the current
parameters at every step (structured path). Beside the finite network, from the
initial network:

* ``theory``: f_t^lin(x′) of Eq. 10 / S.25 with the approximation's Θ̄ (Eq. 5 for gd);
* ``isotropic``: f_t = y + (1 − αη)^t (f_0 − y) of Eq. 24 on the training set;
* optionally the linearised model f_0 + J_0(θ_t − θ_0) trained with G_0 fixed (S.23–S.24);
* at the end, θ_T − θ_0 against Eq. 22.

Learning rate: ``lr`` if given; otherwise ``lr_scale``·/α (Corollary 4.2) with the
analytic α, or the measured mean diagonal of Θ̄(x, x) where the paper gives no α
(recorded as ``alpha_source``); for ``gd`` ``lr_scale``/λ_max(Θ) (LeCun et al.).

Cross-entropy (Appendix D): softmax outputs with one-hot targets, G = Jᵀ(Λ + ρ̃I)J/N + ρI
(S.159) for exact and layer-wise approximations (S.164); no closed form is claimed, so
no theory lines are reported.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .backend import Backend, namespace_of, to_device, to_float, to_host
from .data import Dataset
from .diagnostics import isotropy
from .dynamics import isotropic_trajectory, linearized_trajectory, parameter_displacement
from .errors import ConfigError
from .fisher import REGISTRY, get_fisher
from .jacobian import jvp
from .losses import accuracy, cross_entropy_loss, cross_entropy_metric, mse_loss
from .network import Network, function_vector

LOSSES = ("mse", "ce")

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
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"the learning rate must be > 0, got {self.lr}")
        if not (math.isfinite(self.lr_scale) and self.lr_scale > 0):
            raise ConfigError(f"lr-scale c must be > 0 (0 < c < 2 converges), got {self.lr_scale}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.loss == "ce" and not self.ce_damping > 0:
            raise ConfigError("cross-entropy needs a damping ρ̃ > 0 of Λ (S.159): Λ is singular")
        if not self.divergence_factor > 1:
            raise ConfigError("divergence factor must be > 1")


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


def _one_hot(labels: np.ndarray, classes) -> np.ndarray:
    idx = np.searchsorted(np.asarray(classes), labels)
    out = np.zeros((labels.size, len(classes)))
    out[np.arange(labels.size), idx] = 1.0
    return out


#: rows per block of :func:`_distance` are chosen so a block has about this many entries
_DISTANCE_BLOCK = 1 << 16


def _distance(params, params0, shift=None) -> float:
    """‖θ − θ_0 (− shift)‖₂ over all layers, block of rows by block: the differences stay
    cache-sized (a whole-layer θ − θ_0 allocates and page-faults a parameter-sized temporary)."""
    xp = namespace_of(params[0])
    total = None  # stays on the device: one transfer at the end, not one per block
    for l, (p, q) in enumerate(zip(params, params0)):
        rows = max(1, _DISTANCE_BLOCK // max(1, p.shape[1]))
        for r0 in range(0, p.shape[0], rows):
            diff = p[r0 : r0 + rows, :] - q[r0 : r0 + rows, :]
            if shift is not None:
                diff -= shift[l][r0 : r0 + rows, :]
            part = xp.sum(diff * diff)
            total = part if total is None else total + part
    return math.sqrt(to_float(total))


def train(
    network: Network,
    dataset: Dataset,
    config: TrainConfig,
    backend: Backend,
    seed: int = 0,
    progress: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train ``network`` on ``dataset`` with NGD (Eq. 7) and record it beside the theory."""
    config.validate()
    t_start = time.perf_counter()
    fim = get_fisher(config.fim, network, config.damping, **config.fim_options)
    damping, damping_source = fim.damping, fim.damping_source
    ce = config.loss == "ce"
    y_host = _one_hot(dataset.labels_train, dataset.classes) if ce else dataset.y_train
    yt_host = _one_hot(dataset.labels_test, dataset.classes) if ce else dataset.y_test
    if y_host.shape[1] != network.n_outputs:
        raise ConfigError(f"the network has {network.n_outputs} outputs but the targets have {y_host.shape[1]}")
    if ce and not fim.spec.cross_entropy:
        supported = ", ".join(n for n, cls in REGISTRY.items() if cls.spec.cross_entropy)
        raise ConfigError(f"'{fim.name}' is implemented for the MSE loss only; the cross-entropy FIM "
                          f"(Appendix D) is available for {supported}")
    reason = fim.step_needs_learning_rate()
    if reason and config.lr is None:
        raise ConfigError(f"{reason}, so η = c/α is undefined; give the learning rate with --lr")
    x, y = to_device(dataset.x_train, backend), to_device(y_host, backend)
    has_test = dataset.n_test > 0
    xt = to_device(dataset.x_test, backend) if has_test else None
    yt = to_device(yt_host, backend) if has_test else None
    n = dataset.n_train

    params0 = network.init(seed, backend)
    params = list(params0)
    s0 = network.signals(params, x)
    f0 = function_vector(s0.f)
    s0t = network.signals(params, xt) if (has_test and not ce) else None  # for Θ̄(x′, x)
    f0t = function_vector(s0t.f if s0t is not None else network.output(params, xt)) if has_test else None
    loss_fn = cross_entropy_loss if ce else mse_loss

    summary: dict = {"fim": fim.to_dict(), "n_params": network.n_params, "damping": damping,
                     "damping_source": damping_source}
    theory = test_theory = iso = None
    theta_bar = None
    if ce:
        alpha = fim.analytic_alpha(n) or 1.0
        summary["alpha_source"] = "analytic" if fim.analytic_alpha(n) else "none (cross-entropy: 1)"
        eta = config.lr if config.lr is not None else config.lr_scale / alpha
    else:
        theta_bar = fim.coefficient(s0)
        iso_stats = isotropy(theta_bar)
        summary["theta_bar_train"] = {k: v for k, v in iso_stats.items() if k != "eigenvalues"}
        alpha = fim.analytic_alpha(n)
        if alpha is not None:
            summary["alpha_source"] = "analytic"
        else:
            alpha = iso_stats["mean_diagonal"]
            summary["alpha_source"] = "measured mean diagonal of Θ̄(x, x)" + (f" ({fim.alpha_note()})" if fim.alpha_note() else "")
        if config.lr is not None:
            eta = config.lr
            summary["lr_source"] = "given"
        else:
            eta, rule = fim.learning_rate(config.lr_scale, alpha, theta_bar)
            summary["lr_source"] = f"{rule} ({summary['alpha_source']})" if rule == "c / α" else rule
        theta_bar_test = fim.coefficient(s0t, s0) if has_test else None
        theory, test_theory = linearized_trajectory(
            theta_bar, f0, function_vector(y), eta, config.steps, theta_bar_test, f0t
        )
        iso = isotropic_trajectory(f0, function_vector(y), alpha, eta, config.steps)
    summary.update({"alpha": alpha, "lr": eta, "lr_scale": config.lr_scale, "setup_seconds": time.perf_counter() - t_start})

    y_vec_h = np.asarray(to_host(function_vector(y)))
    yt_vec_h = np.asarray(to_host(function_vector(yt))) if has_test else None
    lin_delta = [p * 0.0 for p in params0] if (config.linearized and not ce) else None
    records: list = []
    status, message = "ok", f"trained {config.steps} steps"
    loss0 = None
    for t in range(config.steps + 1):
        s = s0 if t == 0 else network.signals(params, x)
        if not has_test:
            ft = None
        elif t == 0:  # the initial test outputs are already known (no second forward pass)
            ft = s0t.f if s0t is not None else network.output(params, xt)
        else:
            ft = network.output(params, xt)
        rec = {"step": t, "train_loss": loss_fn(s.f, y)}
        rec["train_accuracy"] = accuracy(s.f, y)
        if has_test:
            rec["test_loss"] = loss_fn(ft, yt)
            rec["test_accuracy"] = accuracy(ft, yt)
        if not ce:
            f_h = np.asarray(to_host(function_vector(s.f)))
            rec["theory_train_loss"] = float(np.sum((theory[t] - y_vec_h) ** 2) / (2 * n))
            rec["isotropic_train_loss"] = float(np.sum((iso[t] - y_vec_h) ** 2) / (2 * n))
            rec["max_abs_f_minus_flin_train"] = float(np.max(np.abs(f_h - theory[t])))
            if has_test:
                ft_h = np.asarray(to_host(function_vector(ft)))
                rec["theory_test_loss"] = float(np.sum((test_theory[t] - yt_vec_h) ** 2) / (2 * dataset.n_test))
                rec["max_abs_f_minus_flin_test"] = float(np.max(np.abs(ft_h - test_theory[t])))
        rec["param_distance"] = _distance(params, params0)
        if lin_delta is not None:
            f_lin_model = s0.f + jvp(s0, lin_delta).T
            rec["linearized_model_train_loss"] = mse_loss(f_lin_model, y)
        records.append(rec)
        if progress is not None:
            progress(t, rec)
        # failure checks (this step's loss)
        if not math.isfinite(rec["train_loss"]) or not math.isfinite(rec["param_distance"]):
            status, message = "non-finite", f"non-finite loss or parameters at step {t}; training stopped"
            break
        loss0 = rec["train_loss"] if loss0 is None else loss0
        if t > 0 and rec["train_loss"] > config.divergence_factor * max(loss0, 1e-12):
            status = "diverged"
            message = (
                f"training diverged at step {t}: loss {rec['train_loss']:.3e} > {config.divergence_factor:g} × "
                f"initial loss {loss0:.3e} (learning rate {eta:.3e}); try a smaller --lr-scale or a damping"
            )
            break
        if t == config.steps:
            break
        # the NGD update, G_t recomputed from the current parameters
        if ce:
            from .losses import softmax

            step_dir = fim.precondition(s, (softmax(s.f) - y).T, cross_entropy_metric(s.f, config.ce_damping))
        else:
            step_dir = fim.precondition(s, (s.f - y).T)
        for d in step_dir:  # precondition returns fresh arrays: scale them in place
            d *= eta
        if t == 0:  # θ_0 is kept (distance, Eq. 22): the first update makes new arrays ...
            params = [p - d for p, d in zip(params, step_dir)]
        else:  # ... which later updates overwrite in place
            for p, d in zip(params, step_dir):
                p -= d
        del step_dir
        if lin_delta is not None:
            f_lin_model = s0.f + jvp(s0, lin_delta).T
            lin_step = fim.precondition(s0, (f_lin_model - y).T)
            lin_delta = [d - eta * g for d, g in zip(lin_delta, lin_step)]

    if not ce and status == "ok" and config.steps > 0:
        predicted = parameter_displacement(fim, s0, theta_bar, f0, function_vector(y), eta, config.steps)
        xp = namespace_of(predicted[0])
        diff = _distance(params, params0, predicted)
        norm = math.sqrt(sum(to_float(xp.sum(d * d)) for d in predicted))
        summary["eq22_relative_error"] = diff / norm if norm > 0 else float("nan")
    summary["seconds"] = time.perf_counter() - t_start
    summary["train_loss_final"] = records[-1]["train_loss"]
    return TrainResult(status, message, records, summary)


def config_dict(config: TrainConfig) -> dict:
    return asdict(config)
