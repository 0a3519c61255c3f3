"""pathkl.denoiser: a network as a posterior, checked against the references' closed forms.

The "networks" here are written in this file from a reference's closed forms (its score and posterior
mean), each predicting eps, score, x0 or v at its own time (a 0-based chain index whose levels come
from a plain cumulative product of the chain's alphas, as diffusers' ``alphas_cumprod``; or tau of the
vp-linear schedule, from its formula written out here). What NetworkPosterior computes from them
(Tweedie conversions, JVP, jacfwd and Rademacher covariances, Analytic-DPM's Monte Carlo trace) is
compared with the reference's own posterior mean, covariance products, dense covariance, diagonal
and exact expected trace; samplers with the network against the closed-form route with the same
seed, or, where an estimate enters, against the law propagated exactly with dense matrices.
"""

from __future__ import annotations

import math

import pytest
import torch

import pathkl
from pathkl.covariances import ReverseStep
from pathkl.denoiser import NetworkPosterior, analytic_trace_estimate, reverse_model
from pathkl.errors import InputError
from pathkl.families import _expected_posterior_trace, parse_family
from pathkl.heads import train_head, true_score
from pathkl.matvecs import (
    DifferenceCovariance,
    JvpCovariance,
    LinearizedCovariance,
    closed_form_cov_matvec,
)
from pathkl.model_kl import model_path_kl
from pathkl.presets import PRESETS
from pathkl.references import GaussianReference, MixtureReference
from pathkl.sampling import sample
from pathkl.schedules import DTYPE, DDPMLinear, NoiseLevel, get_schedule, grid_from_chain

N_TRAIN = 1000
VP = get_schedule("vp-linear")


def alphas_cumprod(length: int = N_TRAIN) -> torch.Tensor:
    """abar of the chain's x_t, t = 0..N-1 (diffusers' convention): a plain cumulative product."""
    betas = torch.linspace(1e-4, 0.02, length, dtype=DTYPE) * (1000.0 / length)
    return torch.cumprod(1.0 - betas, 0)


def vp_level(tau: torch.Tensor) -> NoiseLevel:
    log_abar = -(0.1 * tau + 0.5 * (20.0 - 0.1) * tau**2)
    return NoiseLevel(torch.exp(log_abar), -torch.expm1(log_abar))


def oracle_network(reference, prediction: str, time: str):
    """``net(x, t)`` predicting ``prediction`` exactly, from the reference's score and posterior mean."""
    cumprod = alphas_cumprod()

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x.shape[0],) and (time == "level" or t.dtype == torch.int64)
        if time == "step":
            abar = cumprod[t[0]]
            lv = NoiseLevel(abar, 1.0 - abar)
        else:
            lv = vp_level(t[0])
        root_abar, sigma = lv.abar.sqrt(), lv.one_minus_abar.sqrt()
        if prediction == "x0":
            return reference.posterior_mean(x, lv)
        score = reference.score(x, lv)
        if prediction == "score":
            return score
        return -sigma * score if prediction == "eps" else -root_abar * sigma * score - sigma * reference.posterior_mean(x, lv)

    return net


def network(reference, prediction="eps", time="level", **options) -> NetworkPosterior:
    where = {"chain": DDPMLinear().grid(N_TRAIN)} if time == "step" else {"schedule": VP}
    return NetworkPosterior(oracle_network(reference, prediction, time), dim=reference.dim,
                            prediction=prediction, time=time, **where, **options)


def mixture():
    return PRESETS["mog-rotated"][1]()


def close(a, b, rtol):
    scale = max(float(b.abs().max()), 1e-300)
    assert float((a - b).abs().max()) <= rtol * scale, (float((a - b).abs().max()), scale)


# ---------------------------------------------------------------- Tweedie conversions


