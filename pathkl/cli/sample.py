"""``pathkl sample``: one ancestral sampling run, its sample quality and its cost."""

from __future__ import annotations

import argparse

from ..errors import InputError
from .common import (
    JSON_HELP,
    SAMPLING_FAMILY_NAMES,
    SAMPLING_ROUTES,
    SIZED_FAMILIES,
    add_reference_options,
    formatter,
    make_grid,
    positive_int,
    print_json,
    reference_from,
)

#: What each reported number is, printed beside it.
METRIC_NAMES = {"sw": "SW_2^2, full sample, 256 directions",
                "sw_floor": "SW_2^2 of two exact samples (its finite-sample floor)",
                "mmd": "unbiased MMD^2, mean over blocks"}
#: Lanczos steps of the default family (fewer where d is smaller: k <= d).
DEFAULT_LANCZOS = 3

_EXAMPLES = """
Draws N samples with the exact posterior mean and the chosen covariance family (DDPM, or DDIM with
--eta < 1), then compares them with N exact reference samples: unbiased MMD^2 (kernel bandwidths
2^-2..2^2, d <= 16, mean over blocks) and the full-sample sliced Wasserstein SW_2^2 on 256 random
directions, each with its standard error (SW: directions' Monte Carlo error plus block subsampling);
'sw_floor' is SW_2^2 between two independent reference samples of the same size (the finite-sample
bias of SW). Cost: posterior-mean evaluations (one per step) and covariance-vector products (one JVP
of the posterior mean each; rademacher:M makes M, lanczos:k makes k per step).

examples:
  pathkl sample --ref gaussian-5d --cov lanczos:3 --steps 20
  pathkl sample --ref gaussian-2d --cov diag --steps 10 --n 4000 --json
  pathkl sample --ref image-3x32x32 --cov lanczos:3 --steps 10 --n 64 --device auto
  pathkl sample --ref gaussian-5d --cov analytic --steps 20 --eta 0
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="ancestral sampling run with metrics and cost", description=__doc__,
        epilog=_EXAMPLES, formatter_class=formatter,
    )
    add_reference_options(p, default_ref="gaussian-5d")
    p.add_argument("--cov", help=f"covariance family: {', '.join(SAMPLING_FAMILY_NAMES)} (default: lanczos:{DEFAULT_LANCZOS},"
                                 f" or lanczos:d where d < {DEFAULT_LANCZOS})")
    p.add_argument("--steps", type=positive_int, default=20, help="T, uniform grid (default: 20)")
    p.add_argument("--n", type=positive_int, default=2000, help="number of samples (default: 2000)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta in [0, 1]; 1 is DDPM (default: 1)")
    p.add_argument("--route", choices=SAMPLING_ROUTES, default="closed",
                   help="covariance products from the closed form, a JVP of the posterior mean, its"
                        " linearisation once per step (torch.func.linearize), or a forward difference of it"
                        " (default: closed)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=run)


def _sized_family(name: str) -> None:
    """Check the size of a sized family (``rademacher:M``, ``lanczos:k``) before torch loads, as
    pathkl.families.parse_family does; other names are left to the library, which knows every family."""
    kind, _, size = name.partition(":")
    if kind not in SIZED_FAMILIES:
        return
    letter, smallest, what = SIZED_FAMILIES[kind]
    if not (size.isdigit() and int(size) >= smallest):
        raise InputError(f"--cov {name!r}: {kind}:{letter} needs {letter}, the number of {what}, to be an integer"
                         f" >= {smallest}")


def run(args: argparse.Namespace) -> int:
    if args.cov is not None:
        _sized_family(args.cov)

    from ..metrics import sample_quality
    from ..sampling import sample

    reference = reference_from(args)
    cov = args.cov if args.cov is not None else f"lanczos:{min(DEFAULT_LANCZOS, reference.dim)}"
    grid = make_grid(args.schedule, steps=args.steps, taus=None, indices=None)
    out = sample(reference, grid, cov, n=args.n, eta=args.eta, route=args.route, seed=args.seed,
                 device=args.device)
    metrics = {key: value.as_dict() for key, value in sample_quality(out.samples, reference, seed=args.seed).items()}
    result = {"ref": args.ref, "schedule": args.schedule, "T": grid.T, "cov": cov, "eta": args.eta,
              "route": args.route, "device": str(out.samples.device), "n": args.n, "d": reference.dim,
              **metrics, "seconds": out.seconds, "mean_evals": out.mean_evals, "cov_products": out.cov_products}
    if args.json:
        print_json(result)
        return 0
    print(f"{cov} on {args.ref} (d = {reference.dim}), {args.schedule}, T = {grid.T}, eta = {args.eta},"
          f" n = {args.n}, {result['device']}, {args.route} products")
    for key, value in metrics.items():
        print(f"  {key:<10}{value['value']:.4e} +- {value['stderr']:.2e}  {METRIC_NAMES[key]}")
    print(f"  time      {out.seconds:.3f} s")
    print(f"  cost      {out.mean_evals} posterior-mean evaluations + {out.cov_products} covariance-vector products")
    return 0
