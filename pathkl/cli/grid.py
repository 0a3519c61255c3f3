"""``pathkl grid``: the best K-step time grid for one covariance family, and its exact path KL."""

from __future__ import annotations

import argparse

from .common import (
    JSON_HELP,
    add_family_option,
    add_reference_options,
    check_output_path,
    format_estimate,
    formatter,
    positive_float,
    positive_int,
    print_json,
    reference_from,
    warn,
    write_atomically,
)

_EXAMPLES = """
Chooses the K levels 0 = tau_0 < ... < tau_K = 1 of a sampling grid for one covariance family and
prints them with the grid's exact path KL (terminal + steps, as pathkl kl), the uniform K-step grid's
and their ratio.
  --method dp          the best K-step subsequence of N + 1 candidate levels tau = k/N (or (k/N)^2
                       with --spacing quadratic, finer at low noise; for ddpm-linear: the indices of
                       the chain of length N), exactly, by dynamic programming over the pair costs
                       (each step's KL depends on its two levels only); also prints how far the chosen grid can be from the true optimum given
                       the pair costs' errors (0 up to rounding for Gaussians)
  --method asymptotic  the grid of density rho ~ (beta^(p+1) E||D||^2)^(1/(p+1)), the minimiser of the
                       leading term of an order-p family (docs/grids.md)
Pair costs: Gaussian references in closed form (N = 1000 by default, seconds); mixtures through the
engine, one two-level grid per pair (N = 32 by default; N(N+1)/2 quadratures: raise --rtol to go faster).
--save FILE writes the taus (or chain indices), ready for 'pathkl kl --taus @FILE' (or '--indices @FILE').

examples:
  pathkl grid --ref gaussian-5d --cov analytic --steps 10
  pathkl grid --ref image-3x64x64 --cov diag --steps 25 --save grid.txt
  pathkl kl --ref image-3x64x64 --cov diag --taus @grid.txt
  pathkl grid --ref gaussian-5d --schedule ddpm-linear --cov beta --steps 10 --json
  pathkl grid --ref mog-rotated --cov full --steps 8 --candidates 24 --spacing quadratic --rtol 1e-4
  pathkl grid --ref gaussian-5d --cov analytic --steps 10 --method asymptotic
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "grid", help="optimal K-step time grid of one covariance family", description=__doc__,
        epilog=_EXAMPLES, formatter_class=formatter,
    )
    add_reference_options(p, default_ref="gaussian-5d")
    add_family_option(p)
    p.add_argument("--steps", type=positive_int, default=10, help="K, the number of steps of the grid (default: 10)")
    p.add_argument("--method", default="dp", choices=("dp", "asymptotic"), help="how to choose it (default: dp)")
    p.add_argument("--candidates", type=positive_int, default=None,
                   help="N: candidate levels tau = k/N (ddpm-linear: the chain length); "
                        "default 1000 for Gaussian references, 32 otherwise")
    p.add_argument("--spacing", default="uniform", choices=("uniform", "quadratic"),
                   help="candidate lattice: tau = k/N, or (k/N)^2, finer at low noise (default: uniform)")
    p.add_argument("--rtol", type=positive_float, default=1e-6,
                   help="relative error the quadrature climbs to, mixtures in d <= 3 (default: 1e-6)")
    p.add_argument("--save", help="write the grid's taus (ddpm-linear: chain indices) to this .txt file")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..families import get_family
    from ..optimal_grid import choose_grid
    from ..schedules import get_schedule

    out = None if args.save is None else check_output_path(args.save, (".txt",))
    family = get_family(args.cov)
    result = choose_grid(reference_from(args), get_schedule(args.schedule), family, args.steps, method=args.method,
                         candidates=args.candidates, spacing=args.spacing, rtol=args.rtol)
    summary = {"ref": args.ref, "schedule": args.schedule, "cov": family.name, **result.as_dict()}
    levels = summary.get("indices", summary["taus"])
    line = ", ".join(repr(v) for v in levels)
    if out is not None:
        write_atomically(out, lambda path: path.write_text(line + "\n"))
    if not (result.kl.met_rtol and result.uniform.met_rtol):
        warn("a KL's error is above rtol x its value")
    if args.json:
        print_json(summary)
        return 0
    how = f"dp over N = {result.candidates} candidate steps" if result.best else "asymptotic density"
    print(f"{family.name} on {args.ref}, {args.schedule}, K = {args.steps} ({how})")
    print(f"  {'indices' if 'indices' in summary else 'taus'}  {line}")
    print(f"  KL       {format_estimate(result.kl.total, result.kl.total_error)}")
    print(f"  uniform  {format_estimate(result.uniform.total, result.uniform.total_error)}")
    print(f"  ratio    {result.ratio:.6g}")
    if result.best:
        print(f"  within   {result.best.regret_bound:.2g} of the best grid through the candidates (pair-cost errors)")
    return 0
