"""The probability-flow ODE map and its Jacobian (pathkl.pf_ode), against independent routes:

- Gaussian data: the closed-form linear map, derived here from the scalar ODE in the covariance's
  eigenbasis (numpy eigh of the dense covariance, numpy schedule): with ``nu_i(tau) = 1 - abar(tau) +
  abar(tau) lambda_i``, ``z = x - sqrt(abar) m`` obeys ``dz_i/dtau = (beta/2)(1/nu_i - 1) z_i =
  (d/dtau log sqrt(nu_i)) z_i``, so ``z_i(tau) = sqrt(nu_i(tau) / nu_i(1)) z_i(1)``;
- the Jacobian against central finite differences of the map itself (the variational equation and
  the exact Hessian are not used by that route);
- the asymmetry index where the truth is known to be 0 (Gaussian, rotated product-form mixture, data
  on a line: the Hessians along a path commute, so A is symmetric), and its error claim against an
  LSODA solve at a far smaller tolerance (another integrator) where it is not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import studies
from pathkl.cli import main
from pathkl.errors import InputError
from pathkl.pf_ode import asymmetry, asymmetry_index, flow_map
from pathkl.presets import fixed_rotation, ocm_grid, rotated_mixture, rotated_product
from pathkl.references import EmpiricalReference, GaussianReference
from pathkl.schedules import DTYPE, Cosine
from studies.results import load
from studies.runner import run_study

#: The paper's three points (Wang et al. 2025, public code OT/ot.py, "non-affine" case).
THREE_POINTS = [[0.5, 0.0], [0.0, -0.5], [0.0, 0.0]]


def _abar(tau: float) -> float:
    """vp-linear, beta_min = 0.1, beta_max = 20 (written out here, not taken from pathkl)."""
    return math.exp(-0.1 * tau - 0.5 * 19.9 * tau * tau)


def _draws(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cov, mean", [
    ([[1.0, 0.8], [0.8, 1.0]], [1.0, -1.0]),
    (None, None),  # 5-d, eigenvalues 0.05 .. 6 in a rotated basis
])
def test_gaussian_map_and_jacobian_match_the_closed_form(cov, mean):
    if cov is None:
        q = fixed_rotation(5, seed=3).numpy()
        cov, mean = q @ np.diag([0.05, 0.3, 1.0, 2.5, 6.0]) @ q.T, np.zeros(5)
    cov, mean = np.asarray(cov), np.asarray(mean)
    reference = GaussianReference.from_covariance(cov, mean=mean)
    lam, u = np.linalg.eigh(cov)
    x1 = _draws(6, len(mean)).numpy()
    taus = (0.5, 0.1, 0.0)
    flow = flow_map(reference, x1, taus=taus, rtol=1e-10)
    for j, tau in enumerate(taus):
        nu_end, nu_start = 1 - _abar(tau) + _abar(tau) * lam, 1 - _abar(1.0) + _abar(1.0) * lam
        linear = u @ np.diag(np.sqrt(nu_end / nu_start)) @ u.T
        expected = math.sqrt(_abar(tau)) * mean + (x1 - math.sqrt(_abar(1.0)) * mean) @ linear.T
        # Global error of DOP853 at rtol 1e-10 over ~400 steps: measured <= 3e-10; 1e-8 leaves room
        # while a wrong factor (e.g. g^2 instead of g^2/2) would be off by O(1).
        np.testing.assert_allclose(flow.x[:, j].numpy(), expected, rtol=0, atol=1e-8)
        np.testing.assert_allclose(flow.jacobian[:, j].numpy(), np.broadcast_to(linear, flow.jacobian[:, j].shape),
                                   rtol=0, atol=1e-8)


@pytest.mark.parametrize("reference, tau", [
    (rotated_mixture(), 0.0),
    (EmpiricalReference.from_points(THREE_POINTS), 0.05),
])
def test_jacobian_matches_central_differences_of_the_map(reference, tau):
    """A from the variational equation against (phi(x + h e_j) - phi(x - h e_j)) / 2h. At rtol 1e-11
    the map's error is ~1e-10, so with h = 1e-4 the difference quotient is off by ~1e-6 (solver)
    plus h^2 |D^3 phi| / 6 ~ 1e-8: 1e-5 absolute on entries of order 0.1-1. One batch holds all the
    shifted points, so a Hessian applied to another trajectory's A would show here too."""
    x = _draws(3, reference.dim, seed=1) * 1.5
    h = 1e-4
    d = reference.dim
    shifts = torch.cat([x[:, None, :] + h * torch.eye(d, dtype=DTYPE), x[:, None, :] - h * torch.eye(d, dtype=DTYPE)], 1)
    flow = flow_map(reference, torch.cat([x, shifts.reshape(-1, d)]), taus=(tau,), rtol=1e-11, atol=1e-13)
    moved = flow.x[3:, 0].reshape(3, 2, d, d)  # (point, sign, j, coordinate)
    differences = ((moved[:, 0] - moved[:, 1]) / (2 * h)).transpose(1, 2)  # [i, :, j] = d phi / d x_j
    jacobian = flow.jacobian[:3, 0]
    assert jacobian.abs().max() > 0.05  # not collapsed: the comparison has something to compare
    torch.testing.assert_close(jacobian, differences, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, reference, tau", [
    ("gaussian", GaussianReference.from_eigenvalues([0.05, 0.3, 1.0, 2.5], basis=fixed_rotation(4, seed=1)), 0.0),
    ("rotated product", rotated_product(2, seed=5), 0.0),
    ("points on a line", EmpiricalReference.from_points([[0.0, 0.0], [0.5 * math.cos(0.5), 0.5 * math.sin(0.5)],
                                                         [-0.6 * math.cos(0.5), -0.6 * math.sin(0.5)]]), 1e-3),
])
def test_symmetric_maps_have_index_within_its_error(name, reference, tau):
    """Truth 0: the claimed error must cover the index (at rounding level: without the rounding floor
    it would not), and be small, so that an asymmetric A (e.g. one trajectory's A multiplied by another
    trajectory's Hessian in the batch, which do not commute) would fail. A is not diagonal here."""
    result = asymmetry(reference, _draws(8, reference.dim, seed=2) * 2.0, taus=(0.3, tau), rtol=1e-6)
    offdiag = result.flow.jacobian[..., 0, 1].abs().max()
    assert offdiag > 1e-3, name
    assert (result.index <= result.error).all(), name
    assert result.error.max() < 1e-10, name


