"""``pathkl rates``: convergence of the path KL in T, per covariance family."""

from __future__ import annotations

import argparse
import sys

from ..covariances import FAMILIES, get_family
from ..errors import InputError
from ..mixture_mc import uses_monte_carlo
from ..pathspace import path_kl
from ..rates import fit_order, measured_constant, predicted_constant
from ..schedules import get_schedule
from .common import (
    JSON_HELP,
    add_reference_options,
    check_output_path,
    formatter,
    parse_number_list,
    print_json,
    reference_from,
    write_atomically,
)

_DEFAULT_COVS = "beta,analytic,diag,full"
_DEFAULT_STEPS = "64,128,256,512,1024,2048,4096"
_PLOT_SUFFIXES = (".pdf", ".png", ".svg")

_EXAMPLES = f"""
For each family: the KL 'steps' at each T of the ladder, the fitted order s (steps ~ T^s) with a 95%
interval (log-log least squares on the tail with a 1/T Richardson term), and the leading constant
lim T^p steps measured (Richardson-extrapolated, with its error) against the closed-form prediction
coefficient * int beta(tau)^(p+1) E||D||^2 dtau (p = 1 for beta, analytic, diag; p = 2 for full).
beta_tilde is summed from t = 2 (its t = 1 step is infinite) and claims no vanishing rate.

examples:
  pathkl rates                                     # gaussian-5d, vp-linear, {_DEFAULT_COVS}
  pathkl rates --ref image-3x64x64 --schedule cosine --cov beta,analytic --steps 100,200,400,800
  pathkl rates --cov analytic,full --steps 64,128,256,512,1024 --json
  pathkl rates --plot rates.pdf
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rates", help="fitted convergence orders and leading constants", description=__doc__,
        epilog=_EXAMPLES, formatter_class=formatter,
    )
    add_reference_options(p, default_ref="gaussian-5d")
    p.add_argument("--cov", default=_DEFAULT_COVS,
                   help=f"comma-separated families from {', '.join(FAMILIES)} (default: {_DEFAULT_COVS})")
    p.add_argument("--steps", default=_DEFAULT_STEPS,
                   help=f"ladder of T, increasing, at least 4 values (default: {_DEFAULT_STEPS})")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("--plot", metavar="FILE", help="also write a log-log plot (.pdf, .png or .svg)")
    p.set_defaults(func=run)


def family_rates(reference, schedule, family, ladder: list[int]) -> dict:
    """The ladder of ``steps`` values with the fitted order and the constants, as one JSON object."""
    first = 1 if family.order is not None else 2
    kls, errs = [], []
    for i, steps in enumerate(ladder):
        if sys.stderr.isatty():
            sys.stderr.write(f"\r{family.name}: T = {steps} ({i + 1}/{len(ladder)})   ")
        result = path_kl(reference, schedule.grid(steps), family, first_step=first)
        kls.append(result.steps)
        errs.append(result.steps_stderr)
    fit = fit_order(ladder, kls)
    row = {"cov": family.name, "order_declared": family.order, "first_step": first, "steps": ladder,
           "kl": kls, "kl_stderr": errs, "slope": None, "slope_ci": None, "constant": None,
           "constant_error": None, "constant_predicted": None, "constant_predicted_error": None}
    if fit is not None:
        row.update(slope=fit.slope, slope_ci=list(fit.interval))
    if family.order is not None:
        measured = measured_constant(ladder, kls, family.order)
        predicted = predicted_constant(family, reference, schedule)
        row.update(constant=measured.value, constant_error=measured.error,
                   constant_predicted=predicted.value, constant_predicted_error=predicted.error)
    return row


def _print_table(rows: list[dict], header: str) -> None:
    print(header)
    ladder = rows[0]["steps"]
    print(f"{'family':<11}" + "".join(f"{'T=' + str(t):>12}" for t in ladder))
    for row in rows:
        print(f"{row['cov']:<11}" + "".join(f"{k:>12.4e}" for k in row["kl"]))
    print()
    print(f"{'family':<11}{'order':>6}  {'fitted slope [95% interval]':<31}{'T^p steps (extrap.)':>24}{'predicted':>14}")
    for row in rows:
        slope = "exact: KL = 0" if row["slope"] is None and all(k == 0 for k in row["kl"]) else (
            f"{row['slope']:.4f} [{row['slope_ci'][0]:.4f}, {row['slope_ci'][1]:.4f}]")
        order = "-" if row["order_declared"] is None else f"-{row['order_declared']}"
        if row["constant"] is None:
            const = f"{'n/a (no vanishing rate)':>38}"
        else:
            const = f"{row['constant']:>14.6g} +- {row['constant_error']:<7.1g}{row['constant_predicted']:>14.6g}"
        print(f"{row['cov']:<11}{order:>6}  {slope:<31}{const}")


def run(args: argparse.Namespace) -> int:
    families = [get_family(name) for name in args.cov.split(",") if name]
    ladder = parse_number_list(args.steps, int, "--steps")
    if len(ladder) < 4 or any(t < 1 for t in ladder) or ladder != sorted(set(ladder)):
        raise InputError("--steps needs at least 4 strictly increasing integers >= 1")
    plot_path = check_output_path(args.plot, _PLOT_SUFFIXES) if args.plot else None
    reference, schedule = reference_from(args), get_schedule(args.schedule)
    if uses_monte_carlo(reference):
        raise InputError(f"{args.ref}: a mixture in d > 3 has Monte Carlo step KLs and no quadrature for the "
                         "predicted constants; pathkl rates needs d <= 3 blocks (use pathkl kl per T, with its SE)")
    rows = [family_rates(reference, schedule, family, ladder) for family in families]
    if sys.stderr.isatty():
        sys.stderr.write("\r" + " " * 60 + "\r")
    if plot_path is not None:
        from ..rateplot import plot_rates

        write_atomically(plot_path, lambda tmp: plot_rates(rows, tmp, title=f"{args.ref}, {args.schedule}"))
    if args.json:
        print_json(rows)
    else:
        _print_table(rows, f"path KL 'steps' on {args.ref}, {args.schedule}")
        if plot_path is not None:
            print(f"\nplot written to {plot_path}")
    return 0
