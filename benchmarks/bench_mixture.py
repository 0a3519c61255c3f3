"""Mixture benchmarks: prints figures (wall time, values, refinement changes).

    python3 benchmarks/bench_mixture.py ocm [--T 1000] [--outer 16 --inner 8 --separated 12]
    python3 benchmarks/bench_mixture.py empirical [--n 2000 --d 12288 --samples 32]
    python3 benchmarks/bench_mixture.py refine [--ref mog-rotated --T 64]

``ocm``: all five families on the OCM 3x3 toy at one T (J is computed once and shared).
``empirical``: the full-family leading-constant integrand E||grad^3 log q_t||^2 for N random points
in d dimensions by Monte Carlo over x_t (Gram form), with its standard error, at three noise levels.
``refine``: sum of E J and of the diag steps under node refinement (the accuracy statement).
"""

from __future__ import annotations

import argparse
import time

import torch

from pathkl import mixture_kl as mk
from pathkl.covariances import FAMILIES
from pathkl.pathspace import path_kl
from pathkl.presets import ocm_grid
from pathkl.references import MixtureReference
from pathkl.refspec import load_reference
from pathkl.schedules import DTYPE, VPLinear


def ocm(args) -> None:
    reference = ocm_grid()
    grid = VPLinear().grid(args.T)
    quad = mk.Quadrature(args.outer, args.inner, args.separated)
    start = time.perf_counter()
    mk.expected_negentropies(reference, grid, quad)
    print(f"OCM 3x3, T={args.T}, quadrature {quad}: shared E J in {time.perf_counter() - start:.1f} s")
    for family in FAMILIES.values():
        t0 = time.perf_counter()
        result = path_kl(reference, grid, family, first_step=2 if family.name == "beta_tilde" else 1)
        print(f"  {family.name:10s} steps={result.steps:.10e}  ({time.perf_counter() - t0:.1f} s)")
    print(f"total {time.perf_counter() - start:.1f} s")


def empirical(args) -> None:
    gen = torch.Generator().manual_seed(0)
    points = 2 * torch.rand(args.n, args.d, generator=gen, dtype=DTYPE) - 1
    reference = MixtureReference.empirical(points)
    schedule = VPLinear()
    for tau in (0.05, 0.3, 0.7):
        start = time.perf_counter()
        mean, stderr = mk.mc_third_derivative_sq_norm(reference, schedule.level(tau), samples=args.samples, generator=gen)
        print(f"N={args.n} d={args.d} tau={tau}: E||grad^3 log q||^2 = {mean:.6e} +- {stderr:.1e} "
              f"({args.samples} samples, {time.perf_counter() - start:.1f} s)")


def refine(args) -> None:
    reference = load_reference(args.ref)
    grid = VPLinear().grid(args.T)
    for outer, inner, separated in ((12, 6, 12), (16, 8, 16), (24, 10, 16), (32, 12, 24)):
        quad = mk.Quadrature(outer, inner, separated)
        start = time.perf_counter()
        j = float(mk.expected_negentropies(reference, grid, quad).sum())
        diag = float(mk.step_kls(reference, grid, FAMILIES["diag"], quad)[0].sum())
        print(f"{args.ref} T={args.T} {quad}: sum E J = {j:.12e}, diag steps = {diag:.12e} "
              f"({time.perf_counter() - start:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("ocm")
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--outer", type=int, default=16)
    p.add_argument("--inner", type=int, default=8)
    p.add_argument("--separated", type=int, default=12)
    p.set_defaults(func=ocm)
    p = sub.add_parser("empirical")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--d", type=int, default=12288)
    p.add_argument("--samples", type=int, default=32)
    p.set_defaults(func=empirical)
    p = sub.add_parser("refine")
    p.add_argument("--ref", default="mog-rotated")
    p.add_argument("--T", type=int, default=64)
    p.set_defaults(func=refine)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
