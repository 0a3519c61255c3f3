"""The step-index rule (pathkl.rules.stepsum) against every step evaluated: its stated errors are
claims, so on smooth sequences, on kinks, on noise and on mixture chains the true error of every step
and of the sum must be within them."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pathkl.families import FAMILIES
from pathkl.references import MixtureReference
from pathkl.rules import quadrature as qr
from pathkl.rules.stepsum import interpolated_steps
from pathkl.schedules import DTYPE, VPLinear


def _check(exact: torch.Tensor, own_error: torch.Tensor, rtol: float, log_scale: torch.Tensor | None = None):
    """Interpolate ``exact`` (evaluated with ``own_error``) and assert every claim; returns which
    steps were evaluated."""
    def evaluate(steps, rtol, atol):
        return exact[steps - 1], own_error[steps - 1]

    result = interpolated_steps(evaluate, exact.numel(), rtol=rtol, log_scale=log_scale)
    values, done = result.values, result.evaluated
    assert (values - exact).abs().le(result.errors + own_error).all()
    assert abs(math.fsum((values - exact).tolist())) <= result.sum_error + float(own_error.sum())
    assert result.sum_error <= float(result.errors.sum()) * (1 + 1e-12)
    assert torch.equal(values[done], exact[done])
    return done


bumps = st.lists(st.tuples(st.floats(-0.2, 1.2), st.floats(0.03, 0.5), st.floats(0.1, 10.0)), min_size=1, max_size=4)


@settings(deadline=None)
@given(bumps, st.integers(100, 6000), st.sampled_from([1e-4, 1e-6, 1e-9]))
def test_smooth_sequences_are_within_their_errors(shape, T, rtol):
    """``v_t = T^-3 f(t / T)`` with f a sum of Gaussian bumps (widths down to 0.03 of the chain), the
    shape of a step KL on a smooth schedule; rounding-level errors of the evaluated steps."""
    tau = torch.arange(1, T + 1, dtype=DTYPE) / T
    f = sum(height * torch.exp(-0.5 * ((tau - centre) / width) ** 2) for centre, width, height in shape)
    exact = (1e-3 + f) / T**3
    _check(exact, 1e-15 * exact, rtol)


def _linear_beta(T: int) -> torch.Tensor:
    """``beta(tau_mid) / T`` of the linear schedule 0.1 + 19.9 tau, smooth in t to rounding (the grid's
    own beta_t carry ~T ulps from ``tau_t - tau_(t-1)``, noise that no interpolant is asked to see);
    it vanishes ``T / 199`` steps before step 1."""
    return (0.1 + 19.9 * (torch.arange(1, T + 1, dtype=DTYPE) - 0.5) / T) / T


@settings(deadline=None)
@given(bumps, st.integers(1000, 8000), st.sampled_from([1e-6, 1e-9]), st.integers(0, 4))
def test_a_known_factor_is_divided_out_and_the_claims_hold_whatever_it_is(shape, T, rtol, power):
    """``v_t = beta_t^3 f(t / T)``: the claims hold with ``log_scale = power * log beta_t`` for every
    power (a wrong factor may cost evaluations, never honesty)."""
    tau = torch.arange(1, T + 1, dtype=DTYPE) / T
    beta = _linear_beta(T)
    f = 1.0 + sum(height * torch.exp(-0.5 * ((tau - centre) / width) ** 2) for centre, width, height in shape)
    exact = beta**3 * f
    _check(exact, 1e-15 * exact, rtol, log_scale=power * torch.log(beta))


def test_the_right_factor_spares_the_first_panels():
    """The same at T = 4096 with f peaked at low noise (as a mixture's step KLs are, so that the first
    panels hold a small share of the budget): without the factor most of the first 128 steps are
    evaluated (the nests converge like 3^-n there, so the panels split down to short ones); with
    ``beta^3`` divided out, the two panels' 9 nodes each do."""
    T = 4096
    tau = torch.arange(1, T + 1, dtype=DTYPE) / T
    beta = _linear_beta(T)
    exact = beta**3 * (1.0 + 1e6 * torch.exp(-tau / 0.02))
    plain = _check(exact, 1e-15 * exact, 1e-6)
    scaled = _check(exact, 1e-15 * exact, 1e-6, log_scale=3 * torch.log(beta))
    assert int(scaled[:128].sum()) == 18 and int(plain[:128].sum()) > 64