@pytest.mark.parametrize("prediction", ["eps", "score", "x0", "v"])
@pytest.mark.parametrize("time", ["step", "level"])
def test_posterior_mean_and_score_match_the_closed_forms(prediction, time):
    """xhat_0 and the score from every prediction kind, at a low, middle and high noise level
    (1e-9 relative: a few conversions by sqrt(abar) and sigma, each a few ulps)."""
    reference = mixture()
    posterior = network(reference, prediction, time)
    x = reference.sample(64, None, generator=torch.Generator().manual_seed(0))
    for t in ((3, 300, 900) if time == "step" else (0.01, 0.3, 0.9)):
        lv = posterior.level(t)
        xt = lv.abar.sqrt() * x + lv.one_minus_abar.sqrt() * torch.randn_like(x)
        close(posterior.posterior_mean(xt, lv), reference.posterior_mean(xt, lv), 1e-9)
        close(posterior.score(xt, lv), reference.score(xt, lv), 1e-9)


def test_network_dtype_casts_in_and_out():
    """A float32 network: inputs cast to it, outputs back to float64 (float32 accuracy, 1e-5)."""
    reference = PRESETS["gaussian-2d"][1]()
    inner = oracle_network(reference, "eps", "level")
    seen = []

    def net32(x, t):
        seen.append((x.dtype, t.dtype))
        return inner(x.double(), t.double()).float()

    posterior = NetworkPosterior(net32, dim=2, time="level", schedule=VP, dtype=torch.float32)
    lv, x = VP.level(0.4), torch.randn(8, 2, dtype=DTYPE)
    got = posterior.posterior_mean(x, lv)
    assert got.dtype == DTYPE and seen == [(torch.float32, torch.float32)]
    close(got, reference.posterior_mean(x, lv), 1e-5)


# ---------------------------------------------------------------- covariances


@pytest.mark.parametrize("make", [mixture, lambda: PRESETS["gaussian-5d"][1]()])
def test_covariance_products_dense_and_diagonal_match_the_closed_forms(make):
    reference = make()
    posterior = network(reference, "eps", "level", probes=48)
    lv = VP.level(0.35)
    gen = torch.Generator().manual_seed(1)
    x = reference.sample(8, lv, generator=gen)
    v = torch.randn(x.shape, dtype=DTYPE, generator=gen)
    exact = reference.posterior_cov_matvec(x, v, lv)
    close(posterior.posterior_cov_matvec(x, v, lv), exact, 1e-9)  # JVP of an exact Tweedie: rounding only
    dense = reference.posterior_cov(x, lv)
    close(posterior.posterior_cov(x, lv), dense, 1e-9)
    # Rademacher diagonal: unbiased; within 5 claimed standard errors (M = 48; a t-statistic
    # with 47 degrees of freedom exceeds 5 with probability ~1e-5 per entry) of the exact diagonal.
    estimate = posterior.diagonal_estimate(x, lv)
    diag = torch.diagonal(dense, dim1=-2, dim2=-1)
    assert bool(((estimate.diagonal - diag).abs() <= 5 * estimate.stderr + 1e-12 * diag.abs().max()).all())
    assert torch.equal(estimate.diagonal, posterior.diagonal_estimate(x, lv).diagonal)  # seeded by (seed, level)


def test_rademacher_diagonal_is_exact_where_the_covariance_is_diagonal():
    """Axis-aligned data: v_i v_j C_ij vanishes off the diagonal and v_i^2 = 1, whatever the probes."""
    reference = PRESETS["gaussian-5d-axis"][1]()
    posterior, lv = network(reference, probes=2), VP.level(0.6)
    x = reference.sample(16, lv, generator=torch.Generator().manual_seed(2))
    close(posterior.posterior_cov_diagonal(x, lv), reference.posterior_cov_diagonal(x, lv), 1e-12)


def test_learned_diagonal_head_is_used_at_the_network_time():
    reference = mixture()
    calls = []

    def head(x, t):
        calls.append(float(t[0]))
        return reference.posterior_cov_diagonal(x, vp_level(t[0]))

    posterior, lv = network(reference, diagonal=head), VP.level(0.25)
    x = reference.sample(8, lv, generator=torch.Generator().manual_seed(3))
    close(posterior.posterior_cov_diagonal(x, lv), reference.posterior_cov_diagonal(x, lv), 1e-12)
    assert calls == [pytest.approx(0.25, abs=1e-14)]


