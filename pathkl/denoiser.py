"""Bring your own denoiser: a trained network as the posterior of a reverse chain (docs/learned.md,
section "Bring your own network").

A network ``net(x_t, t)`` predicts, at ``x_t = sqrt(abar) x_0 + sigma eps`` (``sigma^2 = 1 - abar``),
one of (``prediction``):

- ``"eps"``: the noise, ``eps_hat = E[eps | x_t]`` (Ho et al. 2020);
- ``"score"``: ``grad log q_t(x_t) = -eps_hat / sigma``;
- ``"x0"``: ``xhat_0 = E[x_0 | x_t]`` (diffusers' ``"sample"``);
- ``"v"``: ``v = sqrt(abar) eps - sigma x_0`` (Salimans & Ho 2022; diffusers' ``"v_prediction"``).

Each is affine in the others given ``x_t`` (docs/theory.md section 2.2, Tweedie):

    xhat_0 = (x - sigma eps_hat) / sqrt(abar) = (x + sigma^2 score) / sqrt(abar) = sqrt(abar) x - sigma v,
    eps_hat = (x - sqrt(abar) xhat_0) / sigma

(:func:`x0_from`, :func:`eps_from`; pathkl.heads converts its fixed score with them too).

``t`` is the network's own time (``time``):

- ``"step"``: the integer index of the training chain, 0-based as in Ho et al.'s code and diffusers:
  ``t = n - 1`` for the chain's level ``n = 1..N`` (``abar_n = prod_{m <= n} (1 - beta_m)``, diffusers'
  ``alphas_cumprod[t]``). ``chain`` is the training chain as a pathkl grid of N steps
  (e.g. ``get_schedule("ddpm-linear").grid(1000)``); a level off that chain is refused.
- ``"level"``: the continuous time ``tau in [0, 1]`` of ``schedule`` (``abar = abar(tau)``, docs/theory.md
  section 1.1), found from a level's ``log abar`` by bisection (``abar(tau)`` is strictly decreasing).

:class:`NetworkPosterior` turns the network into the posterior-like object that the sampler
(:func:`pathkl.sampling.sample`) and the families' draws use on a closed-form reference:
``posterior_mean``, ``posterior_cov_matvec`` (one JVP: ``C v = (sigma^2 / sqrt(abar)) J_{xhat_0} v``,
docs/theory.md section 2.3), ``posterior_cov_diagonal`` (a learned head, or M Rademacher probes,
OCM paper eq. 9), ``posterior_cov`` (dense, ``torch.func.jacfwd``, small d) and
``posterior_trace_estimate`` (Analytic-DPM's Monte Carlo estimate over data samples, Bao et al. 2022,
arXiv 2201.06503, Theorem 1: ``E_{q_t} tr C / d = (sigma^2 / abar) (1 - E_{q_t} ||eps_hat||^2 / d)``,
:func:`analytic_trace_estimate`, which pathkl.heads' ``analytic`` head uses too).
:func:`reverse_model` makes a Gaussian reverse model of any such object for
:func:`pathkl.model_path_kl`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

from .arrays import array_arguments, as_tensor
from .covariances import ReverseStep
from .errors import InputError
from .estimate import Estimate
from .families import get_family
from .matvecs import closed_form_cov_matvec, rademacher_diagonal
from .model_kl import DiagonalGaussianModel
from .schedules import DTYPE, Grid, NoiseLevel, Schedule

Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``net(x_t, t)``: a batch ``x_t`` (n, d) and its times ``t`` (n,) -> a prediction (n, d)."""

Prediction = Literal["eps", "score", "x0", "v"]
PREDICTIONS = ("eps", "score", "x0", "v")
TIMES = ("step", "level")
#: The families whose covariance is diagonal and deterministic given x_t, for :func:`reverse_model`.
DIAGONAL_FAMILIES = ("beta", "beta_tilde", "analytic", "diag")

#: Relative agreement of ``log abar`` for a level to count as a step of the training chain (a chain
#: subsequence's segment sums and the chain's own cumulative sum differ by rounding, ~N eps).
_CHAIN_RTOL = 1e-10
_BISECTION_STEPS = 80