def test_a_nest_exact_to_rounding_is_converged():
    """``log v`` linear in t: the nests agree to rounding (E1 ~ E2 ~ 1e-16 of the sum), which is
    convergence, not its failure; a few nodes suffice, within the claims."""
    T = 4096
    exact = torch.exp(torch.arange(1, T + 1, dtype=DTYPE) / T) / T**3
    assert int(_check(exact, 1e-15 * exact, 1e-6).sum()) <= 120


@settings(deadline=None)
@given(st.integers(200, 3000), st.floats(0.05, 0.95), st.floats(1e-3, 1.0))
def test_a_kink_is_never_interpolated_across(T, where, jump):
    """A kink (and a jump) in the sequence: the claims hold, the steps around it are evaluated."""
    t = torch.arange(1, T + 1, dtype=DTYPE)
    kink = round(where * T)
    exact = 1.0 + (t - kink).abs() / T + jump * (t > kink)
    _check(exact, torch.zeros_like(exact), 1e-6)


@settings(deadline=None)
@given(st.integers(2, 300))
def test_an_infinite_step_takes_no_part_of_the_budget(T):
    """Step 1 +inf (beta_tilde's, a point mass's): the finite steps are asked for the tolerances they
    get without it (shares of the finite sum, never NaN), and their claims hold."""
    t = torch.arange(1, T + 1, dtype=DTYPE)
    exact = torch.where(t == 1, math.inf, 1.0 / t**2)
    asked = []

    def evaluate(steps, rtol, atol):
        asked.append(atol)
        return exact[steps - 1], torch.zeros(steps.numel(), dtype=DTYPE)

    result = interpolated_steps(evaluate, T, rtol=1e-6)
    assert all(torch.isfinite(atol).all() for atol in asked)
    assert torch.isinf(result.values[0]) and torch.equal(result.values[1:][result.evaluated[1:]], exact[1:][result.evaluated[1:]])
    assert math.isfinite(result.sum_error) and (result.values[1:] - exact[1:]).abs().le(result.errors[1:]).all()


@settings(deadline=None)
@given(st.integers(100, 2000), st.integers(0, 2**31 - 1))
def test_noise_is_evaluated_step_by_step(T, seed):
    """Values with relative noise 1e-3 (no smooth structure): the claims hold at rtol 1e-6."""
    gen = torch.Generator().manual_seed(seed)
    exact = 1.0 + 1e-3 * torch.rand(T, generator=gen, dtype=DTYPE)
    _check(exact, torch.zeros_like(exact), 1e-6)


# Each example evaluates every step of a 512-step chain on a fresh climb (~1 s): three of them.
@settings(deadline=None, max_examples=3)
@given(st.floats(0.05, 0.95), st.floats(0.5, 4.0), st.floats(0.05, 1.0), st.floats(0.05, 1.0),
       st.sampled_from([512]), st.sampled_from(["full", "beta", "analytic"]))
def test_mixture_chains_match_every_step_evaluated(weight, gap, std1, std2, T, family):
    """A random 1-D two-component mixture: the interpolated per-step KLs against every step evaluated
    by the same engine (so only the interpolation is under test), within the sum of both errors."""
    mixture = MixtureReference.from_components([weight, 1.0 - weight], [[-gap / 2], [gap / 2]], stds=[std1, std2])
    grid = VPLinear().grid(T)
    values, errors = qr.step_kls(mixture, grid, FAMILIES[family], rtol=1e-6)
    dense, dense_errors = qr.step_kls_at(mixture, grid, FAMILIES[family], torch.arange(1, T + 1), rtol=1e-6)
    assert (values - dense).abs().le(errors + dense_errors).all()
    assert math.fsum((values - dense).tolist()) <= float(errors.sum() + dense_errors.sum())


def test_long_mixture_chains_are_not_evaluated_step_by_step():
    """It must also pay: the rates default (mog-1d) at T = 4096 evaluates under 15% of its steps, and
    the path KL's total error is the joint one (far below the sum of per-step claims)."""
    mixture = MixtureReference.from_components([0.3, 0.7], [[-1.0], [1.5]], stds=[0.5, 0.8])
    result = qr.interpolated_step_kls(mixture, VPLinear().grid(4096), FAMILIES["full"], rtol=1e-6)
    assert int(result.evaluated.sum()) < 0.15 * 4096
    assert result.sum_error <= 1e-6 * float(result.values.sum())
