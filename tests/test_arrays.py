"""The public API takes numpy arrays and nested lists wherever it takes tensors (pathkl.arrays), and
gives the same numbers; what it cannot take it refuses in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pathkl
from pathkl.errors import InputError
from pathkl.references import (
    EmpiricalReference,
    GaussianReference,
    MixtureReference,
    ProductReference,
)
from pathkl.schedules import get_schedule

LEVEL = get_schedule("vp-linear").level(0.3)
GAUSS = GaussianReference.from_covariance([[1.0, 0.2], [0.2, 0.5]], mean=[0.1, -0.3])
MIXTURE = MixtureReference.from_components([0.3, 0.7], [[-1.0, 0.0], [1.0, 0.5]], stds=[0.2, 0.4])
EMPIRICAL = EmpiricalReference.from_points([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
PRODUCT = ProductReference((GaussianReference.from_eigenvalues([0.5]),
                            MixtureReference.from_components([0.5, 0.5], [[-1.0], [1.0]], stds=[0.3, 0.3])))
POINTS = [[0.2, -0.4], [1.5, 0.3], [-0.7, 0.9]]
METHODS = ("log_prob", "score", "posterior_mean", "posterior_cov_diagonal")


REFERENCES = {"gaussian": GAUSS, "mixture": MIXTURE, "empirical": EMPIRICAL, "product": PRODUCT}


@pytest.mark.parametrize("reference, method", [pytest.param(r, m, id=f"{name}-{m}") for name, r in REFERENCES.items()
                                               for m in METHODS if hasattr(r, m)])
def test_reference_methods_take_lists_and_numpy(reference, method):
    expected = getattr(reference, method)(torch.tensor(POINTS, dtype=torch.float64), LEVEL)
    for points in (POINTS, np.array(POINTS), tuple(map(tuple, POINTS))):
        got = getattr(reference, method)(points, LEVEL)
        assert got.dtype == torch.float64 and torch.equal(got, expected)


def test_matvecs_take_numpy_vectors():
    v = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    expected = MIXTURE.posterior_cov_matvec(torch.tensor(POINTS, dtype=torch.float64), torch.from_numpy(v), LEVEL)
    assert torch.equal(MIXTURE.posterior_cov_matvec(POINTS, v, LEVEL), expected)


def test_metrics_and_lanczos_take_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 0.5
    assert pathkl.mmd(x, y).value == pathkl.mmd(torch.from_numpy(x), torch.from_numpy(y)).value
    assert pathkl.sliced_wasserstein(x, y).value == pathkl.sliced_wasserstein(torch.from_numpy(x),
                                                                              torch.from_numpy(y)).value
    z = rng.normal(size=(4, 3))
    lam = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    y3 = pathkl.lanczos_sampler(3)(lambda v: lam * v, z).sample
    assert torch.allclose(y3, lam.sqrt() * torch.from_numpy(z), rtol=1e-12, atol=1e-12)  # k = d: exact


def test_integer_input_is_promoted_to_float64():
    got = GAUSS.score(torch.tensor([[0, 1]]), LEVEL)
    assert got.dtype == torch.float64
    assert torch.equal(got, GAUSS.score(torch.tensor([[0.0, 1.0]], dtype=torch.float64), LEVEL))


@pytest.mark.parametrize("bad, words", [([[0.0, 1.0], [2.0]], "rectangular"), ([["a", "b"]], "real numbers"),
                                        (np.array([[1j, 0]]), "real numbers"),
                                        (torch.tensor([[1j, 0j]]), "must be real")])
def test_non_numeric_input_is_refused_in_one_line(bad, words):
    with pytest.raises(InputError, match=words):
        GAUSS.score(bad, LEVEL)


def test_every_front_door_name_resolves():
    for name in pathkl.__all__:
        assert getattr(pathkl, name) is not None, name


def test_no_front_door_name_is_a_submodule():
    """``import pathkl.X`` sets ``pathkl.X`` to the module, shadowing an exported function named X."""
    modules = {p.stem for p in Path(pathkl.__file__).parent.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert not modules & set(pathkl.__all__)
