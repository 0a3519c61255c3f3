"""Speed and accuracy of the exact Gaussian path KL (pathkl) against the naive dense route.

(a) pathkl at d = 12288 (preset ``image-3x64x64``), vp-linear, T = 1000, all five families:
    element-steps per second, T * d / seconds (target >= 1e8 on the 2-core development machine).
(b) The naive route at d = 256 (a 1x16x16 stationary image Gaussian, the same power-law spectrum):
    per step, dense d x d matrices ``H = -inv((1 - abar) I + abar S)``,
    ``Sigma* = (beta / alpha)(I + beta H)`` and the family's ``Sigma_t``, then
    ``torch.distributions.kl_divergence`` between two ``MultivariateNormal`` (steps batched in chunks),
    with ``abar``, ``alpha = abar_t / abar_{t-1}``, ``beta = 1 - alpha`` formed in the working dtype as
    a torch user commonly does. Reported: the speed ratio against pathkl at T = 1000 (float64), and at
    T = 10^4 the relative error of the naive ``steps`` in float32 and float64 against pathkl's value.

Timings: ``time.perf_counter``, one warm-up call, then the median of ``--repeats`` calls. The machine
is shared, so the load average is printed; ``--threads`` sets torch's intra-op threads (on an
oversubscribed machine, 1 thread avoids OpenMP barriers waiting for a descheduled worker).

    python3 benchmarks/bench_gaussian_kl.py [--threads N] [--repeats R] [--naive-repeats R] [--skip-naive]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch.distributions import MultivariateNormal, kl_divergence

from pathkl.covariances import FAMILIES
from pathkl.pathspace import path_kl
from pathkl.presets import PRESETS, power_law_spectrum
from pathkl.references import GaussianReference
from pathkl.schedules import get_schedule

SCHEDULE = "vp-linear"
TARGET = 1e8


def first_step(name: str) -> int:
    """beta_tilde's step t = 1 is infinite (beta~_1 = 0): every route sums it from t = 2."""
    return 2 if name == "beta_tilde" else 1