def test_product_form_axis_aligned_jacobian_is_exactly_diagonal():
    """Axis-aligned product data (the OCM 3x3 grid): every Hessian is diagonal, so the flow acts
    coordinate-wise and A's off-diagonal entries stay exact zeros."""
    flow = flow_map(ocm_grid(), _draws(8, 2, seed=3), rtol=1e-6)
    assert (flow.jacobian[..., 0, 1] == 0).all() and (flow.jacobian[..., 1, 0] == 0).all()
    assert (asymmetry_index(flow.jacobian) == 0).all()


@pytest.mark.parametrize("name, reference, tau", [
    ("rotated mixture", rotated_mixture(), 0.0),
    ("three points", EmpiricalReference.from_points(THREE_POINTS), 0.01),
    ("points in 4-d", EmpiricalReference.from_points(_draws(6, 4, seed=7)), 0.02),
])
def test_error_claim_covers_a_much_tighter_solve_by_another_method(name, reference, tau):
    """Where the map is not symmetric: the index at rtol 1e-5 (value from rtol/16, DOP853) against an
    LSODA solve (Adams multistep, another integrator family) at rtol 1e-11, which agrees with DOP853 at
    rtol 1e-12 to 1e-12 here; the claimed error must cover the difference."""
    x = _draws(6, reference.dim, seed=4) * 1.5
    result = asymmetry(reference, x, taus=(0.2, tau), rtol=1e-5)
    truth = asymmetry_index(flow_map(reference, x, taus=(0.2, tau), rtol=1e-11, atol=1e-13,
                                     method="LSODA").jacobian)
    assert (truth > 1e-4).any(), name  # the map is asymmetric here: the test has something to cover
    assert ((result.index - truth).abs() <= result.error).all(), name


@pytest.mark.parametrize("call, message", [
    (lambda r: flow_map(r, torch.zeros(2, 3)), "shape"),
    (lambda r: flow_map(r, torch.tensor([[math.nan, 0.0]])), "NaN"),
    (lambda r: flow_map(r, torch.zeros(1, 2), taus=(1.5,)), "output levels"),
    (lambda r: flow_map(r, torch.zeros(1, 2), method="euler"), "unknown ODE method"),
    (lambda r: flow_map(r, torch.zeros(1, 2), rtol=0.0), "rtol"),
    (lambda r: flow_map(r, torch.zeros(1, 2), batch=0), "batch"),
    (lambda r: asymmetry(r, torch.zeros(1, 2), ratio=1.0), "ratio"),
    (lambda r: flow_map(r, torch.zeros(1, 2), schedule=Cosine()), "infinite"),
    (lambda r: flow_map(EmpiricalReference.from_points(THREE_POINTS), torch.zeros(1, 2)), "point masses"),
])
def test_bad_input_is_one_input_error(call, message):
    with pytest.raises(InputError, match=message) as info:
        call(rotated_mixture())
    assert "\n" not in str(info.value)


def test_study_rows_and_figure(tmp_path):
    """The small pf_ode_ot study: the Gaussian's rows are within their error of 0 and the paper's three
    points are not; panel (a) plots the rows of the lowest level of each reference."""
    study = studies.REGISTRY["pf_ode_ot"]
    run_study(study, study.config(small=True), tmp_path, progress=False)
    table = load(tmp_path)
    assert set(table.columns) >= {"reference", "d", "asymmetry", "asymmetry_error"}
    gaussian = [r for r in table.rows if r["reference"] == "gaussian-5d"]
    points = [r for r in table.rows if r["reference"] == "empirical-3"]
    assert gaussian and all(r["asymmetry"] <= r["asymmetry_error"] and r["d"] == 5 for r in gaussian)
    assert points and all(r["asymmetry"] > 10 * r["asymmetry_error"] for r in points)
    fig = study.figures(table)[""]
    plotted = {c.get_gid(): c for ax in fig.axes for c in ax.collections if c.get_gid()}
    lowest = min(r["tau"] for r in points)
    expected = sorted(r["asymmetry"] for r in points if r["tau"] == lowest)
    assert sorted(plotted["data:empirical-3"].get_offsets()[:, 1].tolist()) == expected


@pytest.mark.parametrize("assignment, message", [
    ("samples=0", "samples"),
    ("references=nope", "nor one of this study's"),
    ("taus=0.0", "needs a level > 0"),  # the small config has the three points: refused before any point runs
    ("ratio=1", "ratio > 1"),
])
def test_study_bad_configuration_is_one_line_exit_2_nothing_written(tmp_path, capsys, assignment, message):
    out = tmp_path / "r"
    assert main(["study", "run", "pf_ode_ot", "--small", "--set", assignment, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pathkl study: error:") and message in err
    assert not out.exists()