@pytest.mark.parametrize("route", [JvpCovariance, LinearizedCovariance, DifferenceCovariance])
def test_matvec_routes_on_the_network_match_the_closed_form(route):
    """Each route's ``Sigma_t v`` against the reference's closed form: JVP and linearisation to rounding,
    the forward difference of a nonlinear (mixture) denoiser to ~sqrt(eps) relative (1e-6)."""
    reference = mixture()
    posterior = network(reference)
    grid = VP.grid(10)
    step = ReverseStep.ddim(grid, 4, eta=0.7)
    gen = torch.Generator().manual_seed(4)
    x = reference.sample(32, step.level, generator=gen)
    v = torch.randn(x.shape, dtype=DTYPE, generator=gen)
    products = route(lambda y: posterior.posterior_mean(y, step.level), x, step)
    tolerance = 1e-6 if route is DifferenceCovariance else 1e-9
    close(products(v), closed_form_cov_matvec(reference, x, step)(v), tolerance)
    close(products.denoised(), reference.posterior_mean(x, step.level), 1e-9)


# ---------------------------------------------------------------- every family samples with a network

EXACT_FAMILIES = ["beta", "beta_tilde", "diag", "full", "rademacher:3", "lanczos:2", "lanczos:5"]


@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("family", EXACT_FAMILIES)
def test_every_family_samples_with_a_network_as_with_the_closed_form(family, eta):
    """Same seed, same samples (to 1e-9 of their scale: affine Gaussian denoisers, JVPs exact): the
    axis-aligned reference makes the Rademacher diagonal exact (test above), so ``diag`` matches too."""
    if parse_family(family).ddpm_only and eta != 1.0:
        pytest.skip("a DDPM-only family")
    reference = PRESETS["gaussian-5d-axis"][1]() if family == "diag" else PRESETS["gaussian-5d"][1]()
    grid = VP.grid(6)
    posterior = network(reference, "v", "level", probes=2)
    closed = sample(reference, grid, family, n=64, eta=eta, seed=11).samples
    for route in ("closed", "jvp"):
        got = sample(posterior, grid, family, n=64, eta=eta, seed=11, route=route).samples
        close(got, closed, 1e-9)


def test_linearize_route_samples_as_the_closed_form():
    reference, grid = PRESETS["gaussian-2d"][1](), VP.grid(4)
    closed = sample(reference, grid, "lanczos:2", n=32, seed=3).samples
    close(sample(network(reference), grid, "lanczos:2", n=32, seed=3, route="linearize").samples, closed, 1e-9)


def test_step_time_network_samples_on_a_chain_subsequence():
    """time='step': a grid built on the training chain (every 50th step); the network sees indices."""
    reference = PRESETS["gaussian-2d"][1]()
    grid = grid_from_chain(DDPMLinear(), N_TRAIN, list(range(0, N_TRAIN + 1, 50)))
    closed = sample(reference, grid, "full", n=32, seed=5).samples
    close(sample(network(reference, "x0", "step"), grid, "full", n=32, seed=5).samples, closed, 1e-9)


def propagate_isotropic(reference, grid, traces, eta):
    """Mean and covariance of x_0 for noise ``(s^2 + lam^2 traces[t]) I`` on a Gaussian reference (dense)."""
    d = reference.dim
    mean, cov = torch.zeros(d, dtype=DTYPE), torch.eye(d, dtype=DTYPE)
    for t in range(grid.T, 0, -1):
        step = ReverseStep.ddim(grid, t, eta=eta)
        offset = reference.posterior_mean(torch.zeros(1, d, dtype=DTYPE), step.level)[0]
        gain = reference.posterior_mean(torch.eye(d, dtype=DTYPE), step.level) - offset
        a = step.lam * gain.T + step.kappa * torch.eye(d, dtype=DTYPE)
        noise = (step.s2 + step.lam**2 * traces[t]) * torch.eye(d, dtype=DTYPE)
        mean, cov = a @ mean + step.lam * offset, a @ cov @ a.T + noise
    return mean, cov


