"""Accuracy of the quadrature engine (issue 3: 1e-8 relative in d <= 3, shown by node refinement and
by the two routes): the lattice outer rule converges where Gauss-Hermite does not, the 1-D default
is accurate to 1e-8 at every T, and route (a) (whitened negentropy) meets route (b) (entropy chain rule).
"""

import dataclasses
import math

import pytest
import torch

from pathkl import mixture_kl as mk
from pathkl.covariances import FAMILIES
from pathkl.errors import InputError
from pathkl.presets import ocm_line, rotated_mixture
from pathkl.references import MixtureReference
from pathkl.schedules import VPLinear

# A finer 1-D rule than the default on every axis: lattice everywhere at 0.7 x the spacing, more
# inner nodes (the refinement that the default must survive).
FINER_1D = mk.Quadrature(resolution=0.35, coarse=0.07, smooth_below=0.0, smooth=160, inner=64, separated=192)


@pytest.mark.parametrize("steps", [8, 16, 64])
def test_one_dimension_default_survives_refinement(steps):
    """Measured: sum of E J moves by 5e-11 (T = 8), 1e-14 (16), 1e-15 (64) against a rule finer on every axis."""
    line, grid = ocm_line(), VPLinear().grid(steps)
    j, j_fine = (float(mk.expected_negentropies(line, grid, q).sum()) for q in (mk.FINE_1D, FINER_1D))
    assert j == pytest.approx(j_fine, rel=1e-8, abs=0)
    beta = [float(mk.step_kls(line, grid, FAMILIES["beta"], q)[0].sum()) for q in (mk.FINE_1D, FINER_1D)]
    assert beta[0] == pytest.approx(beta[1], rel=1e-8, abs=0)


def test_one_dimension_routes_agree():
    """Route (b) cancels: H(q_t) - H(q_{t-1}) is O(1) while E J_t is small, so it is compared where
    E J_t >= 1e-4 (absolute rounding ~1e-16 |H|, i.e. < 1e-11 relative there). Measured: <= 1e-13
    at every such step of T = 16 (all 9 of them)."""
    line, grid = ocm_line(), VPLinear().grid(16)
    route_a = mk.expected_negentropies(line, grid)
    checked = 0
    for t in range(1, grid.T + 1):
        if route_a[t - 1] >= 1e-4:
            assert mk.negentropy_chain_rule(line, grid, t) == pytest.approx(float(route_a[t - 1]), rel=1e-9)
            checked += 1
    assert checked >= 8


def test_lattice_converges_where_gauss_hermite_does_not():
    """Step 150 of T = 1024 on the rotated mixture (tau ~ 0.15, posterior weights switching over a
    fraction of a component's width). Gauss-Hermite at 16, 32, 48 nodes scatters by > 1e-5; the FINE
    rule's estimate is below 1e-9 and it agrees to 1e-9 with a single rule finer on every axis."""
    reference, grid, idx = rotated_mixture(), VPLinear().grid(1024), torch.tensor([150])
    hermite = [float(mk.expected_negentropy_at(reference, grid, idx, mk.Quadrature.hermite(n, inner=12, separated=48))[0][0])
               for n in (16, 32, 48)]
    fine, estimate = (float(v[0]) for v in mk.expected_negentropy_at(reference, grid, idx, mk.FINE))
    finer_rule = dataclasses.replace(mk.FINE, resolution=1.4, inner=32, separated=128, near_gaussian=0.35, tolerance=0.0)
    finer = float(mk.expected_negentropy_at(reference, grid, idx, finer_rule)[0][0])
    assert estimate <= 1e-9 * fine
    assert fine == pytest.approx(finer, rel=1e-9)
    assert max(abs(h - finer) for h in hermite) > 1e-5 * finer


def test_spacing_follows_the_sharpness():
    """Low-noise levels (sharp switching) get fine lattices, high-noise ones Gauss-Hermite; spacings
    are quarter-octaves of ``coarse`` and bit-equal when equal (so steps share lattices)."""
    reference, grid = rotated_mixture(), VPLinear().grid(1024)
    h = mk.step_spacings(reference, grid, mk.FINE)
    assert math.isinf(h[-1]) and h[0] < 0.1
    finite = h[torch.isfinite(h)]
    octaves = 4 * torch.log2(mk.FINE.coarse / finite)
    assert torch.allclose(octaves, octaves.round(), atol=1e-9)
    assert len(set(finite.tolist())) == torch.unique(finite).numel()
    assert (finite[1:] >= finite[:-1]).sum() >= 0.95 * (finite.numel() - 1)  # coarser as tau grows
    assert (mk.step_spacings(reference, grid, mk.FAST) == math.inf).all()


def test_fine_rule_refuses_a_lattice_too_large_for_memory():
    """In 3-D a sharp level would need millions of lattice nodes per component: one-line InputError."""
    reference = MixtureReference.from_components([0.5, 0.5], [[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]], stds=[0.05, 0.6])
    grid = VPLinear().grid(64)
    with pytest.raises(InputError, match="fast rule") as err:
        mk.expected_negentropy_at(reference, grid, torch.tensor([1]), mk.FINE)
    assert "\n" not in str(err.value)


def test_paired_rule_estimate_covers_its_error():
    """E cos(w . xi) = exp(-|w|^2 / 2) exactly. The lattice's error is its aliasing at 2 pi / h - |w|:
    the shifted copy flips the odd terms, so half the pair's difference is about the single rule's
    error and the pair's mean is far better than either."""
    omega = torch.tensor([3.0, 2.0], dtype=torch.float64)
    exact = math.exp(-0.5 * float(omega @ omega))
    h = 0.9
    nodes, weights, signs = mk.standard_rule(h, 2, mk.FINE)
    values = torch.cos(nodes @ omega)
    mean, estimate = float((weights * values).sum()), float((weights * signs * values).sum().abs())
    single_nodes, single_weights, none = mk.standard_rule(h, 2, mk.FAST.__class__(coarse=h))
    single_error = abs(float((single_weights * torch.cos(single_nodes @ omega)).sum()) - exact)
    assert none is None and single_error > 1e-6 * exact  # a rule coarse enough for the check to bite
    assert abs(mean - exact) <= 1e-3 * estimate
    assert 0.5 * single_error <= estimate <= 2.0 * single_error


def test_refinement_meets_the_tolerance_from_too_coarse_a_start():
    """A rule whose a-priori spacing is far too coarse (h = 1.2 at step 6 of T = 16): the estimate
    sends it down by half-octaves until the estimate is 1e-9 of the value, and the result then
    meets route (b), which the single coarse rule misses by > 1e-6."""
    reference, grid, idx = rotated_mixture(), VPLinear().grid(16), torch.tensor([6])
    coarse = dataclasses.replace(mk.FINE, coarse=1.2, resolution=100.0)
    value, estimate = (float(v[0]) for v in mk.expected_negentropy_at(reference, grid, idx, coarse))
    single = float(mk.expected_negentropy_at(reference, grid, idx, dataclasses.replace(coarse, tolerance=0.0))[0][0])
    route_b = mk.negentropy_chain_rule(reference, grid, 6, mk.FINE)
    assert estimate <= 1e-9 * value
    assert value == pytest.approx(route_b, rel=1e-9, abs=0)
    assert abs(single - route_b) > 1e-6 * route_b
