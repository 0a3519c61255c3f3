"""pathkl.lgs_accuracy against an independent numpy route.

For a Gaussian N(0, S) the target ``Cov[x_0 | x_tau] = S - abar S (abar S + (1 - abar) I)^{-1} S`` does
not depend on x, and the one-step Lanczos draw is ``y_1 = sqrt(z^T A z / z^T z) z`` (the Krylov space
of z is its span), so the k = 1 error and the condition number follow from numpy's eigh alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pathkl.cli import lanczos as cli_lanczos
from pathkl.errors import InputError
from pathkl.lgs_accuracy import TARGETS, lanczos_accuracy
from pathkl.references import GaussianReference
from pathkl.schedules import get_schedule

COV = np.array([[2.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.05]])
REFERENCE = GaussianReference.from_covariance(torch.tensor(COV))
SCHEDULE = get_schedule("vp-linear")


def _numpy_x0_cov(tau: float) -> np.ndarray:
    level = SCHEDULE.level(tau)
    abar, one_minus = float(level.abar), float(level.one_minus_abar)
    return COV - abar * COV @ np.linalg.solve(abar * COV + one_minus * np.eye(3), COV)


def test_one_step_error_and_condition_match_numpy():
    tau, n, seed = 0.4, 16, 3
    result = lanczos_accuracy(REFERENCE, SCHEDULE, [1, 3], tau=tau, target="x0", n=n, seed=seed)
    vals, vecs = np.linalg.eigh(_numpy_x0_cov(tau))
    root = vecs @ np.diag(np.sqrt(vals)) @ vecs.T
    z = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1)).numpy()
    exact = z @ root
    rayleigh = np.einsum("ni,ij,nj->n", z, root @ root, z) / np.einsum("ni,ni->n", z, z)
    err = np.linalg.norm(np.sqrt(rayleigh)[:, None] * z - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert result.error_mean[0] == pytest.approx(err.mean(), rel=1e-10)
    assert result.error_max[0] == pytest.approx(err.max(), rel=1e-10)
    assert result.condition == pytest.approx(vals[-1] / vals[0], rel=1e-8)
    assert result.error_max[1] < 1e-10  # k = d: the Krylov space is everything
    assert all(worst <= bound for worst, bound in zip(result.error_max, result.bound))


def test_reverse_target_reports_its_step_and_respects_the_bound():
    result = lanczos_accuracy(REFERENCE, SCHEDULE, [1, 2], tau=0.5, steps=10)
    assert (result.where["step"], result.where["T"], result.exact) == (5, 10, "dense")
    assert all(worst <= bound for worst, bound in zip(result.error_max, result.bound))
    assert list(result.as_dict())[:4] == ["target", "tau", "step", "T"]


@pytest.mark.parametrize("kwargs, words", [({"tau": 0.0}, "tau"), ({"tau": 0.5, "target": "xT"}, "target"),
                                           ({"tau": 0.5, "ks": [4]}, "1..d = 3")])
def test_bad_input_is_refused(kwargs, words):
    ks = kwargs.pop("ks", [1])
    with pytest.raises(InputError, match=words):
        lanczos_accuracy(REFERENCE, SCHEDULE, ks, **kwargs)


def test_cli_offers_the_library_targets():
    assert cli_lanczos.TARGETS == TARGETS
