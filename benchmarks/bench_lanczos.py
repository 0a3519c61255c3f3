"""Benchmarks of the Lanczos Gaussian sampler (issues 4 and 13); prints the figures.

1. Cost of one LGS reverse step with k = 3, in units of one posterior-mean evaluation:
   (a) JVP route on a small torch MLP denoiser, (b) closed-form route on the image Gaussian.
2. One reverse step at d = 3072 (image Gaussian 3x32x32), batch 64: LGS(k = 3) vs a dense Cholesky
   of the exact covariance vs rademacher:100 -- time ratios and covariance errors.
3. Side by side with matfree's ``funm_lanczos_sym`` (JAX, float64, its default full
   reorthogonalisation, jit + vmap over the batch) at equal k: ``A^{1/2} z`` for a dense SPD
   1024 x 1024 matrix with distinct eigenvalues (log-spaced on [1, 1e3]), batch 64, applied as
   (64, 1024) products. Columns: the minimum over interleaved repeats (the machine may be shared)
   and the relative error against the dense eigendecomposition, for pathkl's ``lanczos_matfun``
   (the sample only, the same work as matfree), pathkl's ``lanczos_sampler`` (also its a posteriori
   error estimate: one more small eigendecomposition), and matfree when importable (``pip install
   jax matfree``; not a pathkl dependency). Ratios are pathkl / matfree (below 1: pathkl faster).

Usage: python3 benchmarks/bench_lanczos.py [--device cpu|cuda] [--dtype float64|float32]
                                            [--sections 1,2,3] [--threads 2] [--repeats 15]
Times in sections 1-2 are medians of repeated runs (wall clock, synchronised on CUDA).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import time

import numpy as np
import torch

from pathkl.covariances import ReverseStep
from pathkl.lanczos import lanczos_matfun, lanczos_sampler
from pathkl.matvecs import (
    DifferenceCovariance,
    JvpCovariance,
    closed_form_cov_matvec,
    rademacher_diagonal,
)
from pathkl.presets import PRESETS
from pathkl.sampling import to_device
from pathkl.schedules import get_schedule


def median_time(fn, device, repeats=7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def lgs_step(denoiser_products, step, x, z, k):
    """One reverse step: k products (and the mean) then x_{t-1} = mean + LGS noise."""
    noise = lanczos_sampler(k)(denoiser_products, z).sample
    return step.mean(x, denoiser_products.denoised()) + noise


def cost_jvp_route(device, dtype, k=3):
    d, hidden, n = 3072, 1024, 64
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden),
                              torch.nn.SiLU(), torch.nn.Linear(hidden, d)).to(device=device, dtype=dtype)
    for p in net.parameters():
        p.requires_grad_(False)
    grid = get_schedule("vp-linear").grid(20)
    step = ReverseStep.ddim(grid, 10)
    x = torch.randn(n, d, device=device, dtype=dtype)
    z = torch.randn(n, d, device=device, dtype=dtype)
    one_eval = median_time(lambda: net(x), device)
    one_jvp = median_time(lambda: torch.func.jvp(net, (x,), (z,)), device)
    full_step = median_time(lambda: lgs_step(JvpCovariance(net, x, step), step, x, z, k), device)
    print(f"[1a] JVP route, MLP {d}-{hidden}-{hidden}-{d} (SiLU), batch {n}, {dtype}, {device}:")
    print(f"     one denoiser evaluation {one_eval * 1e3:.2f} ms; one JVP = {one_jvp / one_eval:.2f} evaluations")
    print(f"     one LGS(k={k}) reverse step = {full_step / one_eval:.2f} evaluations (target <= {k + 1.5})")
    difference_step = median_time(lambda: lgs_step(DifferenceCovariance(net, x, step), step, x, z, k), device)
    exact = lanczos_sampler(k)(JvpCovariance(net, x, step), z).sample
    approx = lanczos_sampler(k)(DifferenceCovariance(net, x, step), z).sample
    gap = float(torch.linalg.vector_norm(approx - exact) / torch.linalg.vector_norm(exact))
    print(f"     forward-difference route: one LGS(k={k}) reverse step = {difference_step / one_eval:.2f}"
          f" evaluations; |y_diff - y_jvp| / |y_jvp| = {gap:.1e}")


def cost_closed_route(device, dtype, k=3):
    ref = to_device(PRESETS["image-3x32x32"][1](), device)
    grid = get_schedule("vp-linear").grid(20)
    step = ReverseStep.ddim(grid, 10)
    step = dataclasses.replace(step, level=to_device(step.level, device))
    n = 64
    x = ref.sample(n, None).to(device)
    z = torch.randn(n, ref.dim, device=device, dtype=torch.float64)
    one_eval = median_time(lambda: ref.posterior_mean(x, step.level), device)

    def full_step():
        noise = lanczos_sampler(k)(closed_form_cov_matvec(ref, x, step), z).sample
        return step.mean(x, ref.posterior_mean(x, step.level)) + noise

    total = median_time(full_step, device)
    print(f"[1b] closed-form route, image Gaussian 3x32x32 (FFT posterior mean), batch {n}, float64, {device}:")
    print(f"     one posterior-mean evaluation {one_eval * 1e3:.2f} ms;"
          f" one LGS(k={k}) reverse step = {total / one_eval:.2f} evaluations (target <= {k + 1.5})")


def step_comparison(device, t):
    ref = to_device(PRESETS["image-3x32x32"][1](), device)
    grid = get_schedule("vp-linear").grid(20)
    s = ReverseStep.ddim(grid, t)
    step = dataclasses.replace(s, level=to_device(s.level, device))
    n, d = 64, ref.dim
    gen = torch.Generator(device=device).manual_seed(0)
    x = ref.sample(n, None).to(device)
    z = torch.randn(n, d, device=device, dtype=torch.float64, generator=gen)
    matvec = closed_form_cov_matvec(ref, x, step)
    values = step.s2 + step.lam**2 * ref.posterior_eigenvalues(step.level)
    sigma = ref.basis.dense(values)
    sigma = 0.5 * (sigma + sigma.T)
    exact_root_z = ref.basis.apply(values.sqrt(), z)
    sigma_norm = torch.linalg.matrix_norm(sigma)

    def cholesky():
        return torch.linalg.cholesky(sigma) @ z.T

    def lgs():
        return lanczos_sampler(3)(matvec, z).sample

    def rademacher():
        est = rademacher_diagonal(matvec, (n, d), 100, generator=gen, device=device)
        return est.diagonal.clamp_min(step.s2).sqrt() * z

    t_chol, t_lgs, t_rad = (median_time(f, device, repeats=3) for f in (cholesky, lgs, rademacher))
    chol = torch.linalg.cholesky(sigma)
    err_chol = float(torch.linalg.matrix_norm(chol @ chol.T - sigma) / sigma_norm)
    est = rademacher_diagonal(matvec, (n, d), 100, generator=gen, device=device).diagonal.clamp_min(step.s2)
    err_rad = float((torch.linalg.matrix_norm(torch.diag_embed(est) - sigma) / sigma_norm).mean())
    y = lgs()
    root_err = float((torch.linalg.vector_norm(y - exact_root_z, dim=1) / torch.linalg.vector_norm(exact_root_z, dim=1)).mean())
    # Covariance of the LGS draws, direction by direction in the eigenbasis (N = 4096 draws); the
    # same statistic on exact draws Sigma^{1/2} z from the same z is the Monte Carlo floor.
    big = torch.randn(4096, d, device=device, dtype=torch.float64, generator=gen)
    xb = ref.sample(4096, None).to(device)
    y_big = lanczos_sampler(3)(closed_form_cov_matvec(ref, xb, step), big).sample
    exact_big = ref.basis.apply(values.sqrt(), big)
    fourier_var = lambda w: (torch.fft.rfft2(w.reshape(-1, 3, 32, 32)).abs() ** 2).mean(0)
    lgs_dev = float((fourier_var(y_big) / fourier_var(exact_big) - 1).abs().max())
    diag_only = float(torch.linalg.matrix_norm(torch.diag(sigma.diagonal()) - sigma) / sigma_norm)
    print(f"[2] one reverse step, d = {d}, batch {n}, step t = {t} of T = 20 (tau = {float(grid.taus[t]):.2f}),"
          f" cond(Sigma*) = {float(values.max() / values.min()):.3g}, {device}:")
    print(f"     dense Cholesky      {t_chol * 1e3:9.1f} ms  (x{t_chol / t_lgs:6.1f} LGS)  |LL^T - S|_F/|S|_F = {err_chol:.1e}"
          f"  (one shared covariance; state-dependent ones need {n} factorisations)")
    print(f"     LGS k = 3           {t_lgs * 1e3:9.1f} ms  (x{1.0:6.1f} LGS)  |y - S^1/2 z|/|S^1/2 z| = {root_err:.1e};"
          f" max Fourier-mode variance ratio deviation {lgs_dev:.1e} (vs exact draws, same z)")
    print(f"     rademacher:100      {t_rad * 1e3:9.1f} ms  (x{t_rad / t_lgs:6.1f} LGS)  |diag(est) - S|_F/|S|_F = {err_rad:.2e}"
          f"  (exact diagonal: {diag_only:.2e})")


def matfree_sampler(k: int):
    """matfree's ``A^{1/2} z`` with k products, batched by ``vmap`` and compiled; None without JAX."""
    if importlib.util.find_spec("jax") is None or importlib.util.find_spec("matfree") is None:
        return None
    import jax
    import jax.numpy as jnp
    from matfree import decomp, funm

    jax.config.update("jax_enable_x64", True)
    sqrt_times = funm.funm_lanczos_sym(funm.dense_funm_sym_eigh(jnp.sqrt), decomp.tridiag_sym(k))
    batched = jax.jit(jax.vmap(lambda v, a: sqrt_times(lambda s, m: m @ s, v, a), in_axes=(0, None)))
    return lambda z, a: batched(z, a).block_until_ready()


