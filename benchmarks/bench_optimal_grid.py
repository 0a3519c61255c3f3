"""Optimal time grids at image dimension: pair costs and dynamic programming (pathkl.optimal_grid).

Gaussian image reference ``image-3x64x64`` (d = 12288, the preset's power-law spectrum: 457 distinct
eigenvalues after merging repeats, which is what the closed form's cost scales with), vp-linear,
N = 1000 candidate steps (tau = k / N): the time of all 500500 pair costs (one compressed spectrum),
then of the DP for each K, and the exact KL (pathkl.path_kl) of the DP grid, the asymptotic grid
(pathkl.asymptotic_grid) and the uniform grid. Run:

    python benchmarks/bench_optimal_grid.py [--candidates 1000] [--steps 10,25,50,100] [--cov analytic]
"""

from __future__ import annotations

import argparse
import time

import pathkl
from pathkl.asymptotic_grid import asymptotic_density, asymptotic_grid
from pathkl.optimal_grid import Candidates, best_grid, pair_costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="image-3x64x64")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--steps", default="10,25,50,100")
    parser.add_argument("--cov", default="analytic,diag")
    args = parser.parse_args()
    reference = pathkl.load_reference(args.ref)
    schedule = pathkl.get_schedule("vp-linear")
    pool = Candidates.uniform(schedule, args.candidates)
    print(f"{args.ref} (d = {reference.dim}), vp-linear, N = {pool.n} candidate steps")
    for name in args.cov.split(","):
        family = pathkl.get_family(name)
        start = time.perf_counter()
        costs = pair_costs(reference, pool, family)
        cost_seconds = time.perf_counter() - start
        start = time.perf_counter()
        density = asymptotic_density(reference, schedule, family)
        print(f"\n{name}: pair costs {cost_seconds:.2f} s, asymptotic density {time.perf_counter() - start:.2f} s")
        print(f"{'K':>5} {'DP s':>7} {'DP KL':>12} {'asymptotic KL':>14} {'uniform KL':>12} {'DP/asym':>8} {'DP/unif':>8}")
        for steps in (int(s) for s in args.steps.split(",")):
            start = time.perf_counter()
            best = best_grid(costs, steps)
            dp_seconds = time.perf_counter() - start
            dp = pathkl.path_kl(reference, pool.grid(best.positions), family).total
            asym = pathkl.path_kl(reference, asymptotic_grid(density, schedule, steps)[0], family).total
            uni = pathkl.path_kl(reference, schedule.grid(steps), family).total
            print(f"{steps:>5} {dp_seconds:>7.2f} {dp:>12.6g} {asym:>14.6g} {uni:>12.6g} {dp / asym:>8.4f} {dp / uni:>8.4f}")


if __name__ == "__main__":
    main()
