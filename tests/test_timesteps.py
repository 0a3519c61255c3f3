"""pathkl.timesteps against diffusers' own formulas, written here from its source.

``set_timesteps`` of DDIMScheduler and DDPMScheduler (huggingface/diffusers,
src/diffusers/schedulers/scheduling_ddim.py and scheduling_ddpm.py at commit 58eb52c0, identical in
both), ``step``'s ``prev_timestep`` of DDIMScheduler and ``previous_timestep`` of DDPMScheduler, and
the levels ``alphas_cumprod = cumprod(1 - linspace(beta_start, beta_end, N))`` (float64 here; diffusers
keeps float32). diffusers itself is not a dependency: its expressions are copied below as they read.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pathkl.errors import InputError
from pathkl.timesteps import diffusers_chain_indices, diffusers_timesteps, grid_from_diffusers


def diffusers_set_timesteps(spacing, num_train_timesteps, num_inference_steps, steps_offset):
    """DDIMScheduler.set_timesteps, as in diffusers' source (config fields as arguments)."""
    if spacing == "linspace":
        timesteps = (np.linspace(0, num_train_timesteps - 1, num_inference_steps)
                     .round()[::-1].copy().astype(np.int64))
    elif spacing == "leading":
        step_ratio = num_train_timesteps // num_inference_steps
        timesteps = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1].copy().astype(np.int64)
        timesteps += steps_offset
    elif spacing == "trailing":
        step_ratio = num_train_timesteps / num_inference_steps
        timesteps = np.round(np.arange(num_train_timesteps, 0, -step_ratio)).astype(np.int64)
        timesteps -= 1
    return timesteps


def diffusers_ddpm_levels(timesteps, alphas_cumprod):
    """The (abar_t, abar_prev) pairs DDPMScheduler.step visits: prev from previous_timestep (the next
    listed timestep, -1 after the last) and ``alpha_prod_t_prev = alphas_cumprod[prev_t] if prev_t >= 0
    else self.one``."""
    pairs = []
    for index, t in enumerate(timesteps):
        prev_t = timesteps[index + 1] if index < len(timesteps) - 1 else -1
        pairs.append((alphas_cumprod[t], alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)))
    return pairs


def diffusers_ddim_levels(timesteps, alphas_cumprod, num_train_timesteps, final_alpha_cumprod):
    """DDIMScheduler.step: ``prev_timestep = timestep - num_train_timesteps // num_inference_steps``."""
    pairs = []
    for t in timesteps:
        prev_timestep = t - num_train_timesteps // len(timesteps)
        pairs.append((alphas_cumprod[t], alphas_cumprod[prev_timestep] if prev_timestep >= 0 else final_alpha_cumprod))
    return pairs


CASES = [(n, k, offset) for n in (50, 100, 1000) for k in (1, 2, 3, 7, 10, 12, 20, 47, 50, 61, 64, 100, 999)
         if k <= n for offset in (0, 1)]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_are_diffusers_set_timesteps(spacing):
    """Every case: the same list, or (trailing) a refusal exactly where diffusers lists K + 1 values."""
    for n, k, offset in CASES:
        want = diffusers_set_timesteps(spacing, n, k, offset if spacing == "leading" else 0)
        if want.size != k or want.min() < 0 or want.max() >= n:
            with pytest.raises(InputError):
                diffusers_timesteps(spacing, num_train_timesteps=n, num_inference_steps=k, steps_offset=offset)
            continue
        got = diffusers_timesteps(spacing, num_train_timesteps=n, num_inference_steps=k, steps_offset=offset)
        assert got.tolist() == want.tolist(), (spacing, n, k, offset)


def test_the_refused_trailing_case_is_real():
    """N = 1000, K = 61: diffusers' trailing list ends at -1, one entry too many."""
    listed = diffusers_set_timesteps("trailing", 1000, 61, 0)
    assert listed.size == 62 and listed[-1] == -1