def level_column(t: torch.Tensor) -> torch.Tensor:
    """A level quantity ready to broadcast against (n, d) rows: a 0-d one as is (it broadcasts on any
    device), a per-row (n,) one as a column (n, 1)."""
    return t if t.ndim == 0 else t.reshape(-1, 1)


def x0_from(prediction: str, x: torch.Tensor, out: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
    """``xhat_0 = E[x_0 | x_t = x]`` (n, d) from a network's ``out`` of kind ``prediction`` at ``x`` (Tweedie,
    module docstring): ``(x - sigma eps_hat) / sqrt(abar)``, ``(x + sigma^2 score) / sqrt(abar)``, ``out``
    itself, or ``sqrt(abar) x - sigma v``; ``level`` 0-d or per-row (n,)."""
    root_abar, var = level_column(level.abar).sqrt(), level_column(level.one_minus_abar)
    if prediction == "x0":
        return out
    if prediction == "eps":
        return (x - var.sqrt() * out) / root_abar
    if prediction == "score":
        return (x + var * out) / root_abar
    return root_abar * x - var.sqrt() * out  # "v"


def eps_from(prediction: str, x: torch.Tensor, out: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
    """``eps_hat = E[eps | x_t = x] = (x - sqrt(abar) xhat_0) / sigma`` (n, d) from a network's ``out`` of
    kind ``prediction``: ``out`` itself, ``-sigma score``, ``(x - sqrt(abar) out) / sigma``, or
    ``sigma x + sqrt(abar) v``; ``level`` 0-d or per-row (n,)."""
    root_abar, sigma = level_column(level.abar).sqrt(), level_column(level.one_minus_abar).sqrt()
    if prediction == "eps":
        return out
    if prediction == "score":
        return -sigma * out
    if prediction == "x0":
        return (x - root_abar * out) / sigma
    return sigma * x + root_abar * out  # "v"


#: Samples of ``x_0``: a tensor (m, d), every row used, or a function ``(n, generator) -> (n, d)``.
Data = torch.Tensor | Callable[[int, torch.Generator], torch.Tensor]


def level_generator(seed: int, level: NoiseLevel, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded by ``(seed, abar)``: the same draws at a level whatever was drawn before, and
    independent draws at different levels."""
    return torch.Generator(device=device).manual_seed(hash((seed, float(level.abar))) % (1 << 62))


def analytic_trace_estimate(noise_prediction: Callable[[torch.Tensor, NoiseLevel], torch.Tensor], data: Data,
                            level: NoiseLevel, *, samples: int = 256, seed: int = 0) -> Estimate:
    """``E_{q_t} tr Cov[x_0 | x_t] / d = (sigma^2 / abar) (1 - E_{q_t} ||eps_hat(x_t)||^2 / d)`` at a 0-d level
    (Analytic-DPM, Bao et al. 2022, arXiv 2201.06503, Theorem 1, noise-prediction form: the law of total
    covariance ``abar Cov[x_0 | x_t] = sigma^2 Cov[eps | x_t]``) by Monte Carlo over
    ``x_t = sqrt(abar) x_0 + sigma eps``, ``x_0`` from ``data`` (``samples`` rows where it is a function),
    ``eps`` from :func:`level_generator`: the mean and its standard error over the draws.

    The draws' own noise is a control variate, ``E ||eps||^2 / d = 1`` exactly: with
    ``u = (||eps||^2 - ||eps_hat||^2) / d`` and ``c = ||eps||^2 / d - 1``, ``1 - E ||eps_hat||^2 / d =
    E (u - k c)`` for every k, and k is the draws' least-squares coefficient of u on c (Glasserman 2004,
    "Monte Carlo Methods in Financial Engineering", section 4.1; a bias O(1 / n)), so the variance is
    at most that of either fixed form: ``k = 1``, the plain ``1 - ||eps_hat||^2 / d`` of Analytic-DPM's
    Gamma, which is best at low noise (``eps_hat`` small), and ``k = 0``, best at high noise, where
    ``eps - eps_hat = O(sqrt(abar))`` and ``sigma^2 / abar`` amplifies the plain form's spread of
    ``||eps_hat||^2``. The standard error is that of ``u - k c``.
    """
    generator = level_generator(seed, level)
    x0 = as_tensor(data(samples, generator) if callable(data) else data, "data samples").to(DTYPE)
    eps = torch.randn(x0.shape, dtype=DTYPE, generator=generator)
    x = (math.sqrt(float(level.abar)) * x0 + math.sqrt(float(level.one_minus_abar)) * eps).to(level.abar.device)
    with torch.no_grad():
        eps_hat = noise_prediction(x, level).cpu()
    d = x0.shape[-1]
    u = ((eps - eps_hat) * (eps + eps_hat)).sum(-1) / d
    c = (eps**2).sum(-1) / d - 1
    centred = c - c.mean()
    values = u - float((centred * u).sum() / (centred**2).sum()) * c
    scale = float(level.one_minus_abar) / float(level.abar)
    return Estimate(scale * float(values.mean()), stderr=scale * float(values.std()) / math.sqrt(values.numel()))


class NetworkPosterior:
    """A trained network as a posterior: ``E[x_0 | x_t]`` and ``Cov[x_0 | x_t]`` products at a level.

    ``net``: ``net(x_t, t) -> prediction`` (module docstring for ``prediction`` and ``time``); ``dim``:
    the data dimension d. ``dtype``: what the network computes in (inputs are cast to it, outputs
    back to float64); None passes float64. ``diagonal``: a learned head ``head(x_t, t) ->
    diag Cov[x_0 | x_t]`` (n, d) in the network's time, used by ``posterior_cov_diagonal``; without
    one, ``probes`` Rademacher probes estimate it (``probes`` JVPs). ``data``: samples of ``x_0``, a
    tensor (m, d) (all rows used) or a function ``(n, generator) -> (n, d)`` (``trace_samples`` rows),
    for ``posterior_trace_estimate`` (the ``analytic`` family). ``seed``: the probes and the trace's
    noise are drawn from generators seeded by ``(seed, level)``, so every call at a level is
    reproducible, whatever was called before.
    """

    def __init__(self, net: Network, *, dim: int, prediction: Prediction = "eps", time: str = "step",
                 chain: Grid | None = None, schedule: Schedule | None = None, dtype: torch.dtype | None = None,
                 diagonal: Network | None = None, probes: int = 16,
                 data: Data | None = None,
                 trace_samples: int = 256, seed: int = 0):
        if prediction not in PREDICTIONS:
            raise InputError(f"unknown prediction kind {prediction!r}; use one of {', '.join(PREDICTIONS)}")
        if time not in TIMES:
            raise InputError(f"unknown network time {time!r}; use 'step' (chain index) or 'level' (tau in [0, 1])")
        if time == "step" and chain is None:
            raise InputError("time='step' needs chain=, the training chain as a grid (e.g. ddpm-linear with N steps)")
        if time == "level" and schedule is None:
            raise InputError("time='level' needs schedule=, the continuous schedule the network was trained on")
        if not (isinstance(dim, int) and dim >= 1):
            raise InputError(f"dim must be an integer >= 1, got {dim!r}")
        if probes < 2:
            raise InputError(f"the Rademacher diagonal needs probes >= 2 (for a standard error), got {probes}")
        if not callable(data) and data is not None:
            data = as_tensor(data, "data").to(DTYPE)
            if data.ndim != 2 or data.shape[1] != dim or data.shape[0] < 2:
                raise InputError(f"data must be samples of x_0 with shape (m >= 2, {dim}), got {tuple(data.shape)}")
        self.net, self.dim, self.prediction, self.time = net, dim, prediction, time
        self.chain, self.schedule, self.dtype = chain, schedule, dtype
        self.diagonal, self.probes, self.data = diagonal, probes, data
        self.trace_samples, self.seed = trace_samples, seed
        self._times: dict[float, torch.Tensor] = {}

    # ---- time conventions --------------------------------------------------------------------
    def network_time(self, lv: NoiseLevel) -> torch.Tensor:
        """The network's ``t`` of the level ``lv`` (a 0-d tensor): the chain index ``n - 1`` where
        ``abar_n = abar`` (``time="step"``), or ``tau`` with ``abar(tau) = abar`` (``time="level"``).
        :class:`InputError` where the level is off the training chain or outside ``[0, 1]``."""
        one_minus = float(lv.one_minus_abar)  # log1p keeps log abar's relative precision near abar = 1
        log_abar = math.log1p(-one_minus) if one_minus < 0.5 else math.log(float(lv.abar))
        if log_abar not in self._times:
            self._times[log_abar] = self._chain_index(log_abar) if self.time == "step" else self._tau(log_abar)
        return self._times[log_abar]

    def level(self, t: float) -> NoiseLevel:
        """The noise level of the network's time ``t`` (the inverse of :meth:`network_time`)."""
        if self.time == "step":
            length = self.chain.T
            if not (isinstance(t, int) and 0 <= t < length):
                raise InputError(f"network step t = {t!r} outside the training chain's 0..{length - 1}")
            return self.chain.level(t + 1)
        if not 0.0 <= t <= 1.0:
            raise InputError(f"network time tau = {t!r} outside [0, 1]")
        return self.schedule.level(t)

    def _chain_index(self, log_abar: float) -> torch.Tensor:
        levels = self.chain.log_abar
        n = int(torch.argmin((levels - log_abar).abs()))
        if abs(float(levels[n]) - log_abar) > _CHAIN_RTOL * abs(log_abar):
            raise InputError(f"noise level abar = {math.exp(log_abar):.6g} is not a level of the network's "
                             f"{self.chain.T}-step training chain (build the grid on the chain: grid_from_chain)")
        if n == 0:
            raise InputError(f"noise level abar = 1 (t = 0) is outside the training chain's steps 1..{self.chain.T}")
        return torch.tensor(n - 1)

    def _tau(self, log_abar: float) -> torch.Tensor:
        def log_abar_at(tau: float) -> float:
            return float(self.schedule.log_abar(torch.tensor(tau, dtype=DTYPE)))

        end = log_abar_at(1.0)
        if not end * (1 + 1e-12) <= log_abar <= 0.0:
            raise InputError(f"noise level abar = {math.exp(log_abar):.6g} outside the schedule's range "
                             f"[{math.exp(end):.6g}, 1] (tau outside [0, 1])")
        low, high = 0.0, 1.0
        for _ in range(_BISECTION_STEPS):  # log abar(tau) decreases: keep log_abar_at(low) >= log_abar
            mid = 0.5 * (low + high)
            low, high = (mid, high) if log_abar_at(mid) >= log_abar else (low, mid)
        return torch.tensor(0.5 * (low + high), dtype=DTYPE)

    # ---- the network's prediction and Tweedie ------------------------------------------------
    def _output(self, net: Network, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        t = self.network_time(lv).to(x.device).expand(x.shape[0])
        if self.dtype is not None:
            x, t = x.to(self.dtype), (t if self.time == "step" else t.to(self.dtype))
        out = net(x, t)
        if out.shape != x.shape:
            raise InputError(f"the network must return shape {tuple(x.shape)} for x_t of that shape, got "
                             f"{tuple(out.shape)}")
        return out.to(DTYPE)

    @array_arguments
    def posterior_mean(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``xhat_0(x) = E[x_0 | x_t = x]`` (n, d) from the network's prediction (:func:`x0_from`)."""
        return x0_from(self.prediction, x, self._output(self.net, x, lv), lv)

    @array_arguments
    def noise_prediction(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``eps_hat(x) = E[eps | x_t = x] = (x - sqrt(abar) xhat_0) / sigma`` (n, d) (:func:`eps_from`)."""
        return eps_from(self.prediction, x, self._output(self.net, x, lv), lv)

    @array_arguments
    def score(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``grad log q_t(x) = -eps_hat(x) / sigma`` (n, d)."""
        return self.noise_prediction(x, lv) / -math.sqrt(float(lv.one_minus_abar))

    # ---- covariance of x_0 given x_t ---------------------------------------------------------
    @staticmethod
    def _jacobian_scale(lv: NoiseLevel) -> float:
        """``sigma^2 / sqrt(abar)``: ``C = (sigma^2 / sqrt(abar)) J_{xhat_0}`` (docs/theory.md section 2.3)."""
        return float(lv.one_minus_abar) / math.sqrt(float(lv.abar))

    @array_arguments
    def posterior_cov_matvec(self, x: torch.Tensor, v: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``C(x) v = (sigma^2 / sqrt(abar)) J_{xhat_0}(x) v`` row-wise: one ``torch.func.jvp``."""
        _, tangent = torch.func.jvp(lambda y: self.posterior_mean(y, lv), (x,), (v,))
        return self._jacobian_scale(lv) * tangent

    @array_arguments
    def posterior_cov(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``C(x)`` (n, d, d), dense by ``torch.func.jacfwd`` (d JVPs of the batch; for small d).

        Rows are independent, so the Jacobian of ``sum_rows xhat_0`` holds every row's. Tweedie's C is
        symmetric; a network's Jacobian need not be, and its symmetric part is returned."""
        jac = torch.func.jacfwd(lambda y: self.posterior_mean(y, lv).sum(0))(x).permute(1, 0, 2)
        return (0.5 * self._jacobian_scale(lv)) * (jac + jac.transpose(1, 2))

    @array_arguments
    def posterior_cov_diagonal(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``diag C(x)`` (n, d): the learned head's, else the Rademacher estimate of :meth:`diagonal_estimate`
        floored at 0 (C >= 0)."""
        if self.diagonal is not None:
            return self._output(self.diagonal, x, lv)
        return self.diagonal_estimate(x, lv).diagonal.clamp_min(0.0)

    @array_arguments
    def diagonal_estimate(self, x: torch.Tensor, lv: NoiseLevel):
        """``diag C(x)`` from ``probes`` Rademacher probes ``v * (C v)`` (OCM paper eq. 9), with its
        per-entry standard error (:class:`pathkl.matvecs.DiagonalEstimate`)."""
        return rademacher_diagonal(lambda v: self.posterior_cov_matvec(x, v, lv), tuple(x.shape), self.probes,
                                   generator=level_generator(self.seed, lv, x.device), dtype=x.dtype, device=x.device)

    def posterior_trace_estimate(self, lv: NoiseLevel) -> Estimate:
        """``E_{q_t} tr C / d`` by Analytic-DPM's Monte Carlo over ``data`` with this network's noise
        prediction (:func:`analytic_trace_estimate`), with its standard error."""
        if self.data is None:
            raise InputError("the analytic family with a network needs data=, samples of x_0, for its Monte "
                             "Carlo trace (Analytic-DPM)")
        return analytic_trace_estimate(self.noise_prediction, self.data, lv, samples=self.trace_samples,
                                       seed=self.seed)


def reverse_model(posterior, variance: str | Callable = "diag", *, eta: float = 1.0) -> DiagonalGaussianModel:
    """A Gaussian reverse model for :func:`pathkl.model_path_kl` from any posterior-like object
    (a :class:`NetworkPosterior` or a reference): the mean ``lam_t xhat_0(x) + kappa_t x`` of a DDIM(eta)
    step (eta = 1: DDPM, ``mu_t = (x + beta_t score) / sqrt(alpha_t)``; docs/theory.md section 2.1) and
    the diagonal covariance of the family named ``variance`` (``beta``, ``beta_tilde``, ``analytic``,
    ``diag``: the variances of its own sampler draw, docs/theory.md section 3.2), or
    a function ``(x, t, grid) -> variances`` (e.g. a trained head)."""
    def mean(x: torch.Tensor, t: int, grid: Grid) -> torch.Tensor:
        step = ReverseStep.ddim(grid, t, eta=eta)
        return step.mean(x, posterior.posterior_mean(x, step.level))

    if callable(variance):
        return DiagonalGaussianModel(mean, variance)
    if variance not in DIAGONAL_FAMILIES:
        raise InputError(f"reverse_model takes a variance function or one of the diagonal families "
                         f"{', '.join(DIAGONAL_FAMILIES)}, got {variance!r}")
    family = get_family(variance)
    if family.ddpm_only and eta != 1.0:
        raise InputError(f"the {family.name!r} family is a DDPM choice (eta = 1)")

    def variances(x: torch.Tensor, t: int, grid: Grid) -> torch.Tensor:
        # Its draw is diag(Sigma_t)^{1/2} z: with z = 1, the standard deviations.
        step = ReverseStep.ddim(grid, t, eta=eta)
        ones = torch.ones_like(x)
        return family.noise(posterior, x, step, closed_form_cov_matvec(posterior, x, step), ones) ** 2

    return DiagonalGaussianModel(mean, variances)
