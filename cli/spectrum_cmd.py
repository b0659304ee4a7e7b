"""``ngdref spectrum`` (thin: parsing and printing only; the math is ngdref.experiments.spectrum)."""

from __future__ import annotations

import click

from .common import (
    FiniteFloat,
    FimOption,
    UserError,
    build_network,
    check_fim_names,
    check_params_fit,
    consoles,
    data_options,
    emit_json,
    handle_errors,
    json_document,
    json_option,
    load_data,
    network_options,
    option_flag,
    options_by_fim,
    parse_option_pairs,
    print_table,
    run_config,
)


def _fmt(v, spec=".10g"):
    return "—" if v is None else format(v, spec)


@click.command(short_help="Top eigenvalues of G, G⁻¹F or Θ̄ by Lanczos on the matrix-free operator.")
@click.option("--fim", cls=FimOption, default="bd", show_default=True, help="Fisher approximation:")
@click.option("--of", "of", type=click.Choice(["G-inverse-F", "G", "theta-bar"]), default="G-inverse-F",
              show_default=True,
              help="G-inverse-F: G⁻¹F (F = JᵀJ/N), whose nonzero spectrum is Θ̄'s; G: the damped G; "
                   "theta-bar: Θ̄(x, x) from coefficient (CN × CN, eigh).")
@click.option("--top", "-k", default=None, type=click.IntRange(min=1),
              help="Number of eigenvalues (largest magnitude). Default: 5, at most CN for G-inverse-F and theta-bar "
                   "(whose nonzero spectrum has CN values).")
@click.option("--damping", default=None, type=FiniteFloat(min=0),
              help="ρ >= 0 (0 = pseudo-inverse). Default: each approximation's own (0; 1e-12 for unit).")
@option_flag
@network_options()
@data_options(test=False)
@json_option
@click.pass_obj
@handle_errors
def spectrum(settings, fim, of, top, damping, raw_options, depth, width, activation, shift, sigma_w2, sigma_b2, data,
             classes, n_train, input_dim, json_path):
    """Top-k eigenvalues of G, of the preconditioned Fisher G⁻¹F or of Θ̄(x, x) (Eq. 11) on the training
    inputs, by Lanczos/Arnoldi (SciPy eigsh/eigs) on the matrix-free operator: G and J are never formed.

    Checks the parameter-space form of the isotropic condition (Eq. 12): for an isotropic approximation
    the nonzero spectrum of G⁻¹F is α·1 (condition number 1)."""
    from ngdref.errors import NgdrefError
    from ngdref.experiments.spectrum import check_request, spectrum_report
    from ngdref.fisher import fisher_class

    (fim,) = check_fim_names([fim])
    options = options_by_fim([fim], parse_option_pairs(raw_options))[fim]
    backend = settings.backend()
    ds = load_data(data, classes, n_train, 0, input_dim, settings.seed)
    net = build_network(ds, width, depth, activation, shift, sigma_w2, sigma_b2)
    check_params_fit(net, backend.dtype_name)
    try:  # every user error before the network is drawn
        top = check_request(net, ds.n_train, of, top)
        fisher_class(fim).spec.resolve_damping(damping)
    except NgdrefError as err:
        raise UserError(str(err)) from None
    rec = spectrum_report(net, fim, ds.x_train, settings.seed, backend, of, top, damping, options)
    con = consoles(json_path)
    label = {"G-inverse-F": "G⁻¹F", "G": "G", "theta-bar": "Θ̄(x, x)"}[of]
    alpha = rec["alpha_analytic"]
    rows = [[str(i + 1), _fmt(v), _fmt(v / alpha if alpha else None, ".10f")] for i, v in enumerate(rec["eigenvalues"])]
    con.print(f"{ds.name}, N = {ds.n_train}, widths {list(net.widths)}, P = {net.n_params}")
    print_table(con, f"Top {top} eigenvalues of {label}, {fim} (ρ = {rec['damping']:g})", ("k", "λ_k", "λ_k / α"), rows)
    con.print(f"method: {rec['method']}; {rec['seconds']:.2f} s")
    if of != "G":
        con.print(f"checked: {rec['statement']}.")
        scope = "the whole nonzero spectrum" if rec["whole_nonzero_spectrum"] else f"the top {top} of CN = {net.n_outputs * ds.n_train}"
        if alpha is not None:
            con.print(f"measured ({scope}): cond = {rec['condition_number']:.10g}, α analytic = {alpha:.10g}, "
                      f"max |λ/α − 1| = {rec['max_relative_deviation_from_alpha']:.3e}")
        else:
            con.print(f"measured ({scope}): cond = {rec['condition_number']:.10g}; no analytic α for {fim} "
                      f"({rec['alpha_note'] or 'see its spec'})")
    config = run_config(settings, backend, option=options, network=net.to_dict(), dataset=ds.to_dict())
    emit_json(json_path, json_document("spectrum", config, [rec]))
