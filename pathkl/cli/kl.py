"""``pathkl kl``: the path-space KL of one covariance family on one grid."""

from __future__ import annotations

import argparse

from .common import (
    JSON_HELP,
    MC_INNER,
    MC_OUTER,
    add_family_option,
    add_reference_options,
    format_estimate,
    formatter,
    make_grid,
    positive_float,
    positive_int,
    print_json,
    reference_from,
    warn,
)

_EXAMPLES = """
The path-space KL between the exact reverse chain q(x_{0:T}) and the Gaussian reverse model p with the
exact mean and the chosen covariance, in three parts:
  terminal  KL(q_T || N(0, I))
  steps     sum over t of E_{x_t ~ q_t} KL(q(x_{t-1}|x_t) || p(x_{t-1}|x_t))
  total     terminal + steps
Every part is printed as value +- error, the absolute error pathkl vouches for (docs/errors.md):
  Gaussians          closed form; the error is a rounding bound
  mixtures, d <= 3   quadrature: each step climbs a ladder of paired rules until its a-posteriori
                     error (outer rule, inner rule and skipped points) is within --rtol of it
  mixtures, d > 3    Monte Carlo with control variates: the error is the 95% interval's half-width;
                     --seed and --mc-samples fix the draws (same options, same output)
Where the error cannot be brought within --rtol a warning goes to stderr and the JSON says
"met_rtol": false; the error printed is still the one the engine has.
beta_tilde has beta~_1 = 0, so its step t = 1 (and total) is +inf; --first-step 2 sums from t = 2.

examples:
  pathkl kl --ref gaussian-5d --cov analytic --steps 1000
  pathkl kl --ref image-3x64x64 --schedule cosine --cov diag --steps 1000 --json
  pathkl kl --ref gaussian-2d --cov beta --taus 0,0.1,0.3,0.6,1
  pathkl kl --ref gaussian-5d --schedule ddpm-linear --cov beta --indices 0,100,250,500,1000
  pathkl kl --ref gaussian-5d --cov beta_tilde --steps 100 --first-step 2
  pathkl kl --ref mog-rotated --cov full --steps 16 --rtol 1e-8
  pathkl kl --ref mog-5d.json --cov diag --steps 100 --seed 1 --mc-samples 512
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "kl", help="path-space KL of one covariance family", description=__doc__,
        epilog=_EXAMPLES, formatter_class=formatter,
    )
    add_reference_options(p, default_ref="gaussian-5d")
    add_family_option(p)
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--steps", type=positive_int, default=1000, help="T, uniform grid (default: 1000)")
    grid.add_argument("--taus", help="explicit grid: comma-separated taus from 0 to 1, or @FILE")
    grid.add_argument("--indices", help="ddpm-linear only: chain indices 0 = i_0 < ... < i_T = N, or @FILE")
    p.add_argument("--first-step", type=positive_int, default=1, help="sum steps from this t (default: 1)")
    p.add_argument("--rtol", type=positive_float, default=1e-6,
                   help="relative error the quadrature climbs to, mixtures in d <= 3 (default: 1e-6)")
    p.add_argument("--seed", type=int, default=0, help="Monte Carlo seed, mixtures in d > 3 (default: 0)")
    p.add_argument("--mc-samples", type=positive_int, default=MC_OUTER,
                   help=f"Monte Carlo points per mixture component of q_t (default: {MC_OUTER})")
    p.add_argument("--mc-inner", type=positive_int, default=MC_INNER,
                   help=f"Monte Carlo draws per point for the kernel negentropy (default: {MC_INNER})")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..families import get_family
    from ..pathspace import method, path_kl
    from ..rules import MonteCarlo

    family = get_family(args.cov)
    grid = make_grid(args.schedule, steps=args.steps, taus=args.taus, indices=args.indices)
    mc = MonteCarlo(outer=args.mc_samples, inner=args.mc_inner, seed=args.seed)
    reference = reference_from(args)
    # The Monte Carlo options set the rule of the blocks that need it (mixtures in d > 3).
    rule = mc if MonteCarlo.name in method(reference) else None
    result = path_kl(reference, grid, family, rtol=args.rtol, rule=rule, first_step=args.first_step)
    if not result.met_rtol:
        warn(f"total's error {result.total_error:.2g} is above rtol x total = {args.rtol * abs(result.total):.2g}")
    summary = {"ref": args.ref, "schedule": args.schedule, "T": grid.T, "cov": family.name, **result.as_dict()}
    if "monte carlo" in result.method:
        summary.update(seed=mc.seed, mc_samples=mc.outer, mc_inner=mc.inner)
    if args.json:
        print_json(summary)
        return 0
    print(f"{family.name} on {args.ref}, {args.schedule}, T = {grid.T} ({result.method})")
    for key in ("terminal", "steps", "total"):
        print(f"  {key:<9}{format_estimate(getattr(result, key), getattr(result, key + '_error'))}")
    if args.first_step > 1:
        print(f"  (steps and total sum t = {args.first_step}..{grid.T})")
    return 0
