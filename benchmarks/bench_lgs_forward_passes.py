"""The cost of one Lanczos-sampler (LGS) reverse step with a network, in forward passes (issue 13).

A small SiLU MLP eps-network ``d -> h -> h -> d`` (h = d), batch 64, wrapped as
``pathkl.NetworkPosterior``; one DDPM step of ``lanczos:k`` = the route's k covariance-vector products
of the posterior mean, the Lanczos sampler and the step's mean. Printed: the step's time over the
time of one plain forward pass ``net(x, t)``, for k = 1..5, by route:

- ``jvp``: ``pathkl.matvecs.JvpCovariance``, one ``torch.func.jvp`` per product;
- ``linearize``: ``pathkl.matvecs.LinearizedCovariance``, ``torch.func.linearize`` once per step, then
  k calls of the linear graph; also its two parts, the linearisation and one product;
- ``difference``: ``pathkl.matvecs.DifferenceCovariance`` (k + 1 evaluations by construction);
- ``(sampler)``: the Lanczos sampler alone with a free matvec (``2 v``), what no route can remove;
- ``vjp`` (for comparison only, not a pathkl route): ``torch.func.vjp`` once, then k reverse passes,
  which give ``J^T v``, equal to ``J v`` only where the Jacobian is symmetric (an exact denoiser's is,
  docs/theory.md section 2.3; a trained network's is not exactly).

The LGS paper's target is about k + 1 forward passes per step. Times are minima over repeats (the
machine is shared: minima and ratios, not means).

Usage: python benchmarks/bench_lgs_forward_passes.py [--dims 64 256 1024] [--threads 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import time

import torch

from pathkl.covariances import ReverseStep
from pathkl.denoiser import NetworkPosterior
from pathkl.lanczos import lanczos_sampler
from pathkl.matvecs import DifferenceCovariance, JvpCovariance, LinearizedCovariance
from pathkl.schedules import get_schedule

BATCH = 64
KS = (1, 2, 3, 4, 5)


def min_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def mlp(d: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.SiLU(), torch.nn.Linear(d, d), torch.nn.SiLU(),
                                 torch.nn.Linear(d, d)).double()
    for p in layers.parameters():
        p.requires_grad_(False)
    return layers


class VjpProducts:
    """``v -> s^2 v + scale J^T v``: one forward with saved residuals, then a reverse pass per product."""

    def __init__(self, denoiser, x, step):
        self._value, self._pullback = torch.func.vjp(denoiser, x)
        self._step = step

    def __call__(self, v):
        return self._step.s2 * v + self._step.jacobian_scale * self._pullback(v)[0]

    def denoised(self):
        return self._value


ROUTES = {"jvp": JvpCovariance, "linearize": LinearizedCovariance, "difference": DifferenceCovariance,
          "vjp": VjpProducts}


def row(d: int, repeats: int) -> None:
    layers = mlp(d)

    def net(x, t):
        return layers(x)

    grid = get_schedule("vp-linear").grid(20)
    step = ReverseStep.ddim(grid, 10)
    posterior = NetworkPosterior(net, dim=d, time="level", schedule=grid.schedule)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, d, dtype=torch.float64, generator=gen)
    z = torch.randn(BATCH, d, dtype=torch.float64, generator=gen)
    t = posterior.network_time(step.level).expand(BATCH)
    forward = min_time(lambda: net(x, t), repeats)

    def denoiser(y):
        return posterior.posterior_mean(y, step.level)

    def lgs_step(route, k):
        products = ROUTES[route](denoiser, x, step)
        noise = lanczos_sampler(k)(products, z).sample
        return step.mean(x, products.denoised()) + noise

    units = {route: [min_time(lambda r=route, k=k: lgs_step(r, k), repeats) / forward for k in KS] for route in ROUTES}
    units["(sampler)"] = [min_time(lambda k=k: lanczos_sampler(k)(lambda v: 2.0 * v, z).sample, repeats) / forward
                          for k in KS]
    mean = min_time(lambda: denoiser(x), repeats) / forward
    linearise = min_time(lambda: LinearizedCovariance(denoiser, x, step), repeats) / forward
    products = LinearizedCovariance(denoiser, x, step)
    one_product = min_time(lambda: products(z), repeats) / forward
    one_jvp = min_time(lambda: torch.func.jvp(denoiser, (x,), (z,)), repeats) / forward
    print(f"d = {d:5d}: one forward pass {forward * 1e3:.3f} ms; posterior_mean = {mean:.2f}, one jvp = {one_jvp:.2f},"
          f" linearize = {linearise:.1f} + {one_product:.2f} per product (forward passes)")
    for route, values in units.items():
        print(f"  {route:<11}" + "".join(f"{v:9.2f}" for v in values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"LGS reverse step with a network, in forward passes (min of {args.repeats}; batch {BATCH}, float64,"
          f" {args.threads} thread(s), torch {torch.__version__})")
    print("  route    " + "".join(f"{'k=' + str(k):>9}" for k in KS) + "    (target ~ k + 1)")
    for d in args.dims:
        row(d, args.repeats)


if __name__ == "__main__":
    main()
