"""``pathkl rates``: convergence of the path KL in T, per covariance family."""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from .common import (
    FAMILY_NAMES,
    JSON_HELP,
    add_reference_options,
    check_output_path,
    formatter,
    parse_integer,
    parse_number_list,
    positive_float,
    positive_int,
    print_json,
    reference_from,
    warn,
    write_atomically,
)

_DEFAULT_COVS = "beta,analytic,diag,full"
_DEFAULT_STEPS = "32,64,128,256,512"
_DEFAULT_REF = "mog-1d"
_PLOT_SUFFIXES = (".pdf", ".png", ".svg")

_EXAMPLES = f"""
For each family: the KL 'steps' at each T of the ladder, the fitted order s (steps ~ T^s) with a 95%
interval (log-log least squares on the tail with a 1/T Richardson term), and the leading constant
lim T^p steps measured (Richardson-extrapolated, with its error) against the closed-form prediction
coefficient * int beta(tau)^(p+1) E||D||^2 dtau (p = 1 for beta, analytic, diag; p = 2 for full).
beta_tilde is summed from t = 2 (its t = 1 step is infinite) and claims no vanishing rate.

examples:
  pathkl rates                                     # {_DEFAULT_REF}, vp-linear, {_DEFAULT_COVS}
  pathkl rates --ref image-3x64x64 --schedule cosine --cov beta,analytic --steps 100,200,400,800
  pathkl rates --ref gaussian-5d --cov analytic,full --steps 64,128,256,512,1024 --json
  pathkl rates --plot rates.pdf
  pathkl rates --ref mog-rotated --steps 64,128,256,512,1024,2048,4096 --jobs 2   # the T on 2 cores
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rates", help="fitted convergence orders and leading constants", description=__doc__,
        epilog=_EXAMPLES, formatter_class=formatter,
    )
    add_reference_options(p, default_ref=_DEFAULT_REF)
    p.add_argument("--cov", default=_DEFAULT_COVS,
                   help=f"comma-separated families from {', '.join(FAMILY_NAMES)} (default: {_DEFAULT_COVS})")
    p.add_argument("--steps", default=_DEFAULT_STEPS,
                   help=f"ladder of T, increasing, at least 4 values (default: {_DEFAULT_STEPS})")
    p.add_argument("--rtol", type=positive_float, default=1e-6,
                   help="relative error each KL's quadrature climbs to, mixtures in d <= 3 (default: 1e-6)")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="processes to run the T of the ladder in, the largest first; the KLs do not depend "
                        "on it (default: 1)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("--plot", metavar="FILE", help="also write a log-log plot (.pdf, .png or .svg)")
    p.set_defaults(func=run)


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{text:<60}\r" if not text else f"\r{text}   ")


def _print_table(rows: list[dict], header: str) -> None:
    print(header)
    ladder = rows[0]["T"]
    print(f"{'family':<11}" + "".join(f"{'T=' + str(t):>12}" for t in ladder))
    for row in rows:
        print(f"{row['cov']:<11}" + "".join(f"{k:>12.4e}" for k in row["kl"]))
        print(f"{'  +-':<11}" + "".join(f"{e:>12.1e}" for e in row["kl_error"]))
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
    names = [name.strip() for name in args.cov.split(",") if name.strip()]
    if not names:
        raise InputError(f"--cov names no family; give a comma-separated list from {', '.join(FAMILY_NAMES)}")
    ladder = parse_number_list(args.steps, parse_integer, "--steps")
    plot_path = check_output_path(args.plot, _PLOT_SUFFIXES) if args.plot else None

    from ..families import get_family
    from ..rates import ladder_rates
    from ..schedules import get_schedule

    families = [get_family(name) for name in names]
    schedule = get_schedule(args.schedule)
    reference = reference_from(args)
    results = ladder_rates(reference, schedule, families, ladder, rtol=args.rtol, jobs=args.jobs,
                           progress=lambda done, n: _progress(f"T done: {done}/{n}"))
    rows = [rates.as_dict() for rates in results]
    for rates in results:
        if not rates.met_rtol:
            warn(f"{rates.family.name}: some KL errors are above rtol = {args.rtol:g} (kl_error in --json)")
    _progress("")
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
