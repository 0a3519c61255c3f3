"""Speed and accuracy of the exact Gaussian path KL (pathkl) against a numpy loop and the naive dense route.

(a) The hard case: d = 12288 DISTINCT eigenvalues (``logspace(-2, 1, d)``, axis-aligned), vp-linear,
    T = 10^5 (``--steps``), all five families: pathkl's ``path_kl`` against a plain numpy loop over the
    steps (per step: the family's relative eigenvalues e by the same cancellation-free closed forms as
    pathkl.references.gaussian, a vector of length d in preallocated buffers, then sum phi(e) by the
    same series as pathkl.stable; math.fsum over the steps). Target: pathkl within 1.5x. Both run on one
    thread: pathkl's per-step loop always does, and numpy's BLAS (the dot products) is limited to one
    with OPENBLAS_NUM_THREADS=1 unless set otherwise. pathkl's time is the whole ``path_kl`` call
    (terminal KL, error bounds and checks included); for full, and diag of this axis-aligned
    covariance, it knows e = 0 and makes no pass over the eigenvalues, while the loop evaluates
    phi(0) as the per-step definition reads. Distinct eigenvalues matter: pathkl merges
    repeated ones (Basis.compress), which hides its per-step cost on image spectra (section (b): 12288
    eigenvalues, 457 distinct).
(b) pathkl at d = 12288 (preset ``image-3x64x64``), vp-linear, T = 1000, all five families:
    element-steps per second, T * d / seconds (target >= 1e8 on the 2-core development machine).
(c) The naive route at d = 256 (a 1x16x16 stationary image Gaussian, the same power-law spectrum):
    per step, dense d x d matrices ``H = -inv((1 - abar) I + abar S)``,
    ``Sigma* = (beta / alpha)(I + beta H)`` and the family's ``Sigma_t``, then
    ``torch.distributions.kl_divergence`` between two ``MultivariateNormal`` (steps batched in chunks),
    with ``abar``, ``alpha = abar_t / abar_{t-1}``, ``beta = 1 - alpha`` formed in the working dtype as
    a torch user commonly does. Reported: the speed ratio against pathkl at T = 1000 (float64), and at
    T = 10^4 the relative error of the naive ``steps`` in float32 and float64 against pathkl's value.

Timings: ``time.perf_counter``, the minimum of ``--repeats`` calls after one untimed call (the
machine is shared, so the load average is printed; in (a) pathkl and numpy alternate). pathkl runs
its per-step loop on one thread whatever ``--threads`` says (pathkl.references.gaussian);
``--threads`` sets torch's intra-op threads for everything else.

    python3 benchmarks/bench_gaussian_kl.py [--steps T] [--threads N] [--repeats R] [--naive-repeats R]
                                            [--skip-naive]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS on one thread, as pathkl's loop (a)

import numpy as np
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from pathkl.families import FAMILIES
from pathkl.pathspace import path_kl
from pathkl.presets import PRESETS, power_law_spectrum
from pathkl.references import GaussianReference
from pathkl.schedules import get_schedule

SCHEDULE = "vp-linear"
TARGET = 1e8
HARD_DIM = 12288
RATIO_TARGET = 1.5
# pathkl.stable's series: phi(u) = s (u - s^2 p(s^2)), s = u / (2 + u), p = 2 (1/3 + s^2/5 + ...).
ATANH_TAIL = [1.0 / (2 * k + 3) for k in range(14)]


def first_step(name: str) -> int:
    """The family's first finite step (beta_tilde's step t = 1 is infinite, beta~_1 = 0): every route
    sums from it."""
    return FAMILIES[name].first_step


def min_seconds(fn: Callable[[], object], repeats: int) -> float:
    return interleaved_min_seconds([fn], repeats)[0]


def interleaved_min_seconds(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """The minimum time of each function over ``repeats`` rounds, each round calling them in turn, so
    that a burst of load on the shared machine hits all of them alike."""
    times = [math.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i] = min(times[i], time.perf_counter() - start)
    return times


# ---- (a) the hard case: distinct eigenvalues, pathkl against a numpy loop over the steps ---------
def numpy_phi_sum(u: np.ndarray, s: np.ndarray, s2: np.ndarray, p: np.ndarray) -> float:
    """``sum_i phi(u_i)`` by pathkl.stable's series (its number of terms, from max s^2), computed in
    the buffers s, s2, p; where some |s| > 1/4 (early beta_tilde steps, u > 0) the direct formula there."""
    np.add(u, 2.0, out=s)
    np.divide(u, s, out=s)
    np.multiply(s, s, out=s2)
    s2_max = s2.max()
    in_series = None if s2_max <= 0.0625 else s2 <= 0.0625
    if in_series is not None:
        s2_max = s2[in_series].max(initial=0.0)
    terms = next((k for k in range(1, 14) if s2_max**k < 2.0**-56), 14) if s2_max > 0 else 1
    # Horner for 2 (1/3 + s^2/5 + ...), then u - s^2 (...): no fused multiply-add in numpy.
    np.multiply(s2, 2.0 * ATANH_TAIL[terms - 1], out=p)
    for coefficient in reversed(ATANH_TAIL[: terms - 1]):
        p += 2.0 * coefficient
        p *= s2
    np.subtract(u, p, out=p)
    if in_series is None:
        return float(np.dot(s, p))
    return float(np.where(in_series, s * p, u - np.log1p(u)).sum())


def numpy_steps(lam: np.ndarray, grid, name: str) -> float:
    """``steps`` of family ``name`` by a plain loop over the steps: per step the relative eigenvalues
    e (length d, in preallocated buffers) by the closed forms of pathkl.references.gaussian (with
    ``rho = (1 - abar_t) / abar_t``), then (1/2) sum phi(e); math.fsum over the steps."""
    beta, alpha, beta_tilde = (x.numpy() for x in (grid.beta, grid.alpha, grid.beta_tilde))
    abar, one_minus = grid.abar.numpy(), grid.one_minus_abar.numpy()
    rho = one_minus / abar
    lam_minus_one, delta = lam - 1.0, lam - lam.min()
    moments = np.stack([np.ones_like(lam), delta, lam]) / lam.size
    e, y, s, s2, p = (np.empty_like(lam) for _ in range(5))
    per_step = []
    for t in range(first_step(name), grid.T + 1):
        b, a = beta[t - 1], alpha[t - 1]
        if name == "beta":  # (beta / alpha) g, g = (lambda - 1) / (lambda + rho)
            np.add(lam, rho[t], out=e)
            np.divide(lam_minus_one, e, out=e)
            e *= b / a
        elif name == "beta_tilde":  # (gamma^2 / beta~) c, c = lambda / (1 + lambda / rho)
            np.multiply(lam, 1.0 / rho[t], out=e)
            e += 1.0
            np.divide(lam, e, out=e)
            e *= abar[t - 1] * b * b / one_minus[t] ** 2 / beta_tilde[t - 1]
        elif name == "analytic":  # k (g - mean g) / mean Sigma*, both from y = 1 / (lambda + rho)
            np.add(lam, rho[t], out=y)
            np.reciprocal(y, out=y)
            y0, y1, y_lambda = moments @ y
            scale = (b * b / a) / abar[t] / ((b / a) * (y_lambda + rho[t - 1] * y0))
            np.multiply(delta, y0 * scale, out=e)
            e -= y1 * scale
            e *= y
        else:  # full, and diag: an axis-aligned Sigma* is its own diagonal
            e.fill(0.0)
        per_step.append(0.5 * numpy_phi_sum(e, s, s2, p))
    return math.fsum(per_step)


def hard_case(steps: int, repeats: int) -> None:
    lam = np.logspace(-2.0, 1.0, HARD_DIM)
    reference = GaussianReference.from_eigenvalues(lam)
    distinct = reference.basis.compress(reference.eigenvalues)[0].numel()
    grid = get_schedule(SCHEDULE).grid(steps)
    print(f"(a) distinct eigenvalues: d = {HARD_DIM} ({distinct} distinct, logspace(-2, 1)), {SCHEDULE}, "
          f"T = {steps}; min of {repeats} run(s)")
    print(f"    {'family':<11}{'pathkl s':>10}{'numpy s':>10}{'ratio':>8}{'steps (KL)':>24}{'rel diff':>10}")
    worst = 0.0
    for name, family in FAMILIES.items():
        exact = path_kl(reference, grid, family, first_step=first_step(name)).steps
        loop = numpy_steps(lam, grid, name)
        ours, theirs = interleaved_min_seconds(
            [lambda f=family, n=name: path_kl(reference, grid, f, first_step=first_step(n)),
             lambda n=name: numpy_steps(lam, grid, n)], repeats)
        worst = max(worst, ours / theirs)
        diff = abs(exact - loop) / exact if exact else abs(loop)
        print(f"    {name:<11}{ours:>10.3f}{theirs:>10.3f}{ours / theirs:>8.2f}{exact:>24.15g}{diff:>10.1e}")
    verdict = "meets" if worst <= RATIO_TARGET else "MISSES"
    print(f"    worst ratio {worst:.2f} ({verdict} the {RATIO_TARGET}x target)")


# ---- (b) compressed image spectrum --------------------------------------------------------------
def exact_throughput(repeats: int) -> None:
    reference = PRESETS["image-3x64x64"][1]()
    distinct = reference.basis.compress(reference.eigenvalues)[0].numel()
    steps = 1000
    grid = get_schedule(SCHEDULE).grid(steps)
    work = steps * reference.dim
    print(f"\n(b) pathkl exact path KL: image-3x64x64 (d = {reference.dim}, {distinct} distinct), {SCHEDULE}, "
          f"T = {steps}")
    print(f"    {'family':<11}{'seconds':>10}{'element-steps/s':>18}{'steps (KL)':>24}")
    total = 0.0
    for name, family in FAMILIES.items():
        value = path_kl(reference, grid, family, first_step=first_step(name)).steps
        secs = min_seconds(lambda f=family, n=name: path_kl(reference, grid, f, first_step=first_step(n)), repeats)
        total += secs
        print(f"    {name:<11}{secs:>10.3f}{work / secs:>18.3e}{value:>24.15g}")
    overall = len(FAMILIES) * work / total
    verdict = "meets" if overall >= TARGET else "MISSES"
    print(f"    {'overall':<11}{total:>10.3f}{overall:>18.3e}   ({verdict} the {TARGET:.0e} target)")


# ---- (c) the naive dense route ------------------------------------------------------------------
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
    print(f"\n(c) naive dense route vs pathkl: 1x16x16 image Gaussian (d = {d}), {SCHEDULE}")
    print(f"    speed at T = {steps}, float64 (naive: dense Sigma*, Sigma_t per step, MultivariateNormal with")
    print(f"    default argument validation, kl_divergence; warm-up at T = 10, min of {repeats} run(s))")
    print(f"    {'family':<11}{'naive s':>10}{'pathkl s':>11}{'ratio':>10}{'naive el-steps/s':>18}")
    naive_total = exact_total = 0.0
    for name, family in FAMILIES.items():
        naive_steps(cov, warm, [name], torch.float64)
        naive = min_seconds(lambda n=name: naive_steps(cov, grid.log_abar, [n], torch.float64), repeats)
        exact = min_seconds(lambda f=family, n=name: path_kl(reference, grid, f, first_step=first_step(n)), 3)
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
    parser.add_argument("--steps", type=int, default=100_000, help="T of part (a) (default: 100000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, after one untimed run (default: 3)")
    parser.add_argument("--naive-repeats", type=int, default=1,
                        help="timed repeats of the slow naive route at T = 1000 (default: 1)")
    parser.add_argument("--accuracy-families", default="beta,analytic,full",
                        help="families for the T = 10^4 accuracy check (default: beta,analytic,full; "
                        "diag equals analytic for a stationary image covariance)")
    parser.add_argument("--skip-naive", action="store_true", help="only parts (a) and (b)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, "
          f"load average {load}\n")
    hard_case(args.steps, args.repeats)
    exact_throughput(args.repeats)
    if not args.skip_naive:
        naive_comparison(args.naive_repeats, [f for f in args.accuracy_families.split(",") if f])


if __name__ == "__main__":
    main()
