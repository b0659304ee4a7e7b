"""The ``ngdref`` command line: thin wrappers around :mod:`ngdref` (no math here)."""

from __future__ import annotations

import click

from ngdref import __version__

from .common import (
    SETTINGS,
    OneLineGroup,
    Settings,
    build_network,
    check_params_fit,
    consoles,
    data_options,
    emit_json,
    handle_errors,
    json_document,
    json_option,
    load_data,
    network_options,
    print_table,
    run_config,
    settings_options,
)

_DEFAULT_SOURCES = (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ngdref")
@settings_options
@click.pass_context
def cli(ctx, backend, dtype, seed):
    """Approximate-Fisher natural gradient in wide networks (Karakida & Osawa, NeurIPS 2020).

    --backend, --dtype and --seed may also follow the command (ngdref train --seed 1); there they win.
    """
    given = [name for name in SETTINGS if ctx.get_parameter_source(name) not in _DEFAULT_SOURCES]
    ctx.obj = Settings(backend, dtype, seed, given)


@cli.command(short_help="Spectrum and condition number of the empirical NTK (Eq. 6).")
@network_options()
@data_options(test=False)
@click.option("--explicit", type=click.Choice(["no", "auto", "yes"]), default="no", show_default=True,
              help="Also form J explicitly and compare (auto: when it fits in memory). The structured path "
                   "agrees with it to ~1e-15 and is far faster.")
@json_option
@click.pass_obj
@handle_errors
def ntk(settings, depth, width, activation, shift, sigma_w2, sigma_b2, data, classes, n_train, input_dim, explicit, json_path):
    """Spectrum and condition number of the empirical NTK Θ = J Jᵀ/N (Eq. 6) on the training inputs,
    from the backward signals (S.68); --explicit also forms J and compares."""
    from ngdref.experiments.ntk_report import ntk_report

    backend = settings.backend()
    ds = load_data(data, classes, n_train, 0, input_dim, settings.seed)
    net = build_network(ds, width, depth, activation, shift, sigma_w2, sigma_b2)
    check_params_fit(net, backend.dtype_name)
    report = ntk_report(net, ds.x_train, settings.seed, backend, explicit)
    rows = [{"path": key, **report[key]} for key in ("structured", "explicit") if report.get(key)]
    con = consoles(json_path)
    print_table(con, f"Empirical NTK, {ds.name} N={ds.n_train}, widths {list(net.widths)}",
                ("path", "λ_min", "λ_max", "cond", "mean diag", "seconds"),
                [[r["path"], f"{r['lambda_min']:.4g}", f"{r['lambda_max']:.4g}", f"{r['condition_number']:.4g}",
                  f"{r['mean_diagonal']:.4g}", f"{r['seconds']:.3f}"] for r in rows])
    if "max_relative_difference" in report:
        con.print(f"max |structured − explicit| / max |explicit| = {report['max_relative_difference']:.2e}")
    if "explicit_skipped" in report:
        con.print(f"explicit path skipped: {report['explicit_skipped']}")
    extra = {k: report[k] for k in ("max_relative_difference", "explicit_skipped") if k in report}
    config = run_config(settings, backend, network=net.to_dict(), dataset=ds.to_dict())
    emit_json(json_path, json_document("ntk", config, rows, n_samples=report["n_samples"], **extra))


from .kernel_cmd import alpha, predict  # noqa: E402
from .train_cmd import isotropy, train  # noqa: E402

cli.add_command(train)
cli.add_command(isotropy)
cli.add_command(alpha)
cli.add_command(predict)
from .reproduce_cmd import reproduce  # noqa: E402
cli.add_command(reproduce)
from .spectrum_cmd import spectrum  # noqa: E402
cli.add_command(spectrum)


def main():  # console script entry point
    cli(prog_name="ngdref")


if __name__ == "__main__":  # pragma: no cover
    main()
