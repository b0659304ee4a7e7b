"""``ngdref spectrum`` (thin: parsing and printing only; the math is ngdref.experiments.spectrum)."""

from __future__ import annotations

import click

from . import common


def _fmt(v, spec=".10g"):
    return "—" if v is None else format(v, spec)


@click.command(short_help="Top eigenvalues of G, G⁻¹F or Θ̄ by matrix-free Lanczos (Eq. 11).")
@common.single_fim_options("bd")
@click.option("--of", "of", type=click.Choice(["G-inverse-F", "G", "theta-bar"]), default="G-inverse-F",
              show_default=True,
              help="G-inverse-F: G⁻¹F (F = JᵀJ/N), whose nonzero spectrum is Θ̄'s; G: the damped G; "
                   "theta-bar: Θ̄(x, x) from coefficient (CN × CN, eigh).")
@click.option("--top", "-k", default=None, type=click.IntRange(min=1),
              help="Number of eigenvalues (largest magnitude). Default: 5, at most CN for G-inverse-F and theta-bar "
                   "(whose nonzero spectrum has CN values). The condition number is printed only for --top CN "
                   "(the whole nonzero spectrum); otherwise λ₁/λ_k of the top k.")
@common.network_options()
@common.data_options(test=False)
@common.json_option
@click.pass_obj
@common.handle_errors
def spectrum(settings, fim, of, top, damping, raw_options, depth, width, activation, shift, sigma_w2, sigma_b2, data,
             classes, n_train, input_dim, json_path):
    """Top-k eigenvalues of G, of the preconditioned Fisher G⁻¹F or of Θ̄(x, x) (Eq. 11) on the training
    inputs, by Lanczos/Arnoldi (SciPy eigsh/eigs) on the matrix-free operator: G and J are never formed.

    Checks the parameter-space form of the isotropic condition (Eq. 12): for an isotropic approximation
    the nonzero spectrum of G⁻¹F is α·1 (condition number 1)."""
    from ngdref.errors import NgdrefError
    from ngdref.experiments.spectrum import check_request, spectrum_report
    from ngdref.fisher import fisher_class

    (fim,) = common.check_fim_names([fim], one=True)
    options = common.options_by_fim([fim], common.parse_option_pairs(raw_options))[fim]
    backend = settings.backend()
    ds = common.load_data(data, classes, n_train, 0, input_dim, settings.seed)
    net = common.build_network(ds, width, depth, activation, shift, sigma_w2, sigma_b2)
    common.check_params_fit(net, backend.dtype_name)
    try:  # every user error before the network is drawn
        top = check_request(net, ds.n_train, of, top)
        fisher_class(fim).spec.resolve_damping(damping)
    except NgdrefError as err:
        raise common.UserError(str(err)) from None
    rec = spectrum_report(net, fim, ds.x_train, settings.seed, backend, of, top, damping, options)
    con = common.consoles(json_path)
    label = {"G-inverse-F": "G⁻¹F", "G": "G", "theta-bar": "Θ̄(x, x)"}[of]
    alpha = rec["alpha_analytic"]
    rows = [{"k": i + 1, "lambda": v, "lambda_over_alpha": r}
            for i, (v, r) in enumerate(zip(rec["eigenvalues"], rec["eigenvalues_over_alpha"]))]
    con.print(f"{ds.name}, N = {ds.n_train}, widths {list(net.widths)}, P = {net.n_params}")
    common.print_table(con, f"Top {top} eigenvalues of {label}, {fim} (ρ = {rec['damping']:g})", ("k", "λ_k", "λ_k/α"),
                       [[str(r["k"]), _fmt(r["lambda"]), _fmt(r["lambda_over_alpha"])] for r in rows])
    con.print(f"method: {rec['method']}; {rec['seconds']:.2f} s")
    if of != "G":
        con.print(f"checked: {rec['statement']}.")
        if rec["whole_nonzero_spectrum"]:
            scope, ratio = "the whole nonzero spectrum", f"cond = {rec['condition_number']:.10g}"
        else:
            cn = net.n_outputs * ds.n_train
            scope = f"the top {top} of CN = {cn}"
            ratio = f"λ₁/λ_{top} (top {top}; the condition number needs --top {cn}) = {rec['top_ratio']:.10g}"
        if alpha is not None:
            con.print(f"measured ({scope}): {ratio}, α analytic = {alpha:.10g}, "
                      f"max |λ/α − 1| = {rec['max_relative_deviation_from_alpha']:.3e}")
        else:
            con.print(f"measured ({scope}): {ratio}; no analytic α for {fim} "
                      f"({rec['alpha_note'] or 'see its spec'})")
    summary = {k: v for k, v in rec.items() if k not in ("eigenvalues", "eigenvalues_over_alpha")}
    config = common.run_config(settings, backend, option=options, network=net.to_dict(), dataset=ds.to_dict())
    common.emit_json(json_path, common.json_document("spectrum", config, rows, spectrum=summary))
