"""Mixture benchmarks: prints figures (wall time, values, refinement changes).

    python3 benchmarks/bench_mixture.py ocm [--T 1000]
    python3 benchmarks/bench_mixture.py refine-ocm [--T 1000]
    python3 benchmarks/bench_mixture.py empirical [--n 2000 --d 12288 --samples 32]
    python3 benchmarks/bench_mixture.py refine [--ref mog-rotated --T 1024 --at 1,10,50,150,300,600]
    python3 benchmarks/bench_mixture.py mc [--d 8 --K 6 --samples 256 --inner 32]

``ocm``: all five families on the OCM 3x3 toy (product form, default 1-D rule) at one T (J is
computed once and shared), wall time included.
``refine-ocm``: node refinement of one 1-D factor of the OCM toy (sum of E J and of the beta steps):
the accuracy statement for ``ocm``.
``empirical``: the full-family leading-constant integrand E||grad^3 log q_t||^2 for N random points
in d dimensions by Monte Carlo over x_t (Gram form), with its standard error, at three noise levels.
``refine``: E J_t at chosen steps under the fast (Gauss-Hermite) rule, Gauss-Hermite at 32 and 64
nodes, the fine (paired lattice) rule with its a-posteriori estimates, a finer one (finer outer
and inner rules, tighter tolerance) and, at small T, route (b): the accuracy statement for d = 2.
``mc``: Monte Carlo path KL (pathkl.mixture_mc) of a rotated d-dimensional K-component mixture at
T = 100 and 1000: time, value, SE, and the variance-reduction factor of the control variates (the same
seed without them).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from pathkl import mixture_kl as mk
from pathkl import mixture_mc as mm
from pathkl.covariances import FAMILIES
from pathkl.pathspace import path_kl
from pathkl.presets import ocm_grid, ocm_line
from pathkl.references import MixtureReference
from pathkl.refspec import load_reference
from pathkl.schedules import DTYPE, VPLinear


def ocm(args) -> None:
    reference = ocm_grid()
    grid = VPLinear().grid(args.T)
    start = time.perf_counter()
    for family in FAMILIES.values():
        t0 = time.perf_counter()
        result = path_kl(reference, grid, family, first_step=2 if family.name == "beta_tilde" else 1)
        print(f"  {family.name:10s} steps={result.steps:.12e}  ({time.perf_counter() - t0:.1f} s)")
    print(f"OCM 3x3 (product form), T={args.T}, all five families: {time.perf_counter() - start:.1f} s")


def refine_ocm(args) -> None:
    line = ocm_line()
    grid = VPLinear().grid(args.T)
    for quad in (mk.Quadrature(resolution=1.0, coarse=0.2, smooth=96, inner=24, separated=96), mk.FINE_1D,
                 mk.Quadrature(resolution=0.35, coarse=0.07, smooth_below=0.0, smooth=160, inner=64, separated=192)):
        start = time.perf_counter()
        j = float(mk.expected_negentropies(line, grid, quad).sum())
        beta = float(mk.step_kls(line, grid, FAMILIES["beta"], quad)[0].sum())
        print(f"OCM factor T={args.T} {quad}: sum E J = {j:.15e}, beta steps = {beta:.15e} "
              f"({time.perf_counter() - start:.1f} s)")


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
    idx = torch.tensor([int(t) for t in args.at.split(",")])
    rules = {"fast": mk.FAST, "hermite-32": mk.Quadrature.hermite(32, inner=12, separated=48),
             "hermite-64": mk.Quadrature.hermite(64, inner=12, separated=48), "fine": mk.FINE,
             "finer": dataclasses.replace(mk.FINE, resolution=1.4, coarse=0.2, inner=32, separated=128,
                                          near_gaussian=0.35, tolerance=1e-11)}
    values, estimates = {}, {}
    for name, quad in rules.items():
        start = time.perf_counter()
        values[name], estimates[name] = mk.expected_negentropy_at(reference, grid, idx, quad)
        print(f"{args.ref} T={args.T} {name:10s} ({time.perf_counter() - start:6.1f} s)", flush=True)
    if args.T <= 16:
        values["route (b)"] = torch.tensor([mk.negentropy_chain_rule(reference, grid, t, mk.FINE) for t in idx.tolist()])
    best = values["finer"]
    print("E J_t at t = " + ", ".join(map(str, idx.tolist())) + "; relative difference from 'finer':")
    for name, v in values.items():
        print(f"  {name:10s} " + "  ".join(f"{float(e):+.1e}" for e in (v - best) / best))
    print("a-posteriori estimates, relative:")
    for name in ("fine", "finer"):
        print(f"  {name:10s} " + "  ".join(f"{float(e):.1e}" for e in estimates[name] / values[name]))


def _rotated(d: int, k: int) -> MixtureReference:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(k, d, d, generator=gen, dtype=DTYPE))
    variances = 0.05 + 0.5 * torch.rand(k, d, generator=gen, dtype=DTYPE)
    covs = (q * variances[:, None, :]) @ q.transpose(-1, -2)
    means = 1.5 * torch.randn(k, d, generator=gen, dtype=DTYPE)
    return MixtureReference.from_components(torch.full((k,), 1.0 / k, dtype=DTYPE), means, covs=0.5 * (covs + covs.mT))


def mc(args) -> None:
    reference = _rotated(args.d, args.K)
    for steps in (100, 1000):
        grid = VPLinear().grid(steps)
        for family in ("full", "diag"):
            runs = {}
            for cv in (True, False):
                settings = mm.MonteCarlo(outer=args.samples, inner=args.inner, control_variates=cv)
                start = time.perf_counter()
                values, variances = mm.step_kls(reference, grid, FAMILIES[family], settings)
                runs[cv] = (float(values.sum()), float(variances.sum()), time.perf_counter() - start)
            (value, var, seconds), plain_var = runs[True], runs[False][1]
            print(f"d={args.d} K={args.K} T={steps} {family:5s} steps = {value:.6e} +- {var**0.5:.2e} "
                  f"(CV variance reduction {plain_var / var:.1f}x; {seconds:.1f} s with CVs, J included)")
        lv = grid.level(steps)
        cv, plain = (mm.terminal_kl(reference, lv, mm.MonteCarlo(control_variates=c)) for c in (True, False))
        print(f"  terminal = {cv.value:.6e} +- {cv.variance**0.5:.1e} (CV variance reduction {plain.variance / cv.variance:.3g}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    for name, func in (("ocm", ocm), ("refine-ocm", refine_ocm)):
        p = sub.add_parser(name)
        p.add_argument("--T", type=int, default=1000)
        p.set_defaults(func=func)
    p = sub.add_parser("empirical")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--d", type=int, default=12288)
    p.add_argument("--samples", type=int, default=32)
    p.set_defaults(func=empirical)
    p = sub.add_parser("mc")
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--K", type=int, default=6)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--inner", type=int, default=32)
    p.set_defaults(func=mc)
    p = sub.add_parser("refine")
    p.add_argument("--ref", default="mog-rotated")
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--at", default="1,10,50,150,300,600", help="steps t to compare")
    p.set_defaults(func=refine)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
