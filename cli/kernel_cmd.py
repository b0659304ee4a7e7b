"""``ngdref alpha`` and ``ngdref predict`` (thin: parsing and printing only)."""

from __future__ import annotations

import click
from rich.markup import escape

from .common import (
    N_TRAIN_NOTE,
    FiniteFloat,
    UserError,
    build_network,
    check_fim_names,
    check_params_fit,
    FimOption,
    consoles,
    data_options,
    emit_json,
    given,
    option_flag,
    options_by_fim,
    parse_option_pairs,
    handle_errors,
    json_document,
    json_option,
    load_data,
    progress_bar,
    network_options,
    parse_str_list,
    print_table,
    run_config,
    unused_settings,
)


@unused_settings(seed="α and q_l, γ_l are deterministic: no initialisation, no data",
                 backend="the order parameters are float64 NumPy recursions on the host",
                 dtype="the order parameters are float64 NumPy recursions on the host")
@click.command(short_help="Analytic α of Θ̄ = αI per approximation; q_l, γ_l (S.128–S.141).")
@click.option("--fim", "fims", cls=FimOption, default="exact,bd,tridiag,kfac,unit", show_default=True, help="Comma-separated approximations:")
@click.option("--n-train", default=100, show_default=True, type=click.IntRange(min=1),
              help=f"N (K-FAC's α depends on it). {N_TRAIN_NOTE}")
@click.option("--input-dim", default=784, show_default=True, type=click.IntRange(min=1),
              help="M0 of the network (784: MNIST images; the data commands' --input-dim is M0 of --data gaussian).")
@click.option("--outputs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Number of outputs C (classes).")
@option_flag
@network_options()
@json_option
@click.pass_obj
@handle_errors
def alpha(settings, fims, n_train, input_dim, outputs, raw_options, depth, width, activation, shift, sigma_w2, sigma_b2,
          json_path):
    """Analytic α of the isotropic condition Θ̄ = αI per approximation, with q_l and γ_l (S.128–S.141)."""
    from ngdref.experiments.alpha_report import alpha_report

    names = check_fim_names(parse_str_list(fims))
    options = options_by_fim(names, parse_option_pairs(raw_options))
    net = build_network(input_dim, width, depth, activation, shift, sigma_w2, sigma_b2, outputs)
    rep = alpha_report(net, names, n_train, fim_options=options)
    con = consoles(json_path)
    print_table(con, f"Order parameters, {activation}, L = {depth}, M = {width}",
                ("layer", "M_l", "q_l", "γ_l", "γ_l M_l"),
                [[str(r["layer"]), str(r["width"]), f"{r['q']:.6g}", f"{r['gamma']:.6g}",
                  f"{r['gamma_times_width']:.6g}"] for r in rep["layers"]])
    print_table(con, f"Analytic α (N = {n_train})", ("fim", "α", "α / M", "note"),
                [[r["fim"], "—" if r["alpha"] is None else f"{r['alpha']:.6g}",
                  "—" if r["alpha_over_width"] is None else f"{r['alpha_over_width']:.6g}", escape(r["note"])]
                 for r in rep["rows"]], justify=["right", "right", "right", "left"])
    config = run_config(settings, None, fim=names, option=options, network=rep["network"])
    emit_json(json_path, json_document("alpha", config, rep["rows"], layers=rep["layers"]))


@click.command(short_help="Test accuracy of the kernel-regression prediction f_∞ (Fig. 2).")
@click.option("--fim", "fims", cls=FimOption, default="exact,bd,tridiag,kfac", show_default=True, help="Comma-separated approximations:")
@click.option("--kernel", type=click.Choice(["analytic", "empirical"]), default="analytic", show_default=True,
              help="Θ̄ from the infinite-width kernels or from a finite network.")
@click.option("--seeds", default=10, show_default=True, type=click.IntRange(min=1),
              help="Initialisations (f_0 draws), seeds --seed, --seed + 1, ….")
@click.option("--damping", default=None, type=FiniteFloat(min=0),
              help="ρ >= 0 for --kernel empirical. Default: each approximation's own, as in train "
                   "(0; 1e-12 for unit).")
@option_flag
@network_options(default_sigma_b2=0.0, width_note=" For --kernel empirical (the analytic Θ̄ is the infinite-width limit).")
@data_options(default_n_train=800, default_n_test=200)
@json_option
@click.pass_obj
@handle_errors
def predict(settings, fims, kernel, seeds, damping, raw_options, depth, width, activation, shift, sigma_w2, sigma_b2,
            data, classes, n_train, n_test, input_dim, json_path):
    """Test accuracy of the trained model's kernel-regression prediction f_∞ (Section 4.4, Fig. 2)."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from ngdref.experiments.prediction import prediction_study

    names = check_fim_names(parse_str_list(fims))
    options = options_by_fim(names, parse_option_pairs(raw_options))
    if damping is not None and kernel != "empirical":
        raise UserError("--damping applies to --kernel empirical only (the analytic Θ̄ is the ρ → 0 limit)")
    if given("width") and kernel != "empirical":
        raise UserError("--width applies to --kernel empirical only (the analytic Θ̄ is the infinite-width limit)")
    if n_test < 1:
        raise UserError("predictions need test samples (--n-test >= 1)")
    if kernel != "empirical" and settings.given & {"backend", "dtype"}:
        raise UserError("--backend and --dtype apply to --kernel empirical only (the analytic kernels are "
                        "float64 NumPy on the host); drop them")
    backend = settings.backend() if kernel == "empirical" else None
    ds = load_data(data, classes, n_train, n_test, input_dim, settings.seed)
    net = build_network(ds, width, depth, activation, shift, sigma_w2, sigma_b2)
    if backend is not None:
        check_params_fit(net, backend.dtype_name)
    with progress_bar(TextColumn("[bold]predict"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=consoles("-")) as bar:
        task = bar.add_task("", total=seeds)
        rep = prediction_study(net, ds, names, kernel, seeds, backend, damping, progress=lambda k: bar.advance(task),
                               fim_options=options, first_seed=settings.seed)
    con = consoles(json_path)
    fmt = (lambda v: "—" if v is None else f"{v:.4f}")
    sci = {"alpha": (lambda v: "—" if v is None else f"{v:.6g}"),  # α as the alpha command prints it
           "isotropy_deviation": (lambda v: "—" if v is None else f"{v:.3g}")}
    methods = rep.get("methods") or {}  # the analytic Θ̄'s α and isotropy check (none for --kernel empirical)
    header = ["fim", "mean", "± std", "f₀=0"] + (["α", "isotropy"] if methods else []) + ["note"]
    rows = [[r["fim"], fmt(r["mean"]), fmt(r["std"]), fmt(r["f0_zero"])]
            + ([sci[k](methods.get(r["fim"], {}).get(k)) for k in ("alpha", "isotropy_deviation")] if methods else [])
            + [escape(r.get("error", ""))] for r in rep["rows"]]
    print_table(con, f"Test accuracy of f_∞, {kernel} Θ̄, {ds.name} classes {list(ds.classes)}, "
                     f"N = {ds.n_train}, N' = {ds.n_test}, {seeds} initialisations",
                header, rows, justify=["right"] * (len(header) - 1) + ["left"])
    check = next((m["isotropy_check"] for m in methods.values() if m.get("isotropy_check")), None)
    if check:
        con.print(f"isotropy: {check}")
    config = run_config(settings, backend, fim=names, option=options, network=net.to_dict(), dataset=ds.to_dict(),
                        initialisations=rep["initialisations"])
    emit_json(json_path, json_document("predict", config, rep["rows"], methods=rep["methods"]))