def median_seconds(fn: Callable[[], object], repeats: int, *, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def exact_throughput(repeats: int) -> None:
    reference = PRESETS["image-3x64x64"][1]()
    steps = 1000
    grid = get_schedule(SCHEDULE).grid(steps)
    work = steps * reference.dim
    print(f"(a) pathkl exact path KL: image-3x64x64 (d = {reference.dim}), {SCHEDULE}, T = {steps}")
    print(f"    {'family':<11}{'seconds':>10}{'element-steps/s':>18}{'steps (KL)':>24}")
    total = 0.0
    for name, family in FAMILIES.items():
        secs = median_seconds(lambda f=family, n=name: path_kl(reference, grid, f, first_step=first_step(n)), repeats)
        total += secs
        value = path_kl(reference, grid, family, first_step=first_step(name)).steps
        print(f"    {name:<11}{secs:>10.3f}{work / secs:>18.3e}{value:>24.15g}")
    overall = len(FAMILIES) * work / total
    verdict = "meets" if overall >= TARGET else "MISSES"
    print(f"    {'overall':<11}{total:>10.3f}{overall:>18.3e}   ({verdict} the {TARGET:.0e} target)")


# ---- (b) the naive dense route ------------------------------------------------------------------
def naive_family_cov(name: str, sigma_star: torch.Tensor, beta: torch.Tensor,
                     beta_tilde: torch.Tensor) -> torch.Tensor:
    """The family's Sigma_t for a batch of steps, built densely from Sigma* and the step scalars."""
    eye = torch.eye(sigma_star.shape[-1], dtype=sigma_star.dtype)
    if name == "beta":
        return beta[:, None, None] * eye
    if name == "beta_tilde":
        return beta_tilde[:, None, None] * eye
    if name == "analytic":
        return (torch.diagonal(sigma_star, dim1=-2, dim2=-1).mean(-1))[:, None, None] * eye
    if name == "diag":
        return torch.diag_embed(torch.diagonal(sigma_star, dim1=-2, dim2=-1))
    if name == "full":
        return sigma_star.clone()
    raise ValueError(name)


def naive_steps(cov: torch.Tensor, log_abar: torch.Tensor, names: list[str], dtype: torch.dtype, *,
                validate: bool = True, chunk: int = 100) -> dict[str, tuple[float, int]]:
    """``steps`` of each family in ``names`` by the naive route, in ``dtype``.

    Per chunk of steps: ``Sigma*`` (and its MultivariateNormal) once, then one kl_divergence per family.
    Returns per family the sum over t >= first_step (math.fsum of the per-step values) and the number
    of steps whose KL came out negative. ``validate=False`` skips torch.distributions' argument checks,
    which cost time but do not change any value."""
    s = cov.to(dtype)
    d = s.shape[0]
    eye = torch.eye(d, dtype=dtype)
    abar = torch.exp(log_abar.to(dtype))
    alpha = abar[1:] / abar[:-1]
    beta = 1 - alpha
    beta_tilde = (1 - abar[:-1]) / (1 - abar[1:]) * beta
    zero = torch.zeros(d, dtype=dtype)
    values: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for lo in range(0, beta.numel(), chunk):
        sl = slice(lo, min(lo + chunk, beta.numel()))
        a_t = abar[1:][sl, None, None]
        h = -torch.cholesky_inverse(torch.linalg.cholesky((1 - a_t) * eye + a_t * s))
        b = beta[sl, None, None]
        sigma_star = (b / alpha[sl, None, None]) * (eye + b * h)
        sigma_star = 0.5 * (sigma_star + sigma_star.transpose(-1, -2))  # exactly symmetric for the check
        p = MultivariateNormal(zero, covariance_matrix=sigma_star, validate_args=validate)
        for name in names:
            keep = slice(max(0, first_step(name) - 1 - lo), None)  # beta_tilde: leave out t = 1
            sigma_t = naive_family_cov(name, sigma_star[keep], beta[sl][keep], beta_tilde[sl][keep])
            q = MultivariateNormal(zero, covariance_matrix=sigma_t, validate_args=validate)
            p_kept = p if keep.start == 0 else MultivariateNormal(
                zero, covariance_matrix=sigma_star[keep], validate_args=validate)
            values[name].append(kl_divergence(p_kept, q).double())
    out = {}
    for name in names:
        per_step = torch.cat(values[name])
        out[name] = (math.fsum(per_step.tolist()), int((per_step < 0).sum()))
    return out


def naive_comparison(repeats: int, accuracy_families: list[str]) -> None:
    reference = GaussianReference.image(power_law_spectrum((1, 16, 16)))
    cov = reference.basis.dense(reference.eigenvalues)  # the dense covariance a torch user would hold
    schedule = get_schedule(SCHEDULE)
    d = reference.dim

    steps = 1000
    grid = schedule.grid(steps)
    warm = schedule.grid(10).log_abar
    print(f"\n(b) naive dense route vs pathkl: 1x16x16 image Gaussian (d = {d}), {SCHEDULE}")
    print(f"    speed at T = {steps}, float64 (naive: dense Sigma*, Sigma_t per step, MultivariateNormal with")
    print(f"    default argument validation, kl_divergence; warm-up at T = 10, median of {repeats} run(s))")
    print(f"    {'family':<11}{'naive s':>10}{'pathkl s':>11}{'ratio':>10}{'naive el-steps/s':>18}")
    naive_total = exact_total = 0.0
    for name, family in FAMILIES.items():
        naive_steps(cov, warm, [name], torch.float64)
        naive = median_seconds(lambda n=name: naive_steps(cov, grid.log_abar, [n], torch.float64), repeats,
                               warm_up=False)
        exact = median_seconds(lambda f=family, n=name: path_kl(reference, grid, f, first_step=first_step(n)), 3)
        naive_total, exact_total = naive_total + naive, exact_total + exact
        print(f"    {name:<11}{naive:>10.3f}{exact:>11.4f}{naive / exact:>10.0f}{steps * d / naive:>18.3e}")
    print(f"    {'overall':<11}{naive_total:>10.3f}{exact_total:>11.4f}{naive_total / exact_total:>10.0f}")

    steps = 10_000
    grid = schedule.grid(steps)
    print(f"\n    accuracy at T = {steps}: relative error of the naive 'steps' against pathkl "
          "('neg': steps whose naive KL < 0)")
    print(f"    {'family':<11}{'pathkl steps':>16}{'float64 naive':>16}{'rel err':>10}{'neg':>6}"
          f"{'float32 naive':>16}{'rel err':>10}{'neg':>6}")
    naive = {dtype: naive_steps(cov, grid.log_abar, accuracy_families, dtype, validate=False)
             for dtype in (torch.float64, torch.float32)}
    for name in accuracy_families:
        exact = path_kl(reference, grid, FAMILIES[name], first_step=first_step(name)).steps
        row = f"    {name:<11}{exact:>16.9e}"
        for dtype in (torch.float64, torch.float32):
            value, negative = naive[dtype][name]
            err = "n/a" if exact == 0 else f"{abs(value - exact) / exact:.1e}"
            row += f"{value:>16.6e}{err:>10}{negative:>6}"
        print(row)
    if "full" in accuracy_families:
        print("    (full: pathkl's value is exactly 0, so the naive value itself is its absolute error)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up (default: 3)")
    parser.add_argument("--naive-repeats", type=int, default=1,
                        help="timed repeats of the slow naive route at T = 1000 (default: 1)")
    parser.add_argument("--accuracy-families", default="beta,analytic,full",
                        help="families for the T = 10^4 accuracy check (default: beta,analytic,full; "
                        "diag equals analytic for a stationary image covariance)")
    parser.add_argument("--skip-naive", action="store_true", help="only part (a)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, "
          f"load average {load}\n")
    exact_throughput(args.repeats)
    if not args.skip_naive:
        naive_comparison(args.naive_repeats, [f for f in args.accuracy_families.split(",") if f])


if __name__ == "__main__":
    main()
