"""``ngdref train`` and ``ngdref isotropy`` (thin: parsing and printing only)."""

from __future__ import annotations

import sys

import click
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

from .common import (
    FiniteFloat,
    UserError,
    build_network,
    check_fim_names,
    check_params_fit,
    FimOption,
    single_fim_options,
    option_flag,
    options_by_fim,
    parse_option_pairs,
    consoles,
    data_options,
    emit_json,
    given,
    handle_errors,
    json_document,
    json_option,
    load_data,
    progress_bar,
    network_options,
    print_table,
    parse_int_list,
    parse_str_list,
    run_config,
)


def _fmt(v, spec=".4g"):
    return "—" if v is None else format(v, spec)


@click.command(short_help="Train with NGD (Eq. 7) beside the closed-form dynamics (Eq. 10).")
@single_fim_options("unit")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=0), help="Training steps.")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Learning rate η > 0 (instead of --lr-scale).")
@click.option("--lr-scale", default=1.0, show_default=True, type=FiniteFloat(min=0, min_open=True),
              help="c in η = c/α (Corollary 4.2: 0 < c < 2 converges); for gd η = c/λ_max(Θ).")
@click.option("--loss", type=click.Choice(["mse", "ce"]), default="mse", show_default=True, help="Loss (ce: Appendix D).")
@click.option("--ce-damping", default=1.0, show_default=True, type=FiniteFloat(min=0, min_open=True),
              help="ρ̃ > 0 added to Λ for cross-entropy (S.159); small ρ̃ makes steps up to 1/ρ̃ larger.")
