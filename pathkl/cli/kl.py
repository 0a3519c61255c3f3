"""``pathkl kl``: the path-space KL of one covariance family on one grid."""

from __future__ import annotations

import argparse

from ..covariances import FAMILIES, get_family
from ..mixture_kl import QUADRATURES, has_rule_choice, steps_quadrature_error, with_quadrature
from ..mixture_mc import MonteCarlo, uses_monte_carlo, with_monte_carlo
from ..pathspace import path_kl
from .common import (
    JSON_HELP,
    add_reference_options,
    formatter,
    make_grid,
    positive_int,
    print_json,
    reference_from,
)

_EXAMPLES = """
The path-space KL between the exact reverse chain q(x_{0:T}) and the Gaussian reverse model p with the
exact mean and the chosen covariance, in three parts:
  terminal  KL(q_T || N(0, I))
  steps     sum over t of E_{x_t ~ q_t} KL(q(x_{t-1}|x_t) || p(x_{t-1}|x_t))
  total     terminal + steps
beta_tilde has beta~_1 = 0, so its step t = 1 (and total) is +inf; --first-step 2 sums from t = 2.
Mixtures in d > 3 are estimated by Monte Carlo with control variates (pathkl.mixture_mc): each part
comes with its standard error and total with a 95% confidence interval; --seed and --mc-samples fix
the draws (same options, same output).

examples:
  pathkl kl --ref gaussian-5d --cov analytic --steps 1000
  pathkl kl --ref image-3x64x64 --schedule cosine --cov diag --steps 1000 --json
  pathkl kl --ref gaussian-2d --cov beta --taus 0,0.1,0.3,0.6,1
  pathkl kl --ref gaussian-5d --schedule ddpm-linear --cov beta --indices 0,100,250,500,1000
  pathkl kl --ref gaussian-5d --cov beta_tilde --steps 100 --first-step 2
  pathkl kl --ref mog-rotated --cov full --steps 16 --quadrature fine
  pathkl kl --ref mog-5d.json --cov diag --steps 100 --seed 1 --mc-samples 512
"""


# What the printed digits of a 2-D/3-D mixture are worth: fast measured on mog-rotated (README,
# Accuracy); fine estimates its own error, printed with the result.
_RULE_ACCURACY = {"fast": "about 0.5% relative", "fine": "each step refined to an estimated 1e-9 relative"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "kl", help="path-space KL of one covariance family", description=__doc__,
        epilog=_EXAMPLES, formatter_class=formatter,
    )
    add_reference_options(p, default_ref="gaussian-5d")
    p.add_argument("--cov", default="analytic", help=f"covariance family: {', '.join(FAMILIES)} (default: analytic)")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--steps", type=positive_int, default=1000, help="T, uniform grid (default: 1000)")
    grid.add_argument("--taus", help="explicit grid: comma-separated taus from 0 to 1, or @FILE")
    grid.add_argument("--indices", help="ddpm-linear only: chain indices 0 = i_0 < ... < i_T = N, or @FILE")
    p.add_argument("--first-step", type=positive_int, default=1, help="sum steps from this t (default: 1)")
    p.add_argument("--quadrature", choices=tuple(QUADRATURES), default=None,
                   help="rule for mixtures in d = 2, 3: fast (Gauss-Hermite; path KLs good to ~0.5%%) or fine "
                        "(lattice where the posterior weights switch sharply, each step refined until its "
                        "a-posteriori error estimate is below 1e-9 relative, and the estimate printed; "
                        "1e2-1e3x slower); 1-D mixtures always use their accurate rule (default: fast)")
    p.add_argument("--seed", type=int, default=0, help="Monte Carlo seed, mixtures in d > 3 (default: 0)")
    p.add_argument("--mc-samples", type=positive_int, default=MonteCarlo.outer,
                   help=f"Monte Carlo points per mixture component of q_t (default: {MonteCarlo.outer})")
    p.add_argument("--mc-inner", type=positive_int, default=MonteCarlo.inner,
                   help=f"Monte Carlo draws per point for the kernel negentropy (default: {MonteCarlo.inner})")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    family = get_family(args.cov)
    grid = make_grid(args.schedule, steps=args.steps, taus=args.taus, indices=args.indices)
    mc = MonteCarlo(outer=args.mc_samples, inner=args.mc_inner, seed=args.seed)
    reference = with_monte_carlo(with_quadrature(reference_from(args), QUADRATURES.get(args.quadrature)), mc)
    monte_carlo = uses_monte_carlo(reference)
    result = path_kl(reference, grid, family, first_step=args.first_step)
    summary = {"ref": args.ref, "schedule": args.schedule, "T": grid.T, "cov": family.name, **result.as_dict()}
    if monte_carlo:
        summary.update(seed=mc.seed, mc_samples=mc.outer, mc_inner=mc.inner)
    rule = (args.quadrature or "fast") if has_rule_choice(reference) else None
    quadrature_error = steps_quadrature_error(reference, grid, family, first_step=args.first_step)
    if rule:
        summary.update(quadrature=rule, quadrature_error=quadrature_error)
    if args.json:
        print_json(summary)
        return 0
    print(f"{family.name} on {args.ref}, {args.schedule}, T = {grid.T}"
          + (f" (Monte Carlo, seed {mc.seed}, {mc.outer} x {mc.inner} samples per component)" if monte_carlo else "")
          + (f" ({rule} quadrature: {_RULE_ACCURACY[rule]})" if rule else ""))
    errors = {"terminal": result.terminal_stderr, "steps": result.steps_stderr, "total": result.stderr}
    for key in ("terminal", "steps", "total"):
        err = f" +- {errors[key]:.3g}" if monte_carlo else ""
        print(f"  {key:<9}{getattr(result, key):.12g}{err}")
    if monte_carlo:
        low, high = result.ci95
        print(f"  95% CI   [{low:.12g}, {high:.12g}]")
    if quadrature_error is not None:
        print(f"  (steps: estimated quadrature error {quadrature_error:.1e}, the sum of the steps' a-posteriori estimates)")
    if args.first_step > 1:
        print(f"  (steps and total sum t = {args.first_step}..{grid.T})")
    return 0
