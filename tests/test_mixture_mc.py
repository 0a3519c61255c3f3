"""Monte Carlo path KL for mixtures (pathkl.rules.montecarlo) against independent values: the d <= 3
quadrature engine, exact additivity over independent blocks (quadrature 2-D block + closed-form
Gaussian block), the Gaussian reference for one component; and the honesty of its standard errors
(1/sqrt(n) scaling, coverage of the 95% interval, what the control variates gain)."""

import json
import math

import pytest
import torch

from pathkl.cli import main
from pathkl.families import FAMILIES
from pathkl.pathspace import path_kl
from pathkl.presets import rotated_covariance, rotated_mixture
from pathkl.references import GaussianReference, MixtureReference, ProductReference
from pathkl.rules import montecarlo as mcr
from pathkl.rules import quadrature as qr
from pathkl.schedules import DTYPE, NoiseLevel, VPLinear

ADDITIVE = ("beta", "diag", "full")
GAUSS_COV = torch.tensor([[0.5, 0.2, 0.0], [0.2, 1.5, 0.3], [0.0, 0.3, 0.8]], dtype=DTYPE)
GAUSS_MEAN = torch.tensor([0.3, -0.2, 1.0], dtype=DTYPE)


def _mixture_3d():
    return MixtureReference.from_components(
        [0.6, 0.4], [[1.0, 0.0, -1.0], [0.0, 1.5, 0.5]], covs=torch.stack([
            torch.block_diag(rotated_covariance(0.4, (0.6, 0.1)), torch.tensor([[0.3]], dtype=DTYPE)),
            torch.block_diag(torch.tensor([[0.5]], dtype=DTYPE), rotated_covariance(-1.0, (0.3, 0.2)))]))


def _five():
    """The 2-D rotated mixture times a 3-D Gaussian, written as one explicit 5-D mixture: components
    are the 2-D components times the Gaussian (block-diagonal covariances)."""
    two = rotated_mixture()
    k = two.size
    covs = torch.zeros(k, 5, 5, dtype=DTYPE)
    covs[:, :2, :2] = two.covs.dense(two.eigenvalues)
    covs[:, 2:, 2:] = GAUSS_COV
    means = torch.cat([two.means, GAUSS_MEAN.expand(k, 3)], 1)
    return two, GaussianReference.from_covariance(GAUSS_COV, mean=GAUSS_MEAN), \
        MixtureReference.from_components(two.weights, means, covs=covs)


def _total(reference, grid, family, mc):
    values, variances = mcr.step_kls(reference, grid, family, mc)
    return float(values.sum()), math.sqrt(float(variances.sum()))


@pytest.mark.parametrize("reference, steps, rtol", [
    (rotated_mixture(), 12, 1e-4),
    # d = 3 at a coarse rule (the default takes 80 s): it moves the totals by < 7e-4 relative against
    # (12, 8, 12), i.e. < 0.02 of the Monte Carlo SE.
    (_mixture_3d(), 8, 1e-3),
], ids=["d2", "d3"])
def test_matches_quadrature_in_low_dimension(reference, steps, rtol):
    """d = 2, 3: the quadrature engine is the truth here (accurate far below the Monte Carlo SE);
    4 SE is a 6e-5 two-sided miss rate per comparison."""
    grid = VPLinear().grid(steps)
    mc = mcr.MonteCarlo(outer=128, inner=32, seed=3)
    for name in ("beta", "analytic", "diag", "full"):
        exact = float(qr.step_kls(reference, grid, FAMILIES[name], rtol=rtol)[0].sum())
        value, se = _total(reference, grid, FAMILIES[name], mc)
        assert se > 0 and abs(value - exact) < 4 * se, (name, value, exact, se)
    lv = grid.level(grid.T)
    terminal = mcr.terminal_kl(reference, lv, mc)
    assert abs(terminal.value - qr.terminal_kl(reference, lv, rtol=rtol).value) < 4 * terminal.stderr


