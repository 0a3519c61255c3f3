"""Rate fits on synthetic ladders with known answers, and the claimed rates and leading constants of
the Gaussian families (docs/theory.md section 6), with the constants also integrated independently in mpmath."""

import math

import mpmath as mp
import numpy as np
import pytest

from pathkl.errors import InputError
from pathkl.families import FAMILIES
from pathkl.pathspace import path_kl
from pathkl.presets import PRESETS
from pathkl.rates import fit_order, measured_constant, predicted_constant
from pathkl.schedules import get_schedule

from . import mp_reference as ref

LADDER = [64, 128, 256, 512, 1024, 2048, 4096]


@pytest.mark.parametrize("p, c1, c2", [(1, 3.0, -40.0), (2, -7.0, 100.0), (1, 0.0, 0.0)])
def test_fit_recovers_a_known_order_and_constant(p, c1, c2):
    """steps = C T^-p (1 + c1/T + c2/T^2): the corrected fit and Richardson remove the 1/T term; the
    c2/T^2 remainder over the tail (T >= 256) is at most |c2| / 256^2 ~ 1.5e-3 in log steps."""
    ts = np.array(LADDER, dtype=float)
    kls = 2.5 * ts**-p * (1 + c1 / ts + c2 / ts**2)
    fit = fit_order(LADDER, kls)
    bound = abs(c2) / 256**2 + 1e-12
    assert abs(fit.slope + p) <= bound
    assert fit.interval[0] - 1e-12 <= -p <= fit.interval[1] + 1e-12
    assert fit.interval[1] - fit.interval[0] <= 4 * bound
    assert abs(fit.naive_slope + p) > abs(fit.slope + p) or c1 == 0
    const = measured_constant(LADDER, kls, p)
    # Richardson on (2048, 4096) leaves c2 / (2048 * 4096) relative.
    assert const.value == pytest.approx(2.5, rel=abs(c2) / (2048 * 4096) + 1e-12)
    assert abs(const.value - 2.5) <= const.error + 1e-12