@pytest.mark.parametrize("spacing,offset", [("leading", 1), ("leading", 0), ("trailing", 0), ("linspace", 0)])
@pytest.mark.parametrize("k", [10, 50, 13])
def test_grid_levels_are_the_levels_diffusers_ddpm_visits(spacing, offset, k):
    """Each grid step t goes from abar_t to abar_{t-1}; DDPMScheduler.step goes from alphas_cumprod[t]
    to alphas_cumprod[prev_t]: the same pairs, in order (float64 cumprod against pathkl's segment sums
    of log1p: 1e-12 relative)."""
    n = 1000
    alphas_cumprod = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, n, dtype=torch.float64), 0)
    timesteps = diffusers_set_timesteps(spacing, n, k, offset)
    grid = grid_from_diffusers(spacing, num_inference_steps=k, steps_offset=offset)
    assert grid.T == k
    pairs = diffusers_ddpm_levels(timesteps, alphas_cumprod)
    for step, (abar, abar_prev) in zip(range(grid.T, 0, -1), pairs, strict=True):
        assert float(grid.abar[step]) == pytest.approx(float(abar), rel=1e-12)
        assert float(grid.abar[step - 1]) == pytest.approx(float(abar_prev), rel=1e-12)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_leading_follows_its_own_step_and_final_level(set_alpha_to_one):
    """DDIMScheduler.step's pairs (its own prev_timestep, final_alpha_cumprod) are the chain levels'
    (set_alpha_to_one=False ends at level 1, so only diffusers_chain_indices, not a grid, has it)."""
    n, k = 1000, 20
    alphas_cumprod = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, n, dtype=torch.float64), 0)
    final = torch.tensor(1.0, dtype=torch.float64) if set_alpha_to_one else alphas_cumprod[0]
    timesteps = diffusers_set_timesteps("leading", n, k, 1)
    indices = diffusers_chain_indices(timesteps, num_train_timesteps=n, scheduler="ddim", set_alpha_to_one=set_alpha_to_one)
    levels = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod])  # chain level i: abar_i
    pairs = diffusers_ddim_levels(timesteps, alphas_cumprod, n, final)
    for step, (abar, abar_prev) in zip(range(k, 0, -1), pairs, strict=True):
        assert float(levels[indices[step]]) == float(abar)
        assert float(levels[indices[step - 1]]) == float(abar_prev)
    if set_alpha_to_one:
        grid = grid_from_diffusers("leading", num_inference_steps=k, steps_offset=1, scheduler="ddim")
        assert float(grid.abar[-1]) == pytest.approx(float(alphas_cumprod[timesteps[0]]), rel=1e-12)


def test_ddim_off_its_own_list_is_refused():
    """trailing, K = 13: DDIM steps 999 -> 923 but lists 922 next (diffusers issue #9261)."""
    timesteps = diffusers_set_timesteps("trailing", 1000, 13, 0)
    prev = [int(t) - 1000 // 13 for t in timesteps]
    assert prev[0] != timesteps[1]  # the artefact, by diffusers' own formula
    with pytest.raises(InputError, match="#9261"):
        diffusers_chain_indices(timesteps, num_train_timesteps=1000, scheduler="ddim")
    assert diffusers_chain_indices(timesteps, num_train_timesteps=1000) == [0, *(int(t) + 1 for t in timesteps[::-1])]


def test_bad_input_is_refused_in_one_line():
    cases = [
        lambda: diffusers_timesteps("uniform", num_train_timesteps=1000, num_inference_steps=10),
        lambda: diffusers_timesteps("leading", num_train_timesteps=1000, num_inference_steps=0),
        lambda: diffusers_timesteps("leading", num_train_timesteps=10, num_inference_steps=20),
        lambda: diffusers_timesteps("leading", num_train_timesteps=1000, num_inference_steps=10, steps_offset=100),
        lambda: diffusers_chain_indices([5, 7], num_train_timesteps=1000),
        lambda: diffusers_chain_indices([10, 0], num_train_timesteps=1000, scheduler="ddim", set_alpha_to_one=False),
        lambda: diffusers_chain_indices([10, 0], num_train_timesteps=1000, scheduler="pndm"),
        lambda: grid_from_diffusers("trailing", num_inference_steps=10, num_train_timesteps=500),
    ]
    for case in cases:
        with pytest.raises(InputError) as err:
            case()
        assert "\n" not in str(err.value)
