"""Rates of the path-space KL for non-Gaussian data: isotropic and diagonal families O(1/T) when the
Hessian is not diagonal, ``full`` O(1/T^2); for product-form data (the OCM grid) ``diag`` = ``full``.

The issue's evidence runs in CI: the deep ladder to T = 4096 on the rotated mixture (slopes and
constants) and on the OCM grid (slopes); a broad two-component mixture adds a short-ladder check."""


import pytest
import torch

from pathkl.families import FAMILIES
from pathkl.pathspace import path_kl, step_kls
from pathkl.presets import ocm_grid_2d, ocm_line, rotated_covariance, rotated_mixture
from pathkl.rates import fit_order, measured_constant, predicted_constant
from pathkl.references import MixtureReference, ProductReference
from pathkl.rules import quadrature as qr
from pathkl.schedules import VPLinear

ORDER_ONE = ("beta", "analytic", "diag")


def _broad_mixture():
    covs = torch.stack([rotated_covariance(0.6, (0.8, 0.3)), rotated_covariance(-0.5, (0.6, 0.25))])
    return MixtureReference.from_components([0.45, 0.55], [[-1.0, 0.3], [1.0, -0.2]], covs=covs)


def _ladder(reference, family, ladder, rtol):
    schedule = VPLinear()
    return [float(qr.step_kls(reference, schedule.grid(t), family, rtol=rtol)[0].sum()) for t in ladder]


def test_kl_is_never_negative_and_beta_tilde_is_infinite():
    reference = _broad_mixture()
    grid = VPLinear().grid(6)
    for family in FAMILIES.values():
        per_step, _ = qr.step_kls(reference, grid, family, rtol=1e-4)
        assert (per_step >= 0).all(), family.name
    tilde, _ = qr.step_kls(reference, grid, FAMILIES["beta_tilde"], rtol=1e-4)
    assert tilde[0] == float("inf") and torch.isfinite(tilde[1:]).all()
    result = path_kl(reference, grid, FAMILIES["beta_tilde"], first_step=2)
    assert result.total > result.terminal > 0


def test_separation_on_a_short_ladder():
    """On T = 32..256 at rtol 1e-4 the Richardson-corrected fit already separates the orders the
    registry declares (1 for beta, analytic, diag, 2 for full); the issue's band of 0.05."""
    reference = _broad_mixture()
    ladder = [32, 64, 128, 256]
    quad = 1e-4
    for name in ORDER_ONE + ("full",):
        family = FAMILIES[name]
        fit = fit_order(ladder, _ladder(reference, family, ladder, quad), tail=4)
        assert abs(fit.slope + family.order(reference)) < 0.05, (name, fit)


def test_ocm_grid_diag_equals_full():
    """Product-form data: G is diagonal at every x (off-diagonal Cov_w(s) = 0 up to rounding), so the
    diag family's Gaussian part vanishes and diag = full step by step."""
    reference = ocm_grid_2d()
    grid = VPLinear().grid(16)
    diag, _ = qr.step_kls(reference, grid, FAMILIES["diag"], rtol=1e-4)
    full, _ = qr.step_kls(reference, grid, FAMILIES["full"], rtol=1e-4)
    # Rounding in Cov_w(s)'s off-diagonal is ~1e-16 |G| ~ 1e-14; its KL is its square: << 1e-20.
    assert torch.allclose(diag, full, rtol=1e-12, atol=1e-20)
    analytic, _ = qr.step_kls(reference, grid, FAMILIES["analytic"], rtol=1e-4)
    assert (analytic > full).all()


DEEP = [256, 512, 1024, 2048, 4096]


@pytest.fixture(scope="module")
def rotated_ladder():  # slow: minutes per T at rtol 1e-6 on the current 2-D ladder (docs/errors.md)
    """The rotated mixture's path KLs on the deep ladder, every family at once (E J is computed once
    per grid and shared), with the default (Gauss-Hermite) rule that ``pathkl rates`` uses: its ~1e-4
    relative error is far below what the slope band and the 1% constant band can see."""
    reference = rotated_mixture()
    schedule = VPLinear()
    kls = {name: [] for name in ORDER_ONE + ("full",)}
    for steps in DEEP:
        grid = schedule.grid(steps)
        for name, values in kls.items():
            values.append(path_kl(reference, grid, FAMILIES[name]).steps)
    return reference, kls


@pytest.mark.slow
@pytest.mark.parametrize("name", ORDER_ONE + ("full",))
def test_rotated_mixture_rates_and_constants(rotated_ladder, name):
    """Slopes within 0.05 of -1 (beta, analytic, diag) and -2 (full) on T = 256..4096; T^p steps at
    T = 4096 within 1% of the predicted constant (the issue's band; the Richardson-extrapolated
    constants of ``pathkl rates`` meet the predictions to < 1e-4, README)."""
    reference, kls = rotated_ladder
    family = FAMILIES[name]
    fit = fit_order(DEEP, kls[name], tail=5)
    assert abs(fit.slope + family.order(reference)) < 0.05, fit
    measured = measured_constant(DEEP, kls[name], family.order(reference))
    predicted = predicted_constant(family, reference, VPLinear())
    assert measured.at_largest == pytest.approx(predicted.value, rel=0.01)


@pytest.fixture(scope="module")
def ocm_ladder():
    """The OCM toy's path KLs on the deep ladder. The rates need far less than the default 1-D rule's
    1e-10, so a coarser 1-D rule keeps this fast; both blocks share one line (and its cache of E J)."""
    line = ocm_line()
    reference = ProductReference((line, line))
    schedule = VPLinear()
    kls = {name: [float(step_kls(reference, schedule.grid(t), FAMILIES[name], rtol=1e-4).values.sum()) for t in DEEP]
           for name in ("analytic", "diag", "full")}
    return reference, kls


@pytest.mark.slow
@pytest.mark.parametrize("name", ("analytic", "diag", "full"))
def test_ocm_grid_rates(ocm_ladder, name):
    """diag = full at 1/T^2 on the product-form OCM toy, analytic at 1/T (the registry's orders)."""
    reference, kls = ocm_ladder
    fit = fit_order(DEEP, kls[name], tail=5)
    assert abs(fit.slope + FAMILIES[name].order(reference)) < 0.05, fit


@pytest.mark.slow
def test_ocm_grid_constants(ocm_ladder):
    """analytic: T steps at T = 4096 within 1% of the prediction (measured 5e-4). full: T^2 steps at
    4096 is still 1.3% low (the slow approach to 1/T^2, docs/theory.md section 6.2), so the 1% band is checked on
    the Richardson-extrapolated constant (measured 6e-4 off, with an error estimate of 0.2%)."""
    reference, kls = ocm_ladder
    analytic = measured_constant(DEEP, kls["analytic"], FAMILIES["analytic"].order(reference))
    assert analytic.at_largest == pytest.approx(predicted_constant(FAMILIES["analytic"], reference, VPLinear()).value,
                                                rel=0.01)
    full = measured_constant(DEEP, kls["full"], FAMILIES["full"].order(reference))
    assert full.value == pytest.approx(predicted_constant(FAMILIES["full"], reference, VPLinear()).value, rel=0.01)