@pytest.mark.parametrize("p", [1, 2])
def test_measured_constant_error_covers_the_kls_own_errors(p):
    """Moving each KL anywhere within its stated error moves the Richardson constant by no more than
    the error ``measured_constant`` adds for them: checked at every corner of the error box (the
    extrapolation is linear in the KLs, so the corners are the extremes) of random ladders."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        kls = 2.5 * np.asarray(LADDER, float) ** -p * (1 + rng.normal(0, 5) / np.asarray(LADDER, float))
        errors = kls * 10.0 ** rng.uniform(-9, -3, len(kls))
        without = measured_constant(LADDER, kls, p)
        with_errors = measured_constant(LADDER, kls, p, errors)
        allowed = with_errors.error - without.error
        assert allowed > 0
        for signs in np.array(np.meshgrid(*[[-1, 1]] * len(kls))).reshape(len(kls), -1).T:
            moved = measured_constant(LADDER, kls + signs * errors, p).value
            assert abs(moved - without.value) <= allowed * (1 + 1e-9)


def test_interval_covers_the_truth_when_the_model_is_wrong():
    """A log correction (not in the model) must widen the interval rather than mislead."""
    ts = np.array(LADDER, dtype=float)
    kls = ts**-1.0 * (1 + 2.0 * np.log(ts) / ts)
    fit = fit_order(LADDER, kls)
    assert fit.interval[0] <= -1.0 <= fit.interval[1]


def test_fits_refuse_bad_ladders():
    with pytest.raises(InputError):
        fit_order([1, 2, 3], [1.0, 0.5, 0.3])
    with pytest.raises(InputError):
        fit_order([4, 2, 8, 16], [1.0, 0.5, 0.3, 0.1])
    with pytest.raises(InputError):
        fit_order([2, 4, 8, 16], [1.0, -0.5, 0.3, 0.1])
    assert fit_order([2, 4, 8, 16], [0.0] * 4) is None


@pytest.mark.parametrize("schedule_name", ["vp-linear", "cosine", "ddpm-linear"])
@pytest.mark.parametrize("family_name", ["beta", "analytic", "diag"])
def test_declared_orders_and_constants_hold_on_every_schedule(schedule_name, family_name):
    """The registry's order on gaussian-5d (1 for these: tests/test_families.py measures every family on
    every preset) and its leading constant, on each schedule."""
    reference, schedule, family = PRESETS["gaussian-5d"][1](), get_schedule(schedule_name), FAMILIES[family_name]
    order = family.order(reference)
    kls = [path_kl(reference, schedule.grid(T), family).steps for T in LADDER]
    fit = fit_order(LADDER, kls)
    assert abs(fit.slope + order) < 0.02  # the tolerance; observed |slope + 1| < 1e-4
    predicted = predicted_constant(family, reference, schedule)
    assert predicted.error < 1e-8 * predicted.value
    assert LADDER[-1] ** order * kls[-1] == pytest.approx(predicted.value, rel=5e-3)  # raw T^p steps, 0.5%
    assert measured_constant(LADDER, kls, order).value == pytest.approx(predicted.value, rel=1e-4)


def _mp_constant(eigs, basis, family, schedule_name):
    """(1/4) int beta(tau)^2 ||D||^2 dtau with D from the Hessian H = -U diag(1/nu) U^T, in mpmath."""
    lam = [mp.mpf(x) for x in eigs]
    u = mp.matrix(basis)
    d = len(lam)

    def integrand(tau):
        with mp.workdps(30):
            rate = -mp.diff(lambda s: ref.log_abar(schedule_name, s), tau)
            abar = mp.exp(ref.log_abar(schedule_name, tau))
            h = [-1 / (abar * x + 1 - abar) for x in lam]
            if family == "beta":
                defect = mp.fsum((x + 1) ** 2 for x in h)
            elif family == "analytic":
                mean = mp.fsum(h) / d
                defect = mp.fsum((x - mean) ** 2 for x in h)
            else:  # diag: off-diagonal entries of U diag(h) U^T
                full = u * mp.diag(h) * u.T
                defect = mp.fsum(full[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
            return rate**2 * defect

    return mp.quad(integrand, [0, 0.5, 1]) / 4


@pytest.mark.parametrize("family_name", ["beta", "analytic", "diag"])
def test_predicted_constants_match_an_independent_mpmath_integral(family_name):
    reference = PRESETS["gaussian-5d"][1]()
    schedule = get_schedule("vp-linear")
    predicted = predicted_constant(FAMILIES[family_name], reference, schedule)
    expected = _mp_constant(reference.eigenvalues.tolist(), reference.basis.matrix.tolist(), family_name, "vp-linear")
    assert predicted.value == pytest.approx(float(expected), rel=1e-9)


def test_families_without_a_rate_have_no_constant():
    with pytest.raises(InputError, match="no vanishing rate"):
        predicted_constant(FAMILIES["beta_tilde"], PRESETS["gaussian-5d"][1](), get_schedule("vp-linear"))
    assert math.isfinite(predicted_constant(FAMILIES["full"], PRESETS["gaussian-5d"][1](), get_schedule("cosine")).value)


def test_a_ladder_in_two_processes_gives_the_same_rates():
    """``ladder_rates(jobs=2)`` runs the T in two processes, largest first: every KL, error, fit and
    constant is the same as in one process (each KL is a function of its reference, grid, family and
    rtol alone), and progress counts the T done."""
    from pathkl.rates import ladder_rates
    from pathkl.refspec import load_reference

    reference, schedule = load_reference("mog-1d"), get_schedule("vp-linear")
    families, ladder = [FAMILIES["beta"], FAMILIES["full"]], [16, 32, 64, 128]
    calls = []
    one = ladder_rates(reference, schedule, families, ladder, rtol=1e-6)
    two = ladder_rates(reference, schedule, families, ladder, rtol=1e-6, jobs=2,
                       progress=lambda done, n: calls.append((done, n)))
    assert [rates.as_dict() for rates in two] == [rates.as_dict() for rates in one]
    assert calls == [(done, 4) for done in range(5)]
