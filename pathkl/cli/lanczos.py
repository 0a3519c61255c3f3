"""``pathkl lanczos``: accuracy of the Lanczos Gaussian sampler on a reverse-step covariance."""

from __future__ import annotations

import argparse

from ..errors import InputError
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

#: Above this dimension the exact ``Sigma^{1/2} z`` and spectrum come from a long Lanczos run.
DENSE_LIMIT = 1024
REFERENCE_STEPS = 100

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
    p.add_argument("--target", choices=("reverse", "x0"), default="reverse",
                   help="reverse: Sigma*_t (default); x0: Cov[x_0 | x_tau]")
    p.add_argument("--k", required=True, help="comma-separated numbers of Lanczos steps, e.g. 1,2,3,4,5")
    p.add_argument("--n", type=positive_int, default=64, help="batch of points and vectors z (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=run)


def _operator(reference, args):
    """The matvec of the chosen covariance at points x ~ q_tau, and a description of it."""
    import torch

    from ..covariances import ReverseStep
    from ..matvecs import closed_form_cov_matvec
    from ..schedules import get_schedule

    schedule = get_schedule(args.schedule)
    if args.target == "x0":
        level = schedule.level(torch.tensor(args.tau, dtype=torch.float64))
        x = reference.sample(args.n, level, generator=torch.Generator().manual_seed(args.seed))
        return (lambda v: reference.posterior_cov_matvec(x, v, level)), {"tau": args.tau}
    grid = schedule.grid(args.steps)
    t = min(max(1, round(args.tau * args.steps)), args.steps)
    step = ReverseStep.ddim(grid, t)
    x = reference.sample(args.n, step.level, generator=torch.Generator().manual_seed(args.seed))
    return closed_form_cov_matvec(reference, x, step), {"tau": float(grid.taus[t]), "step": t, "T": grid.T}


def _exact(matvec, z, d):
    """``(Sigma^{1/2} z, lambda_min, lambda_max, info)`` per row, densely or by a long Lanczos run."""
    import torch

    from ..lanczos import lanczos, lanczos_sampler

    if d <= DENSE_LIMIT:
        eye = torch.eye(d, dtype=z.dtype)
        dense = torch.stack([matvec(eye[i].expand(z.shape[0], d)) for i in range(d)], dim=2)
        vals, vecs = torch.linalg.eigh(0.5 * (dense + dense.transpose(1, 2)))
        root = torch.einsum("nij,nj,nkj,nk->ni", vecs, vals.clamp_min(0).sqrt(), vecs, z)
        return root, vals[:, 0], vals[:, -1], {"exact": "dense"}
    k = min(d, REFERENCE_STEPS)
    out = lanczos_sampler(k)(matvec, z)
    ritz = torch.linalg.eigvalsh(lanczos(matvec, z, k).tridiagonal())
    info = {"exact": f"lanczos:{k}", "exact_error_estimate": float(out.error_estimate.max())}
    return out.sample, ritz[:, 0], ritz[:, -1], info


def run(args: argparse.Namespace) -> int:
    ks = parse_number_list(args.k, parse_integer, "--k")
    if not (0.0 < args.tau <= 1.0):
        raise InputError(f"--t must lie in (0, 1], got {args.tau}")

    import torch

    from ..lanczos import lanczos_sampler, sqrt_error_bound

    reference = reference_from(args)
    d = reference.dim
    if min(ks) < 1 or max(ks) > d:
        raise InputError(f"--k values must lie in 1..d = {d}, got {args.k}")
    if d > DENSE_LIMIT and max(ks) >= REFERENCE_STEPS:
        raise InputError(f"above d = {DENSE_LIMIT} the exact root is a {REFERENCE_STEPS}-step Lanczos run:"
                         f" --k must stay below {REFERENCE_STEPS}")
    matvec, where = _operator(reference, args)
    z = torch.randn(args.n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(args.seed + 1))
    root, lam_min, lam_max, info = _exact(matvec, z, d)
    if not bool((lam_min > 0).all()):
        raise InputError("the covariance is singular at this level (lambda_min <= 0): no relative bound")
    root_norm = torch.linalg.vector_norm(root, dim=1)
    rows = []
    for k in ks:
        y = lanczos_sampler(k)(matvec, z).sample
        rel = torch.linalg.vector_norm(y - root, dim=1) / root_norm
        bound = max(sqrt_error_bound(k, float(a), float(b)) * float(torch.linalg.vector_norm(zi)) / float(r)
                    for a, b, zi, r in zip(lam_min, lam_max, z, root_norm))
        rows.append((k, float(rel.mean()), float(rel.max()), bound))
    kappa = float((lam_max / lam_min).max())
    result = {"ref": args.ref, "target": args.target, **where, "d": d, "n": args.n, **info, "condition": kappa,
              "k": [r[0] for r in rows], "error_mean": [r[1] for r in rows], "error_max": [r[2] for r in rows],
              "bound": [r[3] for r in rows]}
    if args.json:
        print_json(result)
        return 0
    where_text = ", ".join(f"{key} = {value:g}" for key, value in where.items())
    print(f"LGS on {args.target} covariance of {args.ref} (d = {d}), {where_text}; condition number {kappa:.4g};"
          f" exact root: {info['exact']}")
    print(f"  {'k':>3}  {'error mean':>12}  {'error max':>12}  {'bound':>12}")
    for k, mean, worst, bound in rows:
        print(f"  {k:>3}  {mean:12.4e}  {worst:12.4e}  {bound:12.4e}")
    return 0