def test_stderr_shrinks_as_one_over_root_n():
    """x4 outer points -> SE / 2. Each SE is itself estimated (residual variances of 3 strata of 128
    or 512 points, heavy-ish tails at early steps): the ratio is checked within [1.6, 2.5]."""
    reference, grid = rotated_mixture(), VPLinear().grid(12)
    small = _total(reference, grid, FAMILIES["diag"], mcr.MonteCarlo(outer=128, inner=32, seed=1))[1]
    large = _total(reference, grid, FAMILIES["diag"], mcr.MonteCarlo(outer=512, inner=32, seed=2))[1]
    assert 1.6 < small / large < 2.5


def test_d5_product_mixture_against_additive_blocks():
    """For beta, diag, full the exact step KL is the sum over independent blocks (relative eigenvalues
    are the union of the blocks', pathkl.references.product), here quadrature (2-D) + closed form
    (Gaussian). analytic is not additive: its one variance E tr Sigma* / d mixes the blocks."""
    two, gauss, five = _five()
    grid = VPLinear().grid(20)
    mc = mcr.MonteCarlo(outer=256, inner=32, seed=0)
    for name in ADDITIVE:
        family = FAMILIES[name]
        exact = float((qr.step_kls(two, grid, family, rtol=1e-4)[0] + gauss.step_kls(grid, family)[0]).sum())
        value, se = _total(five, grid, family, mc)
        assert abs(value - exact) < 4 * se, (name, value, exact, se)
        assert se < 0.05 * exact  # the estimate is informative, not just wide
    # analytic through the product route (global E tr G / d from the quadrature block): equal too.
    exact = path_kl(ProductReference((two, gauss)), grid, FAMILIES["analytic"]).steps
    value, se = _total(five, grid, FAMILIES["analytic"], mc)
    assert abs(value - exact) < 4 * se
    lv = grid.level(grid.T)
    terminal = mcr.terminal_kl(five, lv, mcr.MonteCarlo(seed=0))
    exact = qr.terminal_kl(two, lv, rtol=1e-10).value + gauss.terminal_kl(lv)
    assert abs(terminal.value - exact) < 4 * terminal.stderr


def test_control_variates_reduce_the_variance():
    """Same seed with and without control variates (d = 5, T = 20, early steps with multimodal
    kernels dominate the variance). Measured variance-reduction factors (seed 0): full 4.4, diag 3.8,
    terminal 6.2e4; asserted with a margin of about 1.5x."""
    _, _, five = _five()
    grid = VPLinear().grid(20)
    for name, factor in (("full", 3.0), ("diag", 2.5)):
        with_cv = _total(five, grid, FAMILIES[name], mcr.MonteCarlo(outer=256, inner=32))[1]
        plain = _total(five, grid, FAMILIES[name], mcr.MonteCarlo(outer=256, inner=32, control_variates=False))[1]
        assert (plain / with_cv) ** 2 > factor, name
    lv = grid.level(grid.T)
    with_cv = mcr.terminal_kl(five, lv, mcr.MonteCarlo()).stderr ** 2
    plain = mcr.terminal_kl(five, lv, mcr.MonteCarlo(control_variates=False)).stderr ** 2
    assert plain / with_cv > 3e4


def test_confidence_interval_covers():
    """40 seeds of a T = 4 chain in d = 5 (full family): the 95% interval covers the additive exact
    value in at least 34 of 40 (binomial(40, 0.95) gives <= 33 with probability 1.4%)."""
    two, gauss, five = _five()
    grid = VPLinear().grid(4)
    exact = float((qr.step_kls(two, grid, FAMILIES["full"], rtol=1e-8)[0] + gauss.step_kls(grid, FAMILIES["full"])[0]).sum())
    covered = 0
    for seed in range(40):
        result = path_kl(five, grid, FAMILIES["full"], rule=mcr.MonteCarlo(outer=96, inner=24, seed=seed))
        low, high = result.ci95
        covered += low - result.terminal <= exact <= high - result.terminal
    assert covered >= 34


