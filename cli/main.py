"""The ``ngdref`` command line: thin wrappers around :mod:`ngdref` (no math here)."""

from __future__ import annotations

import click

from ngdref import __version__
from ngdref.backend import BACKENDS, DTYPES

from .common import (
    OneLineGroup,
    Settings,
    build_network,
    check_params_fit,
    consoles,
    data_options,
    emit_json,
    handle_errors,
    json_option,
    load_data,
    network_options,
    print_table,
)


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ngdref")
@click.option("--backend", type=click.Choice(BACKENDS), default=None, help="Array backend (default: $NGDREF_BACKEND or numpy).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float64", show_default=True, help="Floating dtype.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed (>= 0) of the initialisation and the data split.")
@click.pass_context
def cli(ctx, backend, dtype, seed):
    """Approximate-Fisher natural gradient in wide networks (Karakida & Osawa, NeurIPS 2020)."""
    ctx.obj = Settings(backend, dtype, seed)


@cli.command()
@network_options()
@data_options(test=False)
@click.option("--explicit", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
              help="Also form J explicitly (auto: when it fits in memory).")
@json_option
@click.pass_obj
@handle_errors
def ntk(settings, depth, width, activation, shift, sigma_w2, sigma_b2, data, classes, n_train, input_dim, explicit, json_path):
    """Spectrum and condition number of the empirical NTK Θ = J Jᵀ/N (Eq. 6) on the training inputs."""
    from ngdref.experiments.ntk_report import ntk_report

    backend = settings.backend()
    ds = load_data(data, classes, n_train, 0, input_dim, settings.seed)
    net = build_network(ds, width, depth, activation, shift, sigma_w2, sigma_b2)
    check_params_fit(net, backend.dtype_name)
    report = ntk_report(net, ds.x_train, settings.seed, backend, explicit)
    report.update({"data": ds.to_dict(), "backend": backend.name, "dtype": backend.dtype_name, "seed": settings.seed})
    con = consoles(json_path)
    print_table(con, f"Empirical NTK, {ds.name} N={ds.n_train}, widths {list(net.widths)}",
                ("path", "λ_min", "λ_max", "cond", "mean diag", "seconds"),
                [[key, f"{r['lambda_min']:.4g}", f"{r['lambda_max']:.4g}", f"{r['condition_number']:.4g}",
                  f"{r['mean_diagonal']:.4g}", f"{r['seconds']:.3f}"]
                 for key, r in ((k, report.get(k)) for k in ("structured", "explicit")) if r])
    if "max_relative_difference" in report:
        con.print(f"max |structured − explicit| / max |explicit| = {report['max_relative_difference']:.2e}")
    if "explicit_skipped" in report:
        con.print(f"explicit path skipped: {report['explicit_skipped']}")
    emit_json(json_path, report)


from .kernel_cmd import alpha, predict  # noqa: E402
from .train_cmd import isotropy, train  # noqa: E402

cli.add_command(train)
cli.add_command(isotropy)
cli.add_command(alpha)
cli.add_command(predict)
from .reproduce_cmd import reproduce  # noqa: E402
cli.add_command(reproduce)


def main():  # console script entry point
    cli(prog_name="ngdref")


if __name__ == "__main__":  # pragma: no cover
    main()
