"""The family registry: every family declares its rate on each preset, and one test over families x
presets measures it; a new family or preset is covered without editing the test.

The measurement is independent of the declaration: the Richardson-corrected slope of the exact path
KLs over a ladder of T (pathkl.rates.fit_order), the KLs being exactly 0 where the registry says the
family matches ``Sigma*_t`` on Gaussian data (every reverse kernel is then Gaussian), and, at one T,
the per-step KLs of a family that matches ``Sigma*_t`` equal ``full``'s."""

from __future__ import annotations

import pytest
import torch

from pathkl.covariances import MATCHED
from pathkl.errors import InputError
from pathkl.families import FAMILIES, FAMILY_NAMES, SIZED_FAMILIES, get_family, parse_family
from pathkl.palette import OKABE_ITO
from pathkl.pathspace import path_kl, step_kls
from pathkl.presets import PRESETS, fixed_rotation, ocm_line, rotated_covariance
from pathkl.rates import fit_order
from pathkl.references import GaussianReference, MixtureReference, ProductReference
from pathkl.references.product import blocks
from pathkl.schedules import VPLinear

#: Ladders of T and the KLs' rtol: the Gaussian closed forms and the 1-D mixture reach the band on a
#: short one (1-D quadrature at 1e-3 moves a slope by ~1e-3); the 2-D and product mixtures approach
#: 1/T^2 slowly (full fits -1.86 over T = 32..256 on the OCM toy), so they take the deep ladder of
#: tests/test_mixture_rates.py.
SHORT, ONE_D, DEEP = ((32, 64, 128, 256), 1e-4), ((16, 32, 64, 128), 1e-3), ((256, 512, 1024, 2048, 4096), 1e-4)
#: The issue's band on a fitted order.
BAND = 0.05
#: Presets whose ladder takes minutes (2-D quadrature, or the OCM toy's sharp components deep).
SLOW = {"mog-ocm-grid", "mog-rotated"}
#: The explicit 9-component 2-D OCM toy would take hours on the deep ladder; it is the same law as
#: mog-ocm-grid, and test_families_see_one_law_in_both_forms checks that its rates are the same.
LEFT_OUT = {"mog-ocm-grid-2d"}


def _gaussian(reference) -> bool:
    return all(isinstance(b, GaussianReference) for b in blocks(reference))


@pytest.fixture(scope="module")
def references():
    """One object per preset for the whole module: mixtures cache E J per grid, shared by families."""
    return {}


def _reference(references, preset):
    if preset not in references:
        references[preset] = PRESETS[preset][1]()
    return references[preset]


def _presets():
    return [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p for p in PRESETS if p not in LEFT_OUT]


@pytest.mark.parametrize("preset", _presets())
@pytest.mark.parametrize("name", list(FAMILIES))
def test_declared_order_is_the_measured_order(references, preset, name):
    """Order None: the KL does not vanish like any order the registry claims (slope > -1/2). Matching
    ``Sigma*_t`` on Gaussian data: every KL exactly 0. Otherwise the fitted slope is -order within BAND."""
    reference, family = _reference(references, preset), FAMILIES[name]
    order = family.order(reference)
    ladder, rtol = DEEP if preset in SLOW else SHORT if _gaussian(reference) else ONE_D
    kls = [path_kl(reference, VPLinear().grid(t), family, rtol=rtol, first_step=family.first_step).steps
           for t in ladder]
    fit = fit_order(ladder, kls, tail=len(ladder))
    if order is None:
        assert fit is not None and fit.slope > -0.5, fit
    elif order == 2 and _gaussian(reference):
        assert fit is None and kls == [0.0] * len(ladder), kls
    else:
        assert fit is not None and abs(fit.slope + order) < BAND, (order, fit)


@pytest.mark.parametrize("preset", [p for p in PRESETS if p not in SLOW | LEFT_OUT])
def test_matching_families_have_full_per_step_kls(references, preset):
    """Where the registry says a family matches ``Sigma*_t`` its step KLs are ``full``'s (the Gaussian
    part vanishes: equal to rounding, 1e-12 relative); elsewhere some step is larger than ``full``'s."""
    reference = _reference(references, preset)
    grid = VPLinear().grid(8)
    full = step_kls(reference, grid, FAMILIES["full"], rtol=1e-4).values
    for name, family in FAMILIES.items():
        values = step_kls(reference, grid, family, rtol=1e-4).values
        if family.rate(reference) is MATCHED:
            assert torch.allclose(values, full, rtol=1e-12, atol=1e-300), name
        else:
            assert (values > full * (1 + 1e-9)).any(), name