def test_analytic_mean_trace_error_is_second_order():
    """Replacing the estimated E tr G / d by the quadrature value moves the analytic total by far less
    than its SE (the isotropic KL is stationary in the variance at the true value). Seen: 1e-3 SE."""
    reference = _mixture_3d()
    grid = VPLinear().grid(12)
    mc = mcr.MonteCarlo(outer=128, inner=32, seed=5)
    exact_g = qr.expected_trace_excess(reference, NoiseLevel(grid.abar[1:], grid.one_minus_abar[1:])) / 3
    own, var = mcr.step_kls(reference, grid, FAMILIES["analytic"], mc)
    given, _ = mcr.step_kls(reference, grid, FAMILIES["analytic"], mc, mean_g=exact_g)
    assert abs(float(own.sum() - given.sum())) < 0.05 * math.sqrt(float(var.sum()))


def test_one_component_mixture_at_d6_is_the_gaussian():
    """J = 0 exactly (certified by the skip bound) and G is constant in x, so every step estimate is
    exact: equal to the Gaussian reference's closed form with SE 0. (The terminal KL is not: q_T's
    whitened mean sqrt(abar) m is not 0, so it is a Monte Carlo estimate, within 4 SE.)"""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=gen, dtype=DTYPE)
    cov = a @ a.T / 6 + 0.2 * torch.eye(6, dtype=DTYPE)
    mean = torch.randn(6, generator=gen, dtype=DTYPE)
    mixture = MixtureReference.from_components([1.0], mean[None], covs=cov[None])
    gaussian = GaussianReference.from_covariance(cov, mean=mean)
    grid = VPLinear().grid(10)
    for family in FAMILIES.values():
        got, var = mcr.step_kls(mixture, grid, family, mcr.MonteCarlo())
        expected, _ = gaussian.step_kls(grid, family)
        finite = torch.isfinite(expected)
        assert torch.equal(finite, torch.isfinite(got))
        assert torch.allclose(got[finite], expected[finite], rtol=1e-9, atol=1e-15)
        assert float(var[finite].abs().max()) < 1e-25
    lv = grid.level(grid.T)
    terminal = mcr.terminal_kl(mixture, lv, mcr.MonteCarlo())
    assert abs(terminal.value - gaussian.terminal_kl(lv)) < 4 * terminal.stderr


def test_product_with_a_monte_carlo_block():
    _, gauss, five = _five()
    product = ProductReference((five, gauss))
    result = path_kl(product, VPLinear().grid(6), FAMILIES["analytic"])
    assert result.steps_stderr > 0 and result.terminal_stderr > 0
    assert result.ci95[0] < result.total < result.ci95[1]
    assert result.method == "monte carlo + closed form"


def _mog5(tmp_path):
    spec = {"kind": "mog", "weights": [0.3, 0.7], "means": [[-1, 0, 0.5, 0, 0], [1, 0.5, 0, 0, -0.5]],
            "stds": [0.3, 0.5]}
    path = tmp_path / "mog5.json"
    path.write_text(json.dumps(spec))
    return str(path)


def test_cli_prints_value_stderr_and_interval(tmp_path, capsys):
    ref = _mog5(tmp_path)
    args = ["kl", "--ref", ref, "--cov", "diag", "--steps", "8", "--mc-samples", "64", "--mc-inner", "16", "--json"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first  # same seed, same bytes
    out = json.loads(first)
    assert out["stderr"] > 0 and out["ci95"][0] < out["total"] < out["ci95"][1]
    assert main(args[:-1] + ["--seed", "7"]) == 0
    text = capsys.readouterr().out
    assert "monte carlo" in text and "+-" in text
    assert main(["rates", "--ref", ref]) == 2
    assert "d > 3" in capsys.readouterr().err