@pytest.mark.parametrize("eta,learned", [(1.0, "network"), (0.5, "network"), (1.0, "head")])
def test_analytic_with_a_network_samples_the_law_of_its_estimated_variances(eta, learned):
    """``analytic`` with a network or a learned ``analytic`` head (pathkl.heads, on the true score):
    its per-step variances are Monte Carlo estimates (checked against the exact trace below); with
    them the chain is linear-Gaussian, and n = 20000 samples' mean and covariance lie within 5
    Gaussian standard errors of that law propagated with dense matrices."""
    reference, grid = PRESETS["gaussian-2d"][1](), VP.grid(6)
    data = reference.sample(512, None, generator=torch.Generator().manual_seed(6))
    posterior = (network(reference, "score", "level", data=data) if learned == "network" else
                 train_head("analytic", true_score(reference), data, grid, steps=0, seed=6))
    traces = {t: max(posterior.posterior_trace_estimate(grid.level(t)).value, 0.0) for t in range(1, grid.T + 1)}
    mean, cov = propagate_isotropic(reference, grid, traces, eta)
    n = 20000
    x = sample(posterior, grid, "analytic", n=n, eta=eta, seed=9).samples
    se_mean = (cov.diagonal() / n).sqrt()
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert torch.all((x.mean(0) - mean).abs() <= 5 * se_mean)
    assert torch.all((torch.cov(x.T) - cov).abs() <= 5 * se_cov)


# ---------------------------------------------------------------- Analytic-DPM's trace estimate


@pytest.mark.parametrize("make", [mixture, lambda: PRESETS["gaussian-5d"][1]()])
def test_monte_carlo_trace_is_within_its_error_of_the_exact_expectation(make):
    """``E_{q_t} tr C / d`` from 4000 data samples against the exact expectation (the reference's
    ``E tr G``), at five levels: within 4.5 standard errors (false alarm ~1e-4 over the 10 cases).
    The standard error grows like ``sigma^2 / abar`` at high noise (22000 at t = T here: Analytic-DPM's
    estimator amplifies the spread of ||eps_hat||^2 there), but what the ``analytic`` family draws,
    ``s^2 + lam^2 E tr C / d``, carries ``lam^2 ~ abar_{t-1} beta_t^2`` with it: there the estimate's
    error moves that variance by less than 5%."""
    reference = make()
    posterior = network(reference, "eps", "level", data=lambda n, g: reference.sample(n, None, generator=g),
                        trace_samples=4000)
    grid = VP.grid(5)
    for t in range(1, grid.T + 1):
        step = ReverseStep.ddim(grid, t)
        estimate = posterior.posterior_trace_estimate(step.level)
        exact = _expected_posterior_trace(reference, step)
        assert abs(estimate.value - exact) <= 4.5 * estimate.stderr, (t, estimate, exact)
        assert step.lam**2 * estimate.stderr <= 0.05 * (step.s2 + step.lam**2 * exact)


@pytest.mark.parametrize("t", [1, 100])
def test_trace_control_variate_is_at_least_as_precise_as_either_fixed_form(t):
    """Analytic-DPM's trace with its least-squares control variate: on the very draws it made (the
    noise read back from the x_t it asked about, ``eps = (x_t - sqrt(abar) x_0) / sigma``), its standard
    error is at most that of the plain ``1 - ||eps_hat||^2 / d`` and of ``(||eps||^2 - ||eps_hat||^2) / d``,
    at low noise (t = 1 of 100 vp-linear steps, where the plain form is far better) and at high noise
    (t = 100, where the other is); and it is within 4.5 standard errors of the exact expectation."""
    reference, grid = mixture(), VP.grid(100)
    step = ReverseStep.ddim(grid, t)
    lv, d = step.level, reference.dim
    data = reference.sample(2000, None, generator=torch.Generator().manual_seed(4))
    seen = []

    def noise_prediction(x, level):
        seen.append((x, -level.one_minus_abar.sqrt() * reference.score(x, level)))
        return seen[-1][1]

    estimate = analytic_trace_estimate(noise_prediction, data, lv, seed=5)
    (x, eps_hat), = seen
    eps = (x - lv.abar.sqrt() * data) / lv.one_minus_abar.sqrt()
    scale = float(lv.one_minus_abar / lv.abar)
    for values in (1 - (eps_hat**2).sum(-1) / d, ((eps**2) - eps_hat**2).sum(-1) / d):
        assert estimate.stderr <= scale * float(values.std()) / math.sqrt(values.numel()) * (1 + 1e-9)
    assert abs(estimate.value - _expected_posterior_trace(reference, step)) <= 4.5 * estimate.stderr


# ---------------------------------------------------------------- time conventions