def test_families_see_one_law_in_both_forms():
    """The OCM toy as a product of two 1-D mixtures and as an explicit 9-component 2-D mixture (the
    same law, pathkl.presets) has one rate per family; a grid whose weights do not factorise, or whose
    components are rotated, has a non-diagonal Hessian, so diag is order 1 there."""
    product, explicit = PRESETS["mog-ocm-grid"][1](), PRESETS["mog-ocm-grid-2d"][1]()
    for family in FAMILIES.values():
        assert family.rate(product) == family.rate(explicit), family.name
    assert FAMILIES["diag"].order(explicit) == 2
    means = [[a, b] for a in (-3.0, 0.0, 3.0) for b in (-3.0, 0.0, 3.0)]
    ninths = MixtureReference.from_components([2 / 18] * 9, means, stds=[0.1] * 9)
    assert FAMILIES["diag"].order(ninths) == 2  # equal weights factorise, whatever their rounding
    unequal = MixtureReference.from_components([0.2] + [0.1] * 8, means, stds=[0.1] * 9)
    rotated = MixtureReference.from_components([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]],
                                               covs=torch.stack([rotated_covariance(0.4, (0.5, 0.1))] * 2))
    for data in (unequal, rotated, ProductReference((rotated, ocm_line()))):
        assert FAMILIES["diag"].order(data) == 1
    grid = VPLinear().grid(2)  # and diag's Gaussian part is there (2-D quadrature: one short grid)
    diag, full = (step_kls(rotated, grid, FAMILIES[name], rtol=1e-3).values for name in ("diag", "full"))
    assert (diag > full * (1 + 1e-9)).all()


def test_orders_that_the_reference_decides():
    """beta matches Sigma* only where G = 0 (covariance I), analytic only on isotropic Gaussians, diag
    where the Hessian is diagonal (axis-aligned Gaussians, 1-D data); full everywhere, beta_tilde never."""
    white = GaussianReference.from_eigenvalues([1.0, 1.0, 1.0], mean=[0.5, 0.0, -1.0])
    iso = GaussianReference.from_eigenvalues([0.3] * 5, basis=fixed_rotation(5))
    table = {"beta": (white, PRESETS["gaussian-5d"][1]()), "analytic": (iso, PRESETS["gaussian-5d-axis"][1]()),
             "diag": (PRESETS["gaussian-5d-axis"][1](), PRESETS["gaussian-2d"][1]())}
    grid = VPLinear().grid(16)
    for name, (matched, unmatched) in table.items():
        family = FAMILIES[name]
        assert (family.order(matched), family.order(unmatched)) == (2, 1), name
        assert path_kl(matched, grid, family).steps == 0.0 < path_kl(unmatched, grid, family).steps, name
    assert FAMILIES["beta_tilde"].order(white) is None and FAMILIES["full"].order(PRESETS["mog-1d"][1]()) == 2


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_family_has_one_entry_with_all_it_declares(name):
    """Every name the CLI offers parses (sized ones at their smallest size) to one entry with a label,
    an Okabe-Ito colour and a marker; the KL families have a rate and sampling-only ones refuse one."""
    kind, _, letter = name.partition(":")
    family = parse_family(f"{kind}:{SIZED_FAMILIES[kind].smallest}" if letter else name)
    assert family.label and family.marker and family.colour in OKABE_ITO
    if letter:
        assert not family.has_kl and family.products_per_step == SIZED_FAMILIES[kind].smallest
        with pytest.raises(InputError, match="no exact path KL"):
            family.rate(PRESETS["gaussian-2d"][1]())
        with pytest.raises(InputError, match="no exact path KL"):
            get_family(family.name)
    else:
        assert family.has_kl and family is get_family(name) and family.products_per_step == 0
    markers = [parse_family(n.replace(":M", ":2").replace(":k", ":1")).marker for n in FAMILY_NAMES]
    assert len(set(markers)) == len(markers)


@pytest.mark.parametrize("bad, message", [("lanczos:0", "lanczos:k needs k"), ("lanczos", "lanczos:k needs k"),
                                          ("rademacher:1", "rademacher:M needs M"), ("lanczos:x", ">= 1"),
                                          ("diag:3", "unknown covariance family"), ("", "unknown")])
def test_bad_family_names_say_what_is_wrong(bad, message):
    with pytest.raises(InputError, match=message):
        parse_family(bad)
