"""The exact Gaussian path KL at the edges of float64 (issue 12): eigenvalues from 1e-300 to 1e3,
nearly equal ones, and the first step, where Sigma* is far below the family's Sigma_t.

The reference is tests/mp_reference.py (the literal formulas of docs/theory.md sections 2.2 and 3.3) at 400 digits: its
``Sigma* = (beta/alpha)(1 - beta/nu)`` loses about log10(beta_1 / lambda) <= 305 digits at the first
step, and ``r - 1 - log r`` twice the digits of ``r - 1`` for nearly equal eigenvalues, which 400
digits leave room for. The tolerance is the error pathkl states: its rounding bound (64 ulps of each
step, pathkl.pathspace.ROUNDING), per step and for the sums, plus SLACK for the reference's own
rounding (where the exact value is 0, e.g. lambda = 1, it computes ~1e-795).
"""

import json
import math

import mpmath as mp
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pathkl.errors import InputError
from pathkl.families import FAMILIES
from pathkl.pathspace import path_kl
from pathkl.presets import fixed_rotation
from pathkl.references import GaussianReference
from pathkl.refspec import load_reference
from pathkl.schedules import get_schedule

from . import mp_reference as ref

DIGITS = 400
SLACK = mp.mpf(10) ** (50 - DIGITS)


def _exact(eigenvalues, family, grid, basis=None):
    """Per-step KLs t = 1..T and the terminal KL at DIGITS digits."""
    with mp.workdps(DIGITS):
        alpha = ref.alphas(grid.schedule.name, [mp.mpf(t) for t in grid.taus.tolist()])
        steps = ref.step_kls(eigenvalues, family, alpha, basis=basis)
        terminal = ref.terminal_kl(eigenvalues, [0.0] * len(eigenvalues), ref.abars(alpha)[-1])
        return [steps[t] for t in range(1, grid.T + 1)], terminal


def _assert_within_stated_error(got, exact_steps, exact_terminal):
    """Every per-step KL, ``steps``, ``terminal`` and ``total`` within the error pathkl states."""
    first = got.first_step
    for t, (value, error, exact) in enumerate(zip(got.per_step.tolist(), got.per_step_error.tolist(),
                                                  exact_steps), start=1):
        if t < first:
            continue
        assert abs(value - exact) <= error + SLACK, (t, value, float(exact), error)
    steps = mp.fsum(exact_steps[first - 1:])
    assert abs(got.steps - steps) <= got.steps_error + SLACK, (got.steps, float(steps), got.steps_error)
    assert abs(got.terminal - exact_terminal) <= got.terminal_error + SLACK
    assert abs(got.total - (steps + exact_terminal)) <= got.total_error + SLACK


def test_a_subnormal_step_kl_claims_its_absolute_rounding():
    """Found by hypothesis: analytic on two eigenvalues 1e-138 one ulp apart, T = 2, has a step-2 KL of
    2.05e-311, a subnormal whose ulp is 2^-1074; a purely relative rounding bound claimed an error of 0
    where the value was off by about 2e-324."""
    eigenvalues = [1e-138, 1e-138 * (1 + 2**-52)]
    grid = get_schedule("vp-linear").grid(2)
    got = path_kl(GaussianReference.from_eigenvalues(eigenvalues), grid, FAMILIES["analytic"])
    assert 0 < float(got.per_step[1]) < 2.2250738585072014e-308  # the case is the subnormal one
    _assert_within_stated_error(got, *_exact(eigenvalues, "analytic", grid))


@pytest.mark.parametrize("tiny", [1e-15, 1e-20, 1e-300])
@pytest.mark.parametrize("T", [4, 16, 100, 1000])
def test_issue_12_tiny_eigenvalue_from_json(tmp_path, tiny, T):
    """``{"kind": "gaussian", "eigenvalues": [tiny, 1]}``: were 7.7e-4 (1e-15) and 18% (1e-20) off
    while claiming rounding accuracy (1 + e formed from e = -1 + O(tiny / beta_1) at the first step)."""
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"kind": "gaussian", "eigenvalues": [tiny, 1.0]}))
    reference = load_reference(str(path))
    grid = get_schedule("vp-linear").grid(T)
    for name in ("beta", "beta_tilde", "analytic", "diag", "full"):
        first = FAMILIES[name].first_step
        got = path_kl(reference, grid, FAMILIES[name], first_step=first)
        _assert_within_stated_error(got, *_exact([tiny, 1.0], name, grid))


@pytest.mark.parametrize("eigenvalues", [[2.0, 2.0 + 1e-6], [2.0, 2.0 + 1e-9, 2.0 + 2e-9], [0.5, 0.5 + 1e-7],
                                         [1e-15, 2e-15], [3.0, 3.0, 3.0 + 4e-16]])
