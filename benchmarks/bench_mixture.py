"""Mixture benchmarks: prints figures (wall time, values, refinement changes).

    python3 benchmarks/bench_mixture.py contract [--rtol 1e-6]
    python3 benchmarks/bench_mixture.py ocm [--T 1000]
    python3 benchmarks/bench_mixture.py empirical [--n 2000 --d 12288 --samples 32]
    python3 benchmarks/bench_mixture.py mc [--d 8 --K 6 --samples 256 --inner 32]
    python3 benchmarks/bench_mixture.py chain [--ref mog-1d --T 256,1024,4096 --cov full]
    python3 benchmarks/bench_mixture.py speed [--rtol 1e-6 --long --jobs 1]

``contract``: the error contract's cost and honesty on the hard cases (the README's 1-D mixture with
unequal widths at T = 4, the same times N(0, 1) in 2-D, the rotated 2-D mixture at T = 16, the rates
default mog-1d at T = 32..512): wall time, steps +- its stated error, and, where the oracle
(tests/oracle.py) reaches, the true error against the stated one.

``ocm``: all five families on the OCM 3x3 toy (product form, default 1-D rule) at one T (J is
computed once and shared), wall time included.
``empirical``: the full-family leading-constant integrand E||grad^3 log q_t||^2 for N random points
in d dimensions by Monte Carlo over x_t (Gram form), with its standard error, at three noise levels.
``mc``: Monte Carlo path KL (pathkl.rules.montecarlo) of a rotated d-dimensional K-component mixture at
T = 100 and 1000: time, value, SE, and the variance-reduction factor of the control variates (the same
seed without them).
``chain``: the step-index rule (pathkl.rules.stepsum) on long chains: per T, the steps evaluated out
of T, the time, and the time and value with every step evaluated (``--dense``, T <= 1024 only), so
the saving and the agreement are both printed.
``speed``: the timings of issue 11 item 4 at the default rtol, each with a fresh reference (no cache
carried between lines): ``pathkl kl --ref mog-rotated --cov full`` at T = 16, 64, 256; ``pathkl rates
--ref mog-rotated`` on its default ladder (T = 32..512, four families, one reference shared by them as
in the CLI); ``pathkl rates`` (the mog-1d default); with ``--long`` also ``rates --ref mog-rotated``
on T = 64..4096. ``--jobs`` runs the T of each rates ladder in that many processes.
"""

from __future__ import annotations

import argparse
import time

import torch

from pathkl import third_derivative as td
from pathkl.families import FAMILIES
from pathkl.pathspace import path_kl
from pathkl.presets import ocm_grid
from pathkl.references import MixtureReference
from pathkl.refspec import load_reference
from pathkl.rules import montecarlo as mcr
from pathkl.rules import quadrature as qr
from pathkl.schedules import DTYPE, VPLinear


def ocm(args) -> None:
    reference = ocm_grid()
    grid = VPLinear().grid(args.T)
    start = time.perf_counter()
    for family in FAMILIES.values():
        t0 = time.perf_counter()
        result = path_kl(reference, grid, family, first_step=family.first_step)
        print(f"  {family.name:10s} steps={result.steps:.12e}  ({time.perf_counter() - t0:.1f} s)")
    print(f"OCM 3x3 (product form), T={args.T}, all five families: {time.perf_counter() - start:.1f} s")


def contract(args) -> None:
    one_d = MixtureReference.from_components([0.5, 0.5], [[-2.0], [2.0]], stds=[0.1, 0.3])
    two_d = MixtureReference.from_components([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], variances=[[0.01, 1.0], [0.09, 1.0]])
    truth = 0.5403859580468613  # tests/oracle.py, chain rule and nested routes agree to 1e-15
    cases = [("1-D unequal widths, T=4", one_d, 4, truth), ("the same x N(0,1), 2-D, T=4", two_d, 4, truth),
             ("mog-rotated, T=16", load_reference("mog-rotated"), 16, None)]
    cases += [(f"mog-1d, T={t}", load_reference("mog-1d"), t, None) for t in (32, 64, 128, 256, 512)]
    for name, reference, steps, exact in cases:
        start = time.perf_counter()
        result = path_kl(reference, VPLinear().grid(steps), FAMILIES["full"], rtol=args.rtol)
        seconds = time.perf_counter() - start
        line = f"{name:30s} full steps = {result.steps:.12e} +- {result.steps_error:.1e} ({seconds:6.1f} s)"
        if exact is not None:
            line += f"  true error {abs(result.steps - exact):.1e}"
        print(line, flush=True)


