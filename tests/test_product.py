"""Product references (independent blocks) against independent routes: a block-diagonal Gaussian
(exact closed forms, analytic's global gbar included) and the OCM toy as an explicit 9-component 2-D
mixture (2-D quadrature and 2-D closed forms)."""

import pytest
import torch

from pathkl import third_derivative as td
from pathkl.families import FAMILIES
from pathkl.pathspace import leading_integrand, path_kl, step_kls, terminal_kl
from pathkl.presets import ocm_grid, ocm_grid_2d, ocm_line
from pathkl.rates import fit_order
from pathkl.references import GaussianReference, ProductReference
from pathkl.schedules import DTYPE, VPLinear


def test_product_of_gaussians_is_the_block_diagonal_gaussian():
    """Every family, step by step, terminal and leading integrands: the product (per-block gbar
    replaced by the global one for analytic) equals the joint Gaussian, whose routes know no blocks.
    Both are closed forms, so they agree to rounding (1e-13 relative on O(1) sums of <= 3 terms)."""
    blocks = ProductReference((GaussianReference.from_eigenvalues([0.5]),
                               GaussianReference.from_eigenvalues([2.0, 0.1], mean=[0.3, -1.0])))
    joint = GaussianReference.from_eigenvalues([0.5, 2.0, 0.1], mean=[0.0, 0.3, -1.0])
    schedule = VPLinear()
    grid = schedule.grid(8)
    for name, family in FAMILIES.items():
        a = step_kls(blocks, grid, family).values
        b = step_kls(joint, grid, family).values
        assert torch.allclose(a, b, rtol=1e-13, atol=0), name
        if family.order(blocks) is not None:
            lv = schedule.level(torch.tensor(0.3, dtype=DTYPE))
            assert leading_integrand(blocks, family, lv).value == pytest.approx(
                leading_integrand(joint, family, lv).value, rel=1e-13)
    assert terminal_kl(blocks, grid.level(8)).value == pytest.approx(terminal_kl(joint, grid.level(8)).value, rel=1e-13)


def test_ocm_product_closed_forms_match_the_explicit_2d_mixture():
    product, explicit = ocm_grid(), ocm_grid_2d()
    schedule = VPLinear()
    x = 3.0 * torch.randn(64, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    v = torch.randn(64, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    for tau in (0.02, 0.3, 0.9):
        lv = schedule.level(torch.tensor(tau, dtype=DTYPE))
        for name in ("log_prob", "score", "hessian", "posterior_mean", "posterior_cov"):
            a, b = getattr(product, name)(x, lv), getattr(explicit, name)(x, lv)
            # Different summation orders of the same log-sum-exps: 1e-10 absolute on O(1e4) values.
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-10), (name, tau)
        assert torch.allclose(product.hvp(x, v, lv), explicit.hvp(x, v, lv), rtol=1e-10, atol=1e-10)
        # grad^3 log q has no mixed-block entries: the factors' sum equals the 2-D cumulant formula.
        post = explicit.posterior(x, lv.abar, lv.one_minus_abar)
        line = product.factors[0]
        per_block = [td.third_derivative_sq_norm(line, line.posterior(x[:, i : i + 1], lv.abar, lv.one_minus_abar))
                     for i in range(2)]
        assert torch.allclose(per_block[0] + per_block[1], td.third_derivative_sq_norm(explicit, post), rtol=1e-10)


def test_ocm_product_path_kl_matches_the_explicit_2d_mixture_at_small_T():
    """T = 4: the 1-D product route and the explicit 9-component 2-D quadrature share only the
    mixture closed forms; each states its error, and they agree within the sum."""
    product, explicit = ocm_grid(), ocm_grid_2d()
    grid = VPLinear().grid(4)
    for name in ("beta", "analytic", "full"):
        a, b = step_kls(product, grid, FAMILIES[name], rtol=1e-6), step_kls(explicit, grid, FAMILIES[name], rtol=1e-6)
        assert ((a.values - b.values).abs() <= a.errors + b.errors).all(), (name, a, b)
    ta, tb = terminal_kl(product, grid.level(4)), terminal_kl(explicit, grid.level(4))
    assert abs(ta.value - tb.value) <= ta.error + tb.error


def test_ocm_diag_equals_full_at_order_two_and_analytic_at_order_one():
    """Product form: G is diagonal, so diag's Gaussian part is exactly 0 and diag = full; full goes as
    1/T^2 and analytic as 1/T (Richardson-corrected fit on a short ladder, band 0.05 as in the issue)."""
    reference = ProductReference((ocm_line(), ocm_line()))
    ladder = [128, 256, 512, 1024]
    schedule = VPLinear()
    kls = {name: [] for name in ("analytic", "diag", "full")}
    for t in ladder:
        grid = schedule.grid(t)
        for name, values in kls.items():
            values.append(float(step_kls(reference, grid, FAMILIES[name], rtol=1e-4).values.sum()))
        assert torch.equal(step_kls(reference, grid, FAMILIES["diag"], rtol=1e-4).values,
                           step_kls(reference, grid, FAMILIES["full"], rtol=1e-4).values)
    for name in ("analytic", "full"):  # the registry's orders: 1 and 2
        assert abs(fit_order(ladder, kls[name], tail=4).slope + FAMILIES[name].order(reference)) < 0.05, name
    assert [FAMILIES[name].order(reference) for name in ("analytic", "diag", "full")] == [1, 2, 2]
    assert path_kl(reference, schedule.grid(16), FAMILIES["analytic"]).steps > 0