def test_step_times_round_trip_and_match_a_subsequence_grid():
    posterior = network(PRESETS["gaussian-2d"][1](), time="step")
    for t in (0, 1, 57, 500, N_TRAIN - 1):
        assert int(posterior.network_time(posterior.level(t))) == t
    indices = [0, 1, 20, 333, 999, 1000]
    grid = grid_from_chain(DDPMLinear(), N_TRAIN, indices)
    cumprod = alphas_cumprod()
    for k in range(1, len(indices)):
        t = int(posterior.network_time(grid.level(k)))
        assert t == indices[k] - 1
        assert float(grid.level(k).abar) == pytest.approx(float(cumprod[t]), rel=1e-12)


def test_level_times_round_trip():
    posterior = network(PRESETS["gaussian-2d"][1](), time="level")
    for tau in (0.0, 1e-6, 0.123456789, 0.5, 0.999, 1.0):
        lv = posterior.level(tau)
        assert float(posterior.network_time(lv)) == pytest.approx(tau, abs=1e-13)
        assert float(lv.abar) == pytest.approx(float(vp_level(torch.tensor(tau, dtype=DTYPE)).abar), rel=1e-14)


def test_bad_input_is_refused_in_one_line():
    reference = PRESETS["gaussian-2d"][1]()
    net = oracle_network(reference, "eps", "level")
    cases = [
        lambda: NetworkPosterior(net, dim=2, prediction="noise", schedule=VP, time="level"),
        lambda: NetworkPosterior(net, dim=2, time="seconds", schedule=VP),
        lambda: NetworkPosterior(net, dim=2, time="step"),
        lambda: NetworkPosterior(net, dim=2, time="level"),
        lambda: network(reference, time="step").level(N_TRAIN),
        lambda: network(reference, time="step").network_time(VP.level(0.5)),  # off the chain
        lambda: network(reference, time="step").network_time(DDPMLinear().grid(N_TRAIN).level(0)),
        lambda: network(reference, time="level").level(1.5),
        lambda: network(reference, time="level").network_time(NoiseLevel(torch.tensor(1e-9, dtype=DTYPE),
                                                                          torch.tensor(1 - 1e-9, dtype=DTYPE))),
        lambda: network(reference).posterior_trace_estimate(VP.level(0.5)),  # no data
        lambda: NetworkPosterior(lambda x, t: x[:, :1], dim=2, time="level", schedule=VP).posterior_mean(
            torch.zeros(3, 2, dtype=DTYPE), VP.level(0.5)),
        lambda: reverse_model(network(reference), "full"),
    ]
    for case in cases:
        with pytest.raises(InputError) as err:
            case()
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------- a reverse model for model_path_kl


@pytest.mark.parametrize("family", ["beta", "diag"])
def test_reverse_model_of_an_exact_network_reproduces_its_family(family):
    """The network's exact mean with the family's variances: model_path_kl = path_kl of the family
    within the two errors, and the mean part 0 (to rounding)."""
    reference = MixtureReference.from_components([0.3, 0.7], [[-1.0], [1.5]], stds=[0.4, 0.6])
    grid = VP.grid(6)
    posterior = network(reference, "eps", "level", probes=2)  # in 1-D the Rademacher diagonal is exact
    result = model_path_kl(reference, grid, reverse_model(posterior, family), rtol=1e-6)
    engine = pathkl.path_kl(reference, grid, pathkl.get_family(family), rtol=1e-6)
    assert abs(result.total.value - engine.total) <= result.total.error + engine.total_error
    assert result.mean.value == pytest.approx(0.0, abs=1e-18)


def test_reverse_model_accepts_a_variance_function():
    reference = GaussianReference.from_eigenvalues([0.5, 2.0])
    model = reverse_model(reference, lambda x, t, grid: grid.beta[t - 1])
    x, grid = torch.zeros(3, 2, dtype=DTYPE), VP.grid(4)
    step = ReverseStep.ddim(grid, 2)
    close(model.mean(x, 2, grid), step.mean(x, reference.posterior_mean(x, step.level)), 1e-15)
    assert float(model.variance(x, 2, grid)) == float(grid.beta[1])
    assert math.isfinite(float(model.variance(x, 2, grid)))
