"""``ngdref alpha`` and ``ngdref predict`` (thin: parsing and printing only)."""

from __future__ import annotations

import click
from rich.table import Table

from .common import (
    UserError,
    build_network,
    consoles,
    emit_json,
    handle_errors,
    json_option,
    network_options,
    parse_str_list,
)


def _check_fims(names):
    from ngdref.fisher import FISHER_NAMES

    bad = [n for n in names if n not in FISHER_NAMES]
    if bad:
        raise UserError(f"unknown --fim {', '.join(bad)}; choose from {', '.join(FISHER_NAMES)}")


@click.command()
@click.option("--fim", "fims", default="exact,bd,tridiag,kfac,unit", show_default=True, help="Comma-separated approximations.")
@click.option("--n-train", default=100, show_default=True, type=int, help="N (K-FAC's α depends on it).")
@click.option("--input-dim", default=784, show_default=True, type=int, help="M0.")
@click.option("--outputs", default=1, show_default=True, type=int, help="C.")
@network_options()
@json_option
@click.pass_obj
@handle_errors
def alpha(settings, fims, n_train, input_dim, outputs, depth, width, activation, shift, sigma_w2, sigma_b2, json_path):
    """Analytic α of the isotropic condition Θ̄ = αI per approximation, with q_l and γ_l (S.128–S.141)."""
    from ngdref.experiments.alpha_report import alpha_report

    names = parse_str_list(fims)
    _check_fims(names)
    net = build_network(input_dim, width, depth, activation, shift, sigma_w2, sigma_b2, outputs)
    rep = alpha_report(net, names, n_train)
    con = consoles(json_path)
    t1 = Table(title=f"Order parameters, {activation}, L = {depth}, M = {width}")
    for c in ("layer", "M_l", "q_l", "γ_l", "γ_l M_l"):
        t1.add_column(c, justify="right")
    for r in rep["layers"]:
        t1.add_row(str(r["layer"]), str(r["width"]), f"{r['q']:.6g}", f"{r['gamma']:.6g}", f"{r['gamma_times_width']:.6g}")
    t2 = Table(title=f"Analytic α (N = {n_train})")
    for c in ("fim", "α", "α / M", "note"):
        t2.add_column(c, justify="right" if c != "note" else "left")
    for r in rep["rows"]:
        t2.add_row(r["fim"], "—" if r["alpha"] is None else f"{r['alpha']:.6g}",
                   "—" if r["alpha_over_width"] is None else f"{r['alpha_over_width']:.6g}", r["note"])
    con.print(t1)
    con.print(t2)
    emit_json(json_path, {"command": "alpha", **rep})
