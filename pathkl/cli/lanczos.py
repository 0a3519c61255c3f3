"""``pathkl lanczos``: accuracy of the Lanczos Gaussian sampler on a reverse-step covariance."""

from __future__ import annotations

import argparse

from .common import (
    JSON_HELP,
    add_reference_options,
    formatter,
    parse_integer,
    parse_number_list,
    positive_int,
    print_json,
    reference_from,
)

TARGETS = ("reverse", "x0")  # pathkl.lgs_accuracy.TARGETS, named here so --help loads no torch

_EXAMPLES = """
For points x ~ q_tau and z ~ N(0, I) it compares the LGS draw y_k = |z| V_k T_k^(1/2) e_1 with the exact
Sigma^(1/2) z, where Sigma is (--target reverse, default) the optimal reverse covariance Sigma*_t of
the step of a uniform T-step grid ending nearest to TAU, or (--target x0) Cov[x_0 | x_TAU] (what DDIM
uses). Columns: relative error |y_k - Sigma^(1/2) z| / |Sigma^(1/2) z| (mean and max over the batch),
the a priori bound 2 E_(k-1)(sqrt; [lambda_min, lambda_max]) |z| / |Sigma^(1/2) z| (max over the
batch; pathkl.lanczos.sqrt_error_bound) and the condition number of Sigma.
Up to d = 1024 the exact root and spectrum come from a dense eigendecomposition; above, from a
100-step Lanczos run (its own a posteriori error and its Ritz interval are reported).

examples:
  pathkl lanczos --ref gaussian-5d --t 0.5 --k 1,2,3,4,5
  pathkl lanczos --ref image-3x32x32 --t 0.3 --steps 20 --k 1,2,3,4,5 --json
  pathkl lanczos --ref gaussian-5d --t 0.8 --target x0 --k 1,2,3
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "lanczos", help="LGS sampling error per number of Lanczos steps", description=__doc__,
        epilog=_EXAMPLES, formatter_class=formatter,
    )
    add_reference_options(p, default_ref="gaussian-5d")
    p.add_argument("--t", type=float, required=True, dest="tau", help="noise level tau in (0, 1]")
    p.add_argument("--steps", type=positive_int, default=10, help="T of the grid for --target reverse (default: 10)")
    p.add_argument("--target", choices=TARGETS, default="reverse",
                   help="reverse: Sigma*_t (default); x0: Cov[x_0 | x_tau]")
    p.add_argument("--k", required=True, help="comma-separated numbers of Lanczos steps, e.g. 1,2,3,4,5")
    p.add_argument("--n", type=positive_int, default=64, help="batch of points and vectors z (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ks = parse_number_list(args.k, parse_integer, "--k")

    from ..lgs_accuracy import lanczos_accuracy
    from ..schedules import get_schedule

    result = lanczos_accuracy(reference_from(args), get_schedule(args.schedule), ks, tau=args.tau,
                              target=args.target, steps=args.steps, n=args.n, seed=args.seed)
    if args.json:
        print_json({"ref": args.ref, **result.as_dict()})
        return 0
    where = ", ".join(f"{key} = {value:g}" for key, value in result.where.items())
    print(f"LGS on {args.target} covariance of {args.ref} (d = {result.d}), {where};"
          f" condition number {result.condition:.4g}; exact root: {result.exact}")
    print(f"  {'k':>3}  {'error mean':>12}  {'error max':>12}  {'bound':>12}")
    for row in zip(result.k, result.error_mean, result.error_max, result.bound):
        print("  {:>3}  {:12.4e}  {:12.4e}  {:12.4e}".format(*row))
    return 0