def empirical(args) -> None:
    gen = torch.Generator().manual_seed(0)
    points = 2 * torch.rand(args.n, args.d, generator=gen, dtype=DTYPE) - 1
    reference = MixtureReference.empirical(points)
    schedule = VPLinear()
    for tau in (0.05, 0.3, 0.7):
        start = time.perf_counter()
        mean, stderr = td.mc_third_derivative_sq_norm(reference, schedule.level(tau), samples=args.samples, generator=gen)
        print(f"N={args.n} d={args.d} tau={tau}: E||grad^3 log q||^2 = {mean:.6e} +- {stderr:.1e} "
              f"({args.samples} samples, {time.perf_counter() - start:.1f} s)")


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
                settings = mcr.MonteCarlo(outer=args.samples, inner=args.inner, control_variates=cv)
                start = time.perf_counter()
                values, variances = mcr.step_kls(reference, grid, FAMILIES[family], settings)
                runs[cv] = (float(values.sum()), float(variances.sum()), time.perf_counter() - start)
            (value, var, seconds), plain_var = runs[True], runs[False][1]
            print(f"d={args.d} K={args.K} T={steps} {family:5s} steps = {value:.6e} +- {var**0.5:.2e} "
                  f"(CV variance reduction {plain_var / var:.1f}x; {seconds:.1f} s with CVs, J included)")
        lv = grid.level(steps)
        cv, plain = (mcr.terminal_kl(reference, lv, mcr.MonteCarlo(control_variates=c)) for c in (True, False))
        print(f"  terminal = {cv.value:.6e} +- {cv.stderr:.1e} (CV variance reduction {(plain.stderr / cv.stderr) ** 2:.3g}x)")


def chain(args) -> None:
    family = FAMILIES[args.cov]
    for steps in (int(v) for v in args.T.split(",")):
        reference, grid = load_reference(args.ref), VPLinear().grid(steps)
        start = time.perf_counter()
        result = qr.interpolated_step_kls(reference, grid, family, rtol=args.rtol)
        seconds = time.perf_counter() - start
        line = (f"{args.ref} {family.name} T={steps}: steps {float(result.values.sum()):.12e} +- {result.sum_error:.1e}; "
                f"evaluated {int(result.evaluated.sum())}/{steps} in {seconds:.1f} s")
        if args.dense and steps <= 1024:
            reference = load_reference(args.ref)  # a fresh cache: every step computed anew
            start = time.perf_counter()
            values, errors = qr.step_kls_at(reference, grid, family, torch.arange(1, steps + 1), rtol=args.rtol)
            line += (f"; every step: {float(values.sum()):.12e} +- {float(errors.sum()):.1e} in "
                     f"{time.perf_counter() - start:.1f} s")
        print(line, flush=True)


def speed(args) -> None:
    from pathkl.cli.rates import _DEFAULT_COVS, _DEFAULT_STEPS
    from pathkl.rates import ladder_rates

    families = [FAMILIES[name] for name in _DEFAULT_COVS.split(",")]
    default = [int(v) for v in _DEFAULT_STEPS.split(",")]
    for steps in (16, 64, 256):
        start = time.perf_counter()
        result = path_kl(load_reference("mog-rotated"), VPLinear().grid(steps), FAMILIES["full"], rtol=args.rtol)
        print(f"kl mog-rotated full T={steps:4d}: steps {result.steps:.12e} +- {result.steps_error:.1e}, "
              f"met_rtol={result.met_rtol}  ({time.perf_counter() - start:6.1f} s)", flush=True)
    ladders = [("mog-rotated", default), ("mog-1d", default)]
    if args.long:
        ladders.append(("mog-rotated", [64 * 2**i for i in range(7)]))
    for ref, ladder in ladders:
        reference, start = load_reference(ref), time.perf_counter()
        rows = ladder_rates(reference, VPLinear(), families, ladder, rtol=args.rtol, jobs=args.jobs)
        print(f"rates {ref} T={ladder[0]}..{ladder[-1]}, {len(families)} families, --jobs {args.jobs}: "
              f"met_rtol={all(r.met_rtol for r in rows)}  ({time.perf_counter() - start:6.1f} s)", flush=True)
        for r in rows:
            worst = max((e / k for k, e in zip(r.kl, r.kl_error) if k > 0), default=0.0)
            print(f"  {r.family.name:10s} KL(T={ladder[-1]}) = {r.kl[-1]:.9e}  largest error/KL {worst:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("ocm")
    p.add_argument("--T", type=int, default=1000)
    p.set_defaults(func=ocm)
    p = sub.add_parser("contract")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.set_defaults(func=contract)
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
    p = sub.add_parser("chain")
    p.add_argument("--ref", default="mog-1d")
    p.add_argument("--T", default="256,1024,4096")
    p.add_argument("--cov", default="full")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--dense", action="store_true")
    p.set_defaults(func=chain)
    p = sub.add_parser("speed")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--long", action="store_true")
    p.add_argument("--jobs", type=int, default=1, help="processes for the rates ladders (pathkl.rates.ladder_rates)")
    p.set_defaults(func=speed)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