@pytest.mark.parametrize("rotated", [False, True])
def test_nearly_equal_eigenvalues(eigenvalues, rotated):
    """``analytic`` and ``diag`` KLs come from the spread of the spectrum, not its level: forming
    ``g_i - mean(g)`` (or ``offdiag(U diag(g) U^T)``) by subtraction left an ulp of g, 1e-7 relative
    for a spread of 1e-9."""
    basis = fixed_rotation(len(eigenvalues), 1) if rotated else None
    reference = GaussianReference.from_eigenvalues(eigenvalues, basis=basis)
    for T in (4, 100):
        grid = get_schedule("cosine").grid(T)
        for name in ("analytic", "diag") if rotated else ("analytic",):
            got = path_kl(reference, grid, FAMILIES[name])
            _assert_within_stated_error(got, *_exact(eigenvalues, name, grid, None if basis is None else basis.tolist()))


def test_rotated_diag_with_a_tiny_eigenvalue():
    """In a rotated basis the diag family's 1 + e are eigenvalues of diag(Sigma*)^-1/2 Sigma*
    diag(Sigma*)^-1/2; the tiny one comes from its inverse (pathkl.bases.DenseBasis)."""
    eigenvalues, basis = [1e-15, 1.0, 3.0], fixed_rotation(3, 2)
    reference = GaussianReference.from_eigenvalues(eigenvalues, basis=basis)
    for T in (4, 100):
        grid = get_schedule("vp-linear").grid(T)
        got = path_kl(reference, grid, FAMILIES["diag"])
        _assert_within_stated_error(got, *_exact(eigenvalues, "diag", grid, basis.tolist()))


def test_rotated_diag_refuses_what_eigensolvers_cannot_resolve():
    """Tiny eigenvalues many decades apart, rotated: 1 + e between 16 r_min and r_max / 16 is
    resolved to rounding by neither eigenproblem, so the diag family refuses rather than guess."""
    reference = GaussianReference.from_eigenvalues([1e-200, 1e-50, 1.0], basis=fixed_rotation(3, 2))
    grid = get_schedule("vp-linear").grid(4)
    with pytest.raises(InputError, match="diag family") as info:
        path_kl(reference, grid, FAMILIES["diag"])
    assert "\n" not in str(info.value)
    path_kl(reference, grid, FAMILIES["analytic"])  # the isotropic families do not need it


@pytest.mark.parametrize("eigenvalues", [[1e-310, 1.0], [1.0, 1e101]])
def test_eigenvalues_outside_the_supported_range_are_refused(tmp_path, eigenvalues):
    path = tmp_path / "out.json"
    path.write_text(json.dumps({"kind": "gaussian", "eigenvalues": eigenvalues}))
    with pytest.raises(InputError, match=r"must lie in \[1e-300, 1e\+100\]") as info:
        load_reference(str(path))
    assert "\n" not in str(info.value)


@st.composite
def extreme_spectra(draw):
    """1 to 4 eigenvalues log-uniform over [1e-300, 1e3], some nudged to nearly equal a neighbour."""
    logs = draw(st.lists(st.floats(-300.0, 3.0), min_size=1, max_size=4))
    values = [min(max(10.0**x, 1e-300), 1e3) for x in logs]
    for i in range(1, len(values)):
        if draw(st.booleans()):
            values[i] = values[i - 1] * (1.0 + draw(st.sampled_from([0.0, 2.0**-52, 1e-12, 1e-6])))
    return [min(v, 1e3) for v in values]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(eigenvalues=extreme_spectra(), T=st.integers(1, 40), schedule=st.sampled_from(["vp-linear", "cosine"]),
       name=st.sampled_from(list(FAMILIES)), rotated=st.booleans())
def test_every_step_within_its_stated_error(eigenvalues, T, schedule, name, rotated):
    """Property: for any spectrum in the supported range, any grid and family, every per-step KL and
    every sum is within the error pathkl states, or (diag in a rotated basis only) refused."""
    basis = fixed_rotation(len(eigenvalues), 3) if rotated else None
    reference = GaussianReference.from_eigenvalues(eigenvalues, basis=basis)
    grid = get_schedule(schedule).grid(T)
    first = 2 if name == "beta_tilde" and T > 1 else 1
    try:
        got = path_kl(reference, grid, FAMILIES[name], first_step=first)
    except InputError as refusal:
        assert name == "diag" and rotated, refusal
        return
    exact_steps, exact_terminal = _exact(eigenvalues, name, grid, None if basis is None else basis.tolist())
    if name == "beta_tilde" and first == 1:
        assert math.isinf(got.total) and mp.isinf(exact_steps[0])
        return
    _assert_within_stated_error(got, exact_steps, exact_terminal)
    assert torch.all(got.per_step[first - 1:] >= 0)
