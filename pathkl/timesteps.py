"""diffusers' inference timesteps as pathkl chain indices and grids (docs/learned.md, "Bring your own
network").

diffusers (``DDPMScheduler`` / ``DDIMScheduler.set_timesteps``) indexes a training chain of N steps
0-based: its timestep ``t`` is the level ``alphas_cumprod[t] = prod_{m <= t+1} (1 - beta_m)``, pathkl's
chain level ``n = t + 1`` (:func:`pathkl.schedules.grid_from_chain` numbers the levels 0..N, 0 the
data). For K inference steps, ``timestep_spacing`` picks (descending, as diffusers lists them):

- ``"leading"``: ``t_k = k floor(N / K) + steps_offset``, k = K-1..0 (the largest is below N - 1 unless
  K divides N and the offset is N/K - 1: sampling then starts below the chain's end);
- ``"trailing"``: ``t_k = round(N - k N / K) - 1``, k = 0..K-1 (starts at N - 1, the chain's end);
- ``"linspace"``: ``t_k = round(k (N - 1) / (K - 1))``, k = K-1..0 (from N - 1 down to 0).

``round`` is numpy's, half to even, of the float64 values diffusers forms with ``np.arange`` and
``np.linspace``: at exact ties (e.g. 12.5) the float rounding of those values decides, so they are
formed here with the same numpy primitives. Sampling starts from ``N(0, I)`` at the largest timestep;
each step goes to the next listed one (DDPMScheduler, and DDIMScheduler with ``"leading"``), the last
to the data level: ``abar = 1`` (chain level 0; DDIM's ``set_alpha_to_one=True``) or
``alphas_cumprod[0]`` (level 1, ``set_alpha_to_one=False``).

Two diffusers artefacts are refused rather than followed: DDIMScheduler's ``step`` goes from ``t`` to
``t - N // K`` whatever the spacing, so with ``"trailing"`` or ``"linspace"`` where the listed
timesteps are not ``N // K`` apart it steps to levels it never lists and restarts the next step from
another (diffusers issue #9261); and ``np.arange(N, 0, -N / K)`` can hold K + 1 values, the last
``round(...) - 1 = -1`` (e.g. N = 1000, K = 61).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .schedules import DDPMLinear, Grid, grid_from_chain

SPACINGS = ("leading", "trailing", "linspace")
SCHEDULERS = ("ddpm", "ddim")


def diffusers_timesteps(spacing: str, *, num_train_timesteps: int, num_inference_steps: int,
                        steps_offset: int = 0) -> np.ndarray:
    """The K descending training timesteps (0-based) that diffusers' ``set_timesteps`` lists for
    ``timestep_spacing=spacing`` (module docstring; ``steps_offset`` acts on ``"leading"`` only)."""
    n, k = num_train_timesteps, num_inference_steps
    if spacing not in SPACINGS:
        raise InputError(f"unknown timestep spacing {spacing!r}; use one of {', '.join(SPACINGS)}")
    if not (isinstance(n, int) and isinstance(k, int) and 1 <= k <= n):
        raise InputError(f"need integers 1 <= num_inference_steps <= num_train_timesteps, got K = {k!r}, N = {n!r}")
    if spacing == "leading":
        values = steps_offset + (n // k) * np.arange(k - 1, -1, -1, dtype=np.int64)
    elif spacing == "linspace":
        values = np.rint(np.linspace(0.0, n - 1, k))[::-1].astype(np.int64)
    else:
        values = np.rint(np.arange(n, 0, -(n / k))).astype(np.int64) - 1
        if values.size != k:
            raise InputError(f"diffusers' trailing spacing lists {values.size} timesteps for K = {k}, N = {n}, the "
                             f"last {int(values[-1])} (float artefact of np.arange); choose another K")
    if values.min() < 0 or values.max() >= n:
        raise InputError(f"timesteps {int(values.min())}..{int(values.max())} fall outside the chain's 0..{n - 1} "
                         f"(steps_offset = {steps_offset})")
    return values


def diffusers_chain_indices(timesteps, *, num_train_timesteps: int, scheduler: str = "ddpm",
                  set_alpha_to_one: bool = True) -> list[int]:
    """pathkl chain levels ``0 = i_0 < ... < i_K`` of diffusers' descending ``timesteps`` (level
    ``t + 1`` for timestep t; the data level first: 0, or 1 for DDIM with ``set_alpha_to_one=False``).

    ``scheduler="ddim"`` checks that DDIMScheduler's own step ``t -> t - N // K`` follows the listed
    timesteps (module docstring), and refuses it where it does not."""
    if scheduler not in SCHEDULERS:
        raise InputError(f"unknown scheduler {scheduler!r}; use ddpm or ddim")
    steps = np.asarray(timesteps, dtype=np.int64)
    if steps.ndim != 1 or steps.size < 1 or not (np.diff(steps) < 0).all():
        raise InputError("diffusers timesteps must be a strictly decreasing list of integers")
    first = 0 if set_alpha_to_one or scheduler == "ddpm" else 1
    if scheduler == "ddim":
        ratio = num_train_timesteps // steps.size
        followed = np.append(steps[1:], -1)
        stepped = np.where(steps - ratio >= 0, steps - ratio, -1)
        if not (followed == stepped).all():
            bad = int(np.flatnonzero(followed != stepped)[0])
            raise InputError(f"DDIMScheduler steps from timestep {int(steps[bad])} to {int(stepped[bad])} (t - N // K), "
                             f"not to the next listed {int(followed[bad])}: no chain (diffusers issue #9261); "
                             "use the leading spacing or the DDPM convention")
    indices = [first, *(int(t) + 1 for t in steps[::-1])]
    if indices[1] <= first:
        raise InputError(f"the last step would go from chain level {indices[1]} to {first}: with "
                         "set_alpha_to_one=False the smallest timestep must be >= 1")
    return indices


def grid_from_diffusers(spacing: str, *, num_inference_steps: int, num_train_timesteps: int = 1000,
                        steps_offset: int = 0, scheduler: str = "ddpm") -> Grid:
    """The pathkl grid of the levels diffusers' sampler visits on its default ``"linear"`` chain
    (``betas = linspace(1e-4, 0.02, 1000)``, pathkl's ``ddpm-linear`` of length 1000), from
    :func:`diffusers_timesteps` and :func:`diffusers_chain_indices`, ending at the data (DDIM's
    ``set_alpha_to_one=True``; with False diffusers stops at chain level 1, which
    :func:`diffusers_chain_indices` gives but a grid, starting at the data, cannot). Its last level is the
    largest timestep's, below the chain's end for ``"leading"`` (sampling starts from N(0, I) there)."""
    if num_train_timesteps != 1000:
        raise InputError("diffusers' linear betas equal pathkl's ddpm-linear chain only for N = 1000 (pathkl "
                         f"rescales its betas by 1000 / N), got N = {num_train_timesteps}")
    steps = diffusers_timesteps(spacing, num_train_timesteps=num_train_timesteps,
                                num_inference_steps=num_inference_steps, steps_offset=steps_offset)
    indices = diffusers_chain_indices(steps, num_train_timesteps=num_train_timesteps, scheduler=scheduler)
    return grid_from_chain(DDPMLinear(), num_train_timesteps, indices, to_end=False)