def interleaved_minima(fns: dict, repeats: int) -> dict:
    """Minimum wall time of each callable over ``repeats`` rounds, one call of each per round, so
    that a busy spell on a shared machine hits every column alike (the first call warms up)."""
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def matfree_comparison(repeats: int, ks=(3, 8, 20), d=1024, n=64) -> None:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=gen))
    lam = torch.logspace(0, 3, d, dtype=torch.float64)
    a = (q * lam) @ q.T
    a = 0.5 * (a + a.T)
    z = torch.randn(n, d, dtype=torch.float64, generator=gen)
    exact = z @ ((q * lam.sqrt()) @ q.T)
    relative_error = lambda y: float((torch.linalg.vector_norm(torch.as_tensor(np.asarray(y)) - exact, dim=1)
                                      / torch.linalg.vector_norm(exact, dim=1)).max())
    matvec = lambda v: v @ a
    a_np, z_np = a.numpy(), z.numpy()
    print(f"[3] A^1/2 z at equal k: dense SPD d = {d} (eigenvalues log-spaced on [1, 1e3]), batch {n}, float64,"
          f" {torch.get_num_threads()} torch threads; min of {repeats} interleaved repeats")
    print("      k   one product | pathkl matfun  pathkl sampler  matfree     | matfun/matfree sampler/matfree"
          " | max rel. error: pathkl  matfree")
    product = interleaved_minima({"mv": lambda: matvec(z)}, repeats)["mv"]
    for k in ks:
        sampler = lanczos_sampler(k)
        fns = {"matfun": lambda k=k: lanczos_matfun(matvec, z, k, torch.sqrt),
               "sampler": lambda sampler=sampler: sampler(matvec, z)}
        theirs = matfree_sampler(k)
        if theirs is not None:
            fns["matfree"] = lambda theirs=theirs: theirs(z_np, a_np)
        t = interleaved_minima(fns, repeats)
        ours_error = relative_error(sampler(matvec, z).sample)
        if theirs is None:
            print(f"    {k:3d}  {product:10.4f} s | {t['matfun']:10.4f} s  {t['sampler']:11.4f} s  (matfree not"
                  f" importable) | max rel. error {ours_error:.3e}")
            continue
        print(f"    {k:3d}  {product:10.4f} s | {t['matfun']:10.4f} s  {t['sampler']:11.4f} s  {t['matfree']:8.4f} s"
              f" | {t['matfun'] / t['matfree']:14.2f} {t['sampler'] / t['matfree']:15.2f}"
              f" | {ours_error:22.3e}  {relative_error(theirs(z_np, a_np)):.3e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--sections", default="1,2,3", help="comma-separated sections to run (default all)")
    parser.add_argument("--threads", type=int, default=2, help="torch and XLA CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved repeats in section 3 (default 15)")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if "1" in sections:
        cost_jvp_route(device, getattr(torch, args.dtype))
        cost_closed_route(device, torch.float64)
    if "2" in sections:
        for t in (2, 10):
            step_comparison(device, t)
    if "3" in sections:
        matfree_comparison(args.repeats)


if __name__ == "__main__":
    main()
