"""Schedules and grids against 40-digit mpmath, and the input checks."""

import mpmath as mp
import numpy as np
import pytest
import torch

from pathkl.errors import InputError
from pathkl.schedules import (
    Cosine,
    DDPMLinear,
    VPLinear,
    get_schedule,
    grid_from_chain,
    grid_from_taus,
)

from . import mp_reference as ref

# The float64 quantities are a few roundings away from exact; 1e-12 relative leaves a 50x margin while
# a single cancellation (e.g. 1 - abar formed from abar near tau = 0) would fail by orders of magnitude.
REL = 1e-12


def _mp_quantities(grid, name):
    taus = [mp.mpf(float(t)) for t in grid.taus]
    alpha = ref.alphas(name, taus, chain_length=grid.T if name == "ddpm-linear" else None)
    abar = ref.abars(alpha)
    beta = [1 - a for a in alpha]
    beta_tilde = [(1 - abar[t - 1]) * beta[t - 1] / (1 - abar[t]) for t in range(1, grid.T + 1)]
    return abar, beta, beta_tilde


def _check(grid, name, steps):
    abar, beta, beta_tilde = _mp_quantities(grid, name) if grid.T <= 10**4 else (None, None, None)
    for t in steps:
        assert float(grid.beta[t - 1]) == pytest.approx(float(beta[t - 1]), rel=REL)
        assert float(grid.one_minus_abar[t]) == pytest.approx(float(1 - abar[t]), rel=REL)
        assert float(grid.abar[t]) == pytest.approx(float(abar[t]), rel=REL)
        assert float(grid.beta_tilde[t - 1]) == pytest.approx(float(beta_tilde[t - 1]), rel=REL, abs=0)


@pytest.mark.parametrize("name", ["vp-linear", "cosine", "ddpm-linear"])
@pytest.mark.parametrize("T", [2, 10, 1000])
def test_per_step_quantities_match_mpmath(name, T):
    if name == "ddpm-linear" and T <= 20:
        with pytest.raises(InputError, match="at least 21"):
            get_schedule(name).grid(T)
        return
    grid = get_schedule(name).grid(T)
    _check(grid, name, range(1, T + 1))


@pytest.mark.parametrize("name", ["vp-linear", "cosine"])
def test_per_step_quantities_at_a_million_steps(name):
    """T = 10^6: beta_t ~ 1e-7 and 1 - abar_1 ~ 1e-7 keep full relative precision (sampled steps)."""
    T = 10**6
    grid = get_schedule(name).grid(T)
    steps = [1, 2, 3, 10, 1000, 123457, 500000, 999999, T]
    taus = grid.taus.tolist()
    for t in steps:
        log_prev, log_now = ref.log_abar(name, taus[t - 1]), ref.log_abar(name, taus[t])
        alpha = mp.exp(log_now - log_prev)
        if name == "cosine" and alpha < 1 - mp.mpf(0.999):
            continue  # the capped last step is covered at small T
        assert float(grid.beta[t - 1]) == pytest.approx(float(1 - alpha), rel=REL)
        assert float(grid.one_minus_abar[t]) == pytest.approx(float(-mp.expm1(log_now)), rel=REL)


def test_cosine_cap_binds_only_at_the_last_step_and_is_applied():
    grid = Cosine().grid(100)
    assert float(grid.beta[-1]) == pytest.approx(0.999, rel=1e-15)
    assert (grid.beta[:-1] < 0.999).all()
    assert float(grid.abar[-1]) == pytest.approx(float(grid.abar[-2]) * 1e-3, rel=1e-12)


def test_chain_subsequence_matches_products_of_the_chain():
    grid = grid_from_chain(DDPMLinear(), 1000, [0, 1, 10, 300, 999, 1000])
    alpha = ref.alphas("ddpm-linear", chain_length=1000)
    abar = ref.abars(alpha)
    for t, i in enumerate([0, 1, 10, 300, 999, 1000]):
        assert float(grid.one_minus_abar[t]) == pytest.approx(float(1 - abar[i]), rel=REL, abs=0)
    assert grid.T == 5


def test_continuous_rates_are_minus_log_abar_derivatives():
    for schedule in (VPLinear(), Cosine()):
        for tau in (0.0, 0.3, 0.9):
            with mp.workdps(30):
                expected = -mp.diff(lambda u, name=schedule.name: ref.log_abar(name, u), mp.mpf(tau))
            got = float(schedule.beta_rate(torch.tensor(tau, dtype=torch.float64)))
            assert got == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize(
    "taus, message",
    [
        ([0.0, 0.5, 0.4, 1.0], "strictly increasing"),
        ([0.1, 0.5, 1.0], "start at tau = 0"),
        ([0.0, 0.5, 0.9], "end at tau = 1"),
        ([0.0, float("nan"), 1.0], "finite"),
        ([0.0], "at least two"),
    ],
)
def test_bad_grids_are_refused(taus, message):
    with pytest.raises(InputError, match=message):
        grid_from_taus(VPLinear(), taus)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(InputError, match="integer >= 1"):
        VPLinear().grid(steps)


def test_bad_chain_subsequences_are_refused():
    for idx in ([0, 5, 5, 100], [1, 50, 100], [0, 50, 99]):
        with pytest.raises(InputError, match="strictly from 0"):
            grid_from_chain(DDPMLinear(), 100, idx)
    with pytest.raises(InputError, match="integers"):
        grid_from_chain(DDPMLinear(), 100, np.array([0.0, 50.0, 100.0]))
    with pytest.raises(InputError, match="unknown schedule"):
        get_schedule("linear")