@click.option("--linearized/--no-linearized", default=False, show_default=True, help="Also train the linearised model with G_0 fixed (S.23–S.24).")
@click.option("--sigma", default=None, help="Short for --option sigma=… (Σ of --fim layer, rows separated by ';', Eq. 15).")
@click.option("--kfac-bias", default=None, help="Short for --option bias=… (K-FAC: separate or folded, S.123).")
@click.option("--forster/--no-forster", default=False, show_default=True, help="Forster-transform the training inputs (B.3.1(ii)); for K-FAC with M0 < N.")
@network_options()
@data_options()
@json_option
@click.pass_obj
@handle_errors
def train(settings, fim, steps, lr, lr_scale, damping, loss, ce_damping, linearized, raw_options, sigma, kfac_bias, forster,
          depth, width, activation, shift, sigma_w2, sigma_b2, data, classes, n_train, n_test, input_dim, json_path):
    """Train with NGD (Eq. 7) and compare with the closed-form dynamics (Eq. 10, 22, 24)."""
    from ngdref.fisher import fisher_class
    from ngdref.train import TrainConfig, config_dict
    from ngdref.train import train as run_train

    (fim,) = check_fim_names([fim], one=True)
    if lr is not None and given("lr_scale"):
        raise UserError("give either --lr (η itself) or --lr-scale (η = c/α), not both")
    if loss != "ce" and given("ce_damping"):
        raise UserError("--ce-damping is the cross-entropy damping ρ̃ (S.159); it needs --loss ce")
    # K-FAC's α for M0 < N holds only for Forster-transformed inputs (S.111): it is told that they are
    declared = {"forster": "yes" if forster else None} if "forster" in fisher_class(fim).spec.option_names else {}
    raw = parse_option_pairs(raw_options)
    if "forster" in raw:
        raise UserError("use --forster: it transforms the training inputs (B.3.1(ii)) and tells K-FAC so (S.111)")
    for key, value in (("sigma", sigma), ("bias", kfac_bias)):
        if value is not None:
            if key in raw:
                raise UserError(f"--option {key} is given twice (also as --{'kfac-bias' if key == 'bias' else key})")
            raw[key] = value
    options = options_by_fim([fim], {**raw, **{k: v for k, v in declared.items() if v is not None}})[fim]
    config = TrainConfig(fim=fim, steps=steps, lr=lr, lr_scale=lr_scale, damping=damping, loss=loss,
                         ce_damping=ce_damping, linearized=linearized, fim_options=options)
    config.validate()
    backend = settings.backend()
    ds = load_data(data, classes, n_train, n_test, input_dim, settings.seed)
    if forster:
        from ngdref.experiments.transforms import forster_dataset

        ds = forster_dataset(ds)
    n_outputs = len(ds.classes) if loss == "ce" else ds.n_outputs
    net = build_network(ds.input_dim, width, depth, activation, shift, sigma_w2, sigma_b2, n_outputs)
    check_params_fit(net, backend.dtype_name)
    con = consoles(json_path)
    err = consoles("-")
    warning = config.lr_scale_warning()

    def progress(t, rec):
        if t == 0 and warning:  # setup passed every check: the run starts, with a word about c
            click.echo(f"Warning: {warning}", err=True)
        bar.update(task, completed=t + 1, loss=f"loss {rec['train_loss']:.3e}")

    with progress_bar(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task(f"{fim} NGD", total=steps + 1, loss="")
        result = run_train(net, ds, config, backend, settings.seed, progress=progress,
                           phase=lambda text: bar.update(task, description=f"{fim} NGD — {text}"))
    done = result.to_dict()
    # `records` is kept as an alias of `rows` (the same list) for readers of earlier records
    record = json_document("train", run_config(settings, backend, **config_dict(config), network=net.to_dict(),
                                               dataset=ds.to_dict()),
                           done["records"], status=done["status"], message=done["message"], summary=done["summary"],
                           records=done["records"])
    emit_json(json_path, record)  # first: a closed stdout (| head) must not lose the record
    s = result.summary
    title = (f"{fim} NGD, η = {s['lr']:.4g} (α = {s['alpha']:.6g}, {s.get('alpha_source', '')}), "
             f"ρ = {s['damping']:g} ({s['damping_source']})")
    cols = ["step", "train loss", "theory (Eq. 10)", "Eq. 24", "test loss", "theory test", "train acc", "test acc",
            "max|f−f_lin| train", "max|f−f_lin| test", "‖θ−θ₀‖"]
    keys = ["step", "train_loss", "theory_train_loss", "isotropic_train_loss", "test_loss", "theory_test_loss",
            "train_accuracy", "test_accuracy", "max_abs_f_minus_flin_train", "max_abs_f_minus_flin_test", "param_distance"]
    if linearized:
        cols.insert(3, "linearised model")
        keys.insert(3, "linearized_model_train_loss")
    print_table(con, title, cols, [[str(rec["step"])] + [_fmt(rec.get(k)) for k in keys[1:]] for rec in result.records])
    if "eq22_relative_error" in s:
        con.print(f"‖(θ_T − θ_0) − Eq. 22‖ / ‖Eq. 22‖ = {s['eq22_relative_error']:.3e}    wall time {s['seconds']:.1f} s")
    if not result.ok:
        click.echo(f"Error: {result.message}", err=True)
        sys.exit(1)


@click.command(short_help="Isotropy of Θ̄(x, x) per approximation and width (Fig. 3).")
@click.option("--fim", "fims", cls=FimOption, default="gd,bd,unit,diag,quasi-diag", show_default=True, help="Comma-separated approximations:")
@click.option("--widths", default="256,512,1024,2048,4096", show_default=True,
              help="Comma-separated hidden widths (one network each).")
@click.option("--width", "-M", default=None, type=click.IntRange(min=1),
              help="One hidden width M, as the other commands take it (instead of --widths).")
@click.option("--damping", default=None, type=FiniteFloat(min=0),
              help="ρ >= 0 (0 = pseudo-inverse). Default: each approximation's own, as in train "
                   "(0; 1e-12 for unit, the paper's C.3 value); Fig. 3 uses 1e-12 for all.")
@option_flag
@network_options(width=False)
@data_options(default_n_train=80, test=False)
@json_option
@click.pass_obj
@handle_errors
def isotropy(settings, fims, widths, width, damping, raw_options, depth, activation, shift, sigma_w2, sigma_b2, data, classes,
             n_train, input_dim, json_path):
    """cond(Θ̄), measured and analytic α per approximation and width (Eq. 12, Fig. 3) on the training inputs."""
    from ngdref.experiments.isotropy import isotropy_sweep

    names = check_fim_names(parse_str_list(fims))
    options = options_by_fim(names, parse_option_pairs(raw_options))
    if width is not None and given("widths"):
        raise UserError("give either --width (one width) or --widths (a list), not both")
    widths_list = [width] if width is not None else parse_int_list(widths, "--widths", minimum=1)
    backend = settings.backend()
    ds = load_data(data, classes, n_train, 0, input_dim, settings.seed)
    # every option checked before the sweep: the network of the widest width and each approximation's options
    widest = build_network(ds, max(widths_list), depth, activation, shift, sigma_w2, sigma_b2)
    check_params_fit(widest, backend.dtype_name)
    err = consoles("-")
    with progress_bar(TextColumn("[bold]isotropy"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task("", total=len(names) * len(widths_list))
        rows = isotropy_sweep(names, widths_list, depth, activation, ds.x_train, settings.seed, backend, sigma_w2,
                              sigma_b2, shift, damping, ds.n_outputs, progress=lambda r: bar.advance(task),
                              fim_options=options)
    con = consoles(json_path)
    print_table(con, f"Isotropy of Θ̄(x,x): {ds.name}, N = {ds.n_train}, L = {depth}, {activation}",
                ("fim", "width", "cond(Θ̄)", "α measured", "α analytic", "measured/analytic", "seconds"),
                [[r["fim"], str(r["width"]), f"{r['condition_number']:.4g}", f"{r['alpha_measured']:.6g}",
                  _fmt(r["alpha_analytic"], ".6g"), _fmt(r["measured_over_analytic"], ".5f"), f"{r['seconds']:.2f}"]
                 for r in rows], keep=2)
    config = run_config(settings, backend, fim=names, widths=widths_list, option=options, dataset=ds.to_dict())
    emit_json(json_path, json_document("isotropy", config, rows))
