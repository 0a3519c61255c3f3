"""Covariance heads on a fixed score network: the estimators of the OCM paper's Table 2 (Ou et al.,
"Improved diffusion models with optimal covariance matching", ICLR 2025, arXiv 2406.10808), each as
a diagonal (or isotropic) estimate of ``C(x) = diag Cov[x_0 | x_t = x]`` at any noise level
(docs/learned.md section 5).

Notation: ``x_t = sqrt(a) x_0 + sqrt(s) eps``, ``a = abar_t``, ``s = 1 - abar_t``; ``sigma(x)`` the
(true or learned) score, ``eps_hat = -sqrt(s) sigma`` the noise prediction, ``H = d sigma / dx``
(Hessian of log q_t, or the Jacobian of a learned score). Every estimator is turned into ``C`` by
Tweedie's second-order formula ``C = (s/a)(I + s H)`` (OCM eq. (8) with ``alpha^2 = a``,
``sigma^2 = s``; eq. (19)) or by the law of total covariance ``C = (s/a) Cov[eps | x_t]``:

================ ============================================== ==========================================
name             what the head learns (target, paper equation)  conversion to ``diag C``
================ ============================================== ==========================================
``ocm``          ``y = (1 + s h) / a``, ``h -> diag H``, by      ``s y`` (``= (s/a)(1 + s h)``, eq. (19))
                 eq. (11) with ``probes`` Rademacher probes
                 (paper: 1) of ``v * ((v + s H v) / a)``; ``H v``
                 one JVP of the score
``probe:M``      the same by eq. (10), regression on the mean    ``s y``
                 of M probes
``sn_ddpm``      ``g -> E[eps^2 | x_t]``, eq. (23) (SN-DDPM, Bao ``(s/a)(g - eps_hat^2)`` (eq. (33))
                 et al. 2022a, arXiv 2206.07309)
``npr_ddpm``     ``r -> E[(eps - eps_hat)^2 | x_t]`` (NPR-DDPM,  ``(s/a) r``
                 Bao et al. 2022a: noise-prediction residual)
``i_ddpm``       ``v``: ``Sigma = exp(v log beta + (1 - v) log    ``(Sigma - beta~) / gamma^2`` on the
                 beta~)`` on the training chain's step ending at training chain's step ending at the
                 the level, trained by the VLB term              level (docs/theory.md section 2.3)
                 ``KL(q(x_{t-1}|x_t,x_0) || N(mu_theta, Sigma))``
                 (Nichol & Dhariwal 2021, eqs. (15)-(16); OCM
                 eq. (22))
``analytic``     training-free: ``Gamma = E_{q_t}||eps_hat||^2 / ``(s/a)(1 - Gamma)``, isotropic
                 d`` by Monte Carlo over the data, the draws'
                 noise a control variate (``E ||eps||^2 = d``)
                 (Analytic-DPM, Bao et al. 2022b, arXiv
                 2201.06503, Theorem 1; pathkl.denoiser's
                 ``analytic_trace_estimate``)
``rademacher:M`` training-free: ``y = (1/M) sum_m v_m * ((v_m +  ``s y``
                 s H v_m) / a)`` at each point (eq. (9)), fresh
                 probes per call
================ ============================================== ==========================================

Each minimiser, with the exact score, is the exact ``diag C``: eq. (11) and eq. (10) with probes
redrawn for every point by Theorem 2 and claim ``ocm.eq10-probe-regression`` (docs/theory.md section 7.2);
SN-DDPM by OCM Theorem 3; NPR-DDPM since ``E[(eps - E[eps|x])^2 | x] = Var[eps | x]``; I-DDPM since the
VLB term is minimised by ``Sigma = beta~ + gamma^2 E[(x_0 - xhat_0)^2 | x_t]`` (Nichol & Dhariwal's
interpolation reaches ``C`` in ``[0, s]`` for v in [0, 1]; v is not constrained, as in their code).
With a learned score, NPR-DDPM and I-DDPM converge to the error of the model's own mean (the optimal
covariance given an imperfect mean, Bao et al. 2022a), the others to ``diag C`` of the learned score.

Weights: ``ocm`` and ``probe:M`` apply eq. (11) and eq. (10) to the symmetric operator
``(I + s H) / a = C / s`` instead of ``H`` (``v * (v / a) = 1 / a``, so ``||y - v * ((v + s H v)/a)||^2
= (s/a)^2 ||h - v * (H v)||^2`` with ``y = (1 + s h)/a``): the paper's eq. (13) with the level weight
``(s/a)^2``. A positive weight per level leaves each level's minimiser ``h = diag H`` unchanged
(Theorem 2 holds level by level), and it makes the target ``v * (C v) / s`` of order 1 at every level
(``diag C / s`` runs from 1 at low noise to the data's variance at high noise), where eq. (13)'s
``v * (H v)`` runs from ``-1/s`` to ``-1`` and the conversion ``(s/a)(1 + s h)`` multiplies an error in
``h`` by ``s^2 / a``. The losses are :func:`pathkl.ocm.ocm_loss` and :func:`pathkl.ocm.probe_regression_loss`.

Clipping (``clip``): ``"adpm"`` clamps ``diag C`` into the bounds of Analytic-DPM's Theorem 2 and its
bounded-data corollary, ``0 <= C_ii <= min(s/a, ((b_i - a_i)/2)^2)`` (``[a_i, b_i]`` the training data's
range): the lower bound and Popoviciu's ``((b - a)/2)^2`` hold at every point, ``s/a`` only for the
average over ``q_t`` (``E Cov[eps | x_t] <= I``), which is where Analytic-DPM applies it. ``"ocm"``
is that plus the OCM paper's Appendix B.2 clip of the second-last kernel ``p(x_1 | x_2)``:
``sqrt(Sigma_ii) E|eps| <= (b_i - a_i) / 255`` (``y = 1``; the images' ``2/255`` for data in [-1, 1]),
applied by :func:`learned_model` at step 2 of its grid.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .covariances import ReverseStep
from .denoiser import analytic_trace_estimate, eps_from, level_column, reverse_model, x0_from
from .errors import InputError
from .estimate import Estimate
from .model_kl import DiagonalGaussianModel
from .ocm import HessianProducts, ocm_loss, probe_products, probe_regression_loss, rademacher_probes
from .references import MixtureReference
from .references.product import blocks
from .schedules import DTYPE, Grid, NoiseLevel
from .score_net import LevelNet, ScoreFn, checked_samples, checked_training, noised, training_levels

ESTIMATORS: tuple[str, ...] = ("ocm", "probe:M", "sn_ddpm", "npr_ddpm", "i_ddpm", "analytic", "rademacher:M")
CLIPS: tuple[str, ...] = ("adpm", "ocm")
#: ``E|eps|`` for a standard normal (OCM Appendix B.2's clip).
_MEAN_ABS_NORMAL = math.sqrt(2.0 / math.pi)
#: Quantisation levels of the images the B.2 clip was written for.
_IMAGE_LEVELS = 255.0


def _var_ratio(level: NoiseLevel) -> torch.Tensor:
    """``s / a = (1 - abar) / abar`` as a column."""
    return level_column(level.one_minus_abar / level.abar)


def per_level(fn: Callable[[torch.Tensor, NoiseLevel], torch.Tensor]) -> Callable[[torch.Tensor, NoiseLevel], torch.Tensor]:
    """``fn`` of one 0-d level extended to per-row levels (``abar`` of shape (n,)): rows grouped by their
    level, one call per distinct level, reassembled without in-place writes (so JVPs pass through)."""

    def wrapped(x: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        if level.abar.ndim == 0:
            return fn(x, level)
        values, inverse = torch.unique(level.abar, return_inverse=True)
        order = torch.argsort(inverse, stable=True)
        parts = []
        for k in range(values.numel()):
            rows = order[inverse[order] == k]
            first = rows[0]
            parts.append(fn(x[rows], NoiseLevel(level.abar[first], level.one_minus_abar[first])))
        return torch.cat(parts)[torch.argsort(order)]

    return wrapped


@dataclass(frozen=True)
class TrueScore:
    """The reference's exact score ``grad log q_t`` as a :data:`~pathkl.score_net.ScoreFn`, and its
    closed-form Hessian products ``hvp(x, v, level) = H v``. Per-row levels are passed through where
    every block of the reference is a mixture (whose closed forms take them), else grouped
    (:func:`per_level`)."""

    reference: object

    def _rows(self, fn):
        return fn if all(isinstance(b, MixtureReference) for b in blocks(self.reference)) else per_level(fn)

    def __call__(self, x: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        return self._rows(self.reference.score)(x, level)

    def hvp(self, x: torch.Tensor, v: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        both = torch.cat([x, v], -1)
        d = x.shape[-1]
        return self._rows(lambda xv, lv: self.reference.hvp(xv[:, :d], xv[:, d:], lv))(both, level)


def true_score(reference) -> TrueScore:
    """The exact score of ``reference`` (:class:`TrueScore`)."""
    return TrueScore(reference)


def score_products(score: ScoreFn, x: torch.Tensor, level: NoiseLevel) -> HessianProducts:
    """``v -> (C(x) / s) v = (v + s H(x) v) / a`` (Tweedie; ``H = d score / dx``, ``s = 1 - abar``,
    ``a = abar``): the score's own closed-form ``hvp`` where it has one (:class:`TrueScore`), else one
    JVP of ``score`` per product (``torch.func.jvp``)."""
    s, a = level_column(level.one_minus_abar), level_column(level.abar)
    own = getattr(score, "hvp", None)

    def products(v: torch.Tensor) -> torch.Tensor:
        if own is not None:
            hv = own(x, v, level)
        else:
            _, hv = torch.func.jvp(lambda y: score(y, level), (x,), (v,))
        return (v + s * hv) / a

    return products


@dataclass(frozen=True)
class ChainStep:
    """The training chain's step ending at a level: ``beta, beta~, gamma^2`` and I-DDPM's clipped
    ``log beta~`` (its first step's ``beta~ = 0`` replaced by the second's), columns (n, 1)."""

    beta: torch.Tensor
    beta_tilde: torch.Tensor
    gamma2: torch.Tensor
    log_beta_tilde: torch.Tensor

    @staticmethod
    def at(chain: Grid, level: NoiseLevel) -> ChainStep:
        """Interpolate the chain's ``log alpha`` linearly in ``log abar`` (exact at its levels)."""
        log_abar = torch.log(level.abar).reshape(-1)
        xp = -chain.log_abar[1:]  # increasing with t
        if chain.T == 1:
            log_alpha = chain.log_alpha.expand_as(log_abar)
        else:
            idx = torch.searchsorted(xp, -log_abar).clamp(1, chain.T - 1)
            w = ((-log_abar - xp[idx - 1]) / (xp[idx] - xp[idx - 1])).clamp(0.0, 1.0)
            log_alpha = chain.log_alpha[idx - 1] * (1 - w) + chain.log_alpha[idx] * w
        prev = log_abar - log_alpha
        beta, _, beta_tilde, gamma2 = ReverseStep.transition_scalars(
            torch.exp(prev), -torch.expm1(prev), level.one_minus_abar.reshape(-1).expand_as(prev), log_alpha)
        floor = chain.beta_tilde[min(1, chain.T - 1)]
        log_beta_tilde = torch.log(torch.maximum(beta_tilde, floor))
        return ChainStep(*(level_column(v) for v in (beta, beta_tilde, gamma2, log_beta_tilde)))


@dataclass(frozen=True)
class Batch:
    """Training rows: data ``x0``, noise ``eps``, ``x = x_t`` at per-row ``level``; the fixed score there
    (detached), the products ``v -> (v + s H v) / a`` and their ``probes`` (m, n, d) where the estimator uses
    them, and the training chain's step (I-DDPM)."""

    x0: torch.Tensor
    eps: torch.Tensor
    x: torch.Tensor
    level: NoiseLevel
    score: torch.Tensor
    products: HessianProducts | None = None
    probes: torch.Tensor | None = None
    chain: ChainStep | None = None

    @property
    def eps_hat(self) -> torch.Tensor:
        """The noise prediction ``-sqrt(s) score``."""
        return eps_from("score", self.x, self.score, self.level)


def _ocm(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    return ocm_loss(out, batch.products, batch.probes)


def _probe(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    return probe_regression_loss(out, batch.products, batch.probes)


def _sn(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    return ((batch.eps**2 - out) ** 2).sum(-1).mean()


def _npr(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    return (((batch.eps - batch.eps_hat) ** 2 - out) ** 2).sum(-1).mean()


def _iddpm_log_variance(v: torch.Tensor, chain: ChainStep) -> torch.Tensor:
    """Nichol & Dhariwal eq. (15): ``log Sigma = v log beta + (1 - v) log beta~`` (clipped beta~)."""
    return v * torch.log(chain.beta) + (1 - v) * chain.log_beta_tilde


def _iddpm(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The VLB term ``KL(q(x_{t-1} | x_t, x_0) || N(mu_theta, Sigma))`` in Sigma (mean fixed), per
    coordinate ``(1/2)[(beta~ + gamma^2 (x_0 - xhat_0)^2) / Sigma - 1 + log Sigma - log beta~]``
    (``mu~ - mu_theta = gamma (x_0 - xhat_0)``, docs/theory.md section 2.3)."""
    chain = batch.chain
    log_var = _iddpm_log_variance(out, chain)
    x0_hat = x0_from("eps", batch.x, batch.eps_hat, batch.level)
    second = chain.beta_tilde + chain.gamma2 * (batch.x0 - x0_hat) ** 2
    return 0.5 * (second * torch.exp(-log_var) - 1 + log_var - chain.log_beta_tilde).sum(-1).mean()


@dataclass(frozen=True)
class Point:
    """What a conversion to ``diag C`` reads at the points ``x`` of a level: the score there and the
    training chain's step (I-DDPM)."""

    x: torch.Tensor
    level: NoiseLevel
    score: torch.Tensor
    chain: ChainStep | None = None

    @property
    def eps_hat(self) -> torch.Tensor:
        return eps_from("score", self.x, self.score, self.level)


def _from_hessian(y: torch.Tensor, p: Point) -> torch.Tensor:
    """Tweedie (OCM eq. (19)): ``C = s y``, ``y = (1 + s diag H) / a``."""
    return level_column(p.level.one_minus_abar) * y


def _from_second_moment(g: torch.Tensor, p: Point) -> torch.Tensor:
    """SN-DDPM (OCM eq. (33)): ``C = (s/a)(g - eps_hat^2)``."""
    return _var_ratio(p.level) * (g - p.eps_hat**2)


def _from_residual(r: torch.Tensor, p: Point) -> torch.Tensor:
    """NPR-DDPM: ``C = (s/a) r``."""
    return _var_ratio(p.level) * r


def _from_interpolation(v: torch.Tensor, p: Point) -> torch.Tensor:
    """I-DDPM: ``C = (Sigma - beta~) / gamma^2`` (docs/theory.md section 2.3: ``Sigma* = beta~ + gamma^2 C``)."""
    return (torch.exp(_iddpm_log_variance(v, p.chain)) - p.chain.beta_tilde) / p.chain.gamma2


@dataclass(frozen=True)
class Estimator:
    """One covariance estimator (module docstring's table): its training loss ``loss(out, batch)`` (None:
    training-free), the conversion ``covariance(out, point)`` of the head's output to ``diag C``,
    whether it needs products of the score's Jacobian and the training chain's steps, and its source."""

    name: str
    source: str
    loss: Callable[[torch.Tensor, Batch], torch.Tensor] | None
    covariance: Callable[[torch.Tensor, Point], torch.Tensor] | None
    uses_products: bool = False
    uses_chain: bool = False
    sized: bool = False

    @property
    def trained(self) -> bool:
        return self.loss is not None


_ESTIMATORS = {
    "ocm": Estimator("ocm", "OCM paper eq. (11), (13)", _ocm, _from_hessian, uses_products=True),
    "probe": Estimator("probe", "OCM paper eq. (10)", _probe, _from_hessian, uses_products=True, sized=True),
    "sn_ddpm": Estimator("sn_ddpm", "Bao et al. 2022a (SN-DPM); OCM paper eq. (23)-(24)", _sn, _from_second_moment),
    "npr_ddpm": Estimator("npr_ddpm", "Bao et al. 2022a (NPR-DPM)", _npr, _from_residual),
    "i_ddpm": Estimator("i_ddpm", "Nichol & Dhariwal 2021, eqs. (15)-(16); OCM paper eq. (22)", _iddpm,
                        _from_interpolation, uses_chain=True),
    "analytic": Estimator("analytic", "Bao et al. 2022b (Analytic-DPM), Theorem 1", None, None),
    "rademacher": Estimator("rademacher", "OCM paper eq. (9) (Bekas et al. 2007)", None, _from_hessian,
                            uses_products=True, sized=True),
}


def parse_estimator(name: str) -> tuple[Estimator, int]:
    """``(estimator, M)`` from a name of :data:`ESTIMATORS` (``probe:M`` and ``rademacher:M`` with an
    integer M >= 1; M = 1 for the others)."""
    match = re.fullmatch(r"([a-z_]+)(?::(\d+))?", str(name))
    spec = _ESTIMATORS.get(match.group(1)) if match else None
    if spec is None or spec.sized != (match.group(2) is not None) or (spec.sized and int(match.group(2)) < 1):
        raise InputError(f"unknown covariance estimator {name!r}; choose from {', '.join(ESTIMATORS)} (M >= 1)")
    return spec, int(match.group(2)) if spec.sized else 1


def _head_inputs(x: torch.Tensor, eps_hat: torch.Tensor) -> torch.Tensor:
    """A head sees ``x_t`` and the fixed network's noise prediction (the shared features of OCM eqs.
    (20)-(21), here the score network's output itself)."""
    return torch.cat([x, eps_hat], -1)


@dataclass
class CovarianceHead:
    """A trained (or training-free) estimate of ``diag Cov[x_0 | x_t]`` from ``score`` (module docstring).

    ``estimator``: its name; ``network``: the trained head (None if training-free); ``chain``: the
    training chain; ``probes``: probes per point (``ocm``'s eq. (11), ``probe:M``, ``rademacher:M``);
    ``clip``: None, ``"adpm"`` or ``"ocm"``; ``data_low``/``data_high``: the training data's range per
    coordinate (the clips' bounds); ``samples_x0``: the data of ``analytic``'s Monte Carlo;
    ``train_seconds``, ``steps``, ``losses``: what training cost and its loss per step."""

    estimator: str
    score: ScoreFn
    chain: Grid
    data_low: torch.Tensor
    data_high: torch.Tensor
    network: LevelNet | None = None
    probes: int = 1
    clip: str | None = None
    samples_x0: torch.Tensor | None = None
    seed: int = 0
    train_seconds: float = 0.0
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    _generator: torch.Generator | None = field(default=None, repr=False)
    _traces: dict = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        """The data's dimension."""
        return int(self.data_low.shape[-1])

    def posterior_mean(self, x: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        """``E[x_0 | x_t = x]`` from the fixed score by Tweedie: ``(x + (1 - abar) score) / sqrt(abar)``
        (:func:`pathkl.denoiser.x0_from`), so a head is a posterior for :func:`pathkl.sample` and
        :func:`pathkl.reverse_model`."""
        with torch.no_grad():
            return x0_from("score", x, self.score(x, level), level)

    @property
    def spec(self) -> Estimator:
        return parse_estimator(self.estimator)[0]

    def _point(self, x: torch.Tensor, level: NoiseLevel) -> Point:
        with torch.no_grad():
            score = self.score(x, level).detach()
        return Point(x, level, score, ChainStep.at(self.chain, level) if self.spec.uses_chain else None)

    def raw_cov_diagonal(self, x: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        """``diag C`` before clipping, (n, d)."""
        spec = self.spec
        if spec.name == "analytic":
            return per_level(lambda y, lv: self.posterior_trace_estimate(lv).value * torch.ones_like(y))(x, level)
        point = self._point(x, level)
        if spec.name == "rademacher":
            if self._generator is None:
                self._generator = torch.Generator().manual_seed(self.seed)
            probes = rademacher_probes(x.shape[0], x.shape[1], self.probes, generator=self._generator)
            u = probe_products(score_products(self.score, x, level), probes).mean(0)
        else:
            with torch.no_grad():
                u = self.network(_head_inputs(x, point.eps_hat), level)
        return spec.covariance(u, point)

    def posterior_cov_diagonal(self, x: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        """The estimate of ``diag Cov[x_0 | x_t = x]`` (n, d) at a 0-d or per-row level, clipped as
        ``clip`` says (module docstring): the name and meaning of the references' method."""
        c = self.raw_cov_diagonal(torch.as_tensor(x, dtype=DTYPE), level)
        if self.clip is None:
            return c
        half_range2 = ((self.data_high - self.data_low) / 2) ** 2
        return torch.minimum(c.clamp(min=0.0), torch.minimum(_var_ratio(level).expand_as(c), half_range2))

    def posterior_trace_estimate(self, level: NoiseLevel) -> Estimate:
        """``analytic``: ``E_{q_t} tr C / d = (s/a)(1 - E ||eps_hat||^2 / d)`` at a 0-d level, ``eps_hat =
        -sqrt(s) score``, by Analytic-DPM's Monte Carlo over ``samples_x0`` with noise seeded by ``(seed,
        level)`` (:func:`pathkl.denoiser.analytic_trace_estimate`, as a network's), with its standard error."""
        if self.samples_x0 is None:
            raise InputError(f"posterior_trace_estimate is the analytic estimator's, not {self.estimator!r}'s")
        key = (float(level.abar), float(level.one_minus_abar))
        if key not in self._traces:
            self._traces[key] = analytic_trace_estimate(
                lambda x, lv: eps_from("score", x, self.score(x, lv), lv), self.samples_x0, level, seed=self.seed)
        return self._traces[key]


def _training_batch(spec: Estimator, head: CovarianceHead, x0_all: torch.Tensor, t: torch.Tensor,
                    generator: torch.Generator) -> Batch:
    level = training_levels(head.chain, t)
    x0 = x0_all[torch.randint(0, x0_all.shape[0], (t.numel(),), generator=generator)]
    eps = torch.randn(x0.shape, dtype=DTYPE, generator=generator)
    x = noised(x0, eps, level)
    with torch.no_grad():
        score = head.score(x, level).detach()
    products = probes = None
    if spec.uses_products:
        products = score_products(head.score, x, level)
        probes = rademacher_probes(x.shape[0], x.shape[1], head.probes, generator=generator)
    chain = ChainStep.at(head.chain, level) if spec.uses_chain else None
    return Batch(x0, eps, x, level, score, products, probes, chain)


def train_head(estimator: str, score: ScoreFn, samples_x0, chain: Grid, *, steps: int, lr: float = 1e-3,
               probes: int = 1, clip: str | None = None, seed: int = 0, batch: int = 256,
               levels_per_step: int | None = None, width: int = 64, depth: int = 3, decay: bool = False,
               callback: Callable[[int, CovarianceHead], None] | None = None, every: int = 1000) -> CovarianceHead:
    """A :class:`CovarianceHead` for ``estimator`` (:data:`ESTIMATORS`) on the fixed ``score``, trained on
    ``samples_x0`` (N, d) over the levels of the training chain ``chain`` (a Grid; each Adam step draws
    ``levels_per_step`` steps t uniform on 1..T, 2..T for ``i_ddpm`` whose first ``beta~`` is 0, and
    ``batch / levels_per_step`` rows at each; None: one per row. A score that groups per-row levels,
    e.g. the true score of a Gaussian, costs one call per distinct level: pass a few, e.g. 8), ``steps`` Adam steps at learning rate ``lr``, seeded.
    ``probes``: probes per point of ``ocm`` (eq. (11); the paper's M = 1); ``probe:M`` and
    ``rademacher:M`` take M from the name. ``decay``: cosine decay of the learning rate to 0 over the
    steps. ``callback(step, head)`` is called every ``every`` steps (e.g. to record the error against
    the steps). Training-free estimators ignore ``steps``."""
    spec, size = parse_estimator(estimator)
    if clip is not None and clip not in CLIPS:
        raise InputError(f"unknown covariance clip {clip!r}; choose None or one of {', '.join(CLIPS)}")
    if probes < 1 or (probes != 1 and spec.name != "ocm"):
        raise InputError(f"probes = {probes}: only 'ocm' takes a probe count (>= 1); write probe:M or rademacher:M")
    levels_per_step = batch if levels_per_step is None else levels_per_step
    if levels_per_step < 1 or batch % levels_per_step:
        raise InputError(f"batch ({batch}) must be a positive multiple of levels_per_step ({levels_per_step})")
    x0_all = checked_samples(samples_x0)
    checked_training(chain, steps, lr, batch)
    head = CovarianceHead(estimator, score, chain, x0_all.min(0).values, x0_all.max(0).values,
                          probes=size if spec.sized else probes, clip=clip, seed=seed,
                          samples_x0=x0_all if spec.name == "analytic" else None)
    if not spec.trained:
        return head
    d = x0_all.shape[1]
    head.network = LevelNet(2 * d, d, width=width, depth=depth, seed=seed)
    optimiser = torch.optim.Adam(head.network.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1)) if decay else None
    generator = torch.Generator().manual_seed(seed)
    first = 2 if spec.uses_chain and chain.T > 1 else 1
    start = time.perf_counter()
    for step in range(1, steps + 1):
        t = torch.randint(first, chain.T + 1, (levels_per_step,), generator=generator)
        rows = _training_batch(spec, head, x0_all, t.repeat_interleave(batch // levels_per_step), generator)
        loss = spec.loss(head.network(_head_inputs(rows.x, rows.eps_hat), rows.level), rows)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if schedule is not None:
            schedule.step()
        head.losses.append(float(loss.detach()))
        if callback is not None and step % every == 0:
            paused = time.perf_counter()
            head.train_seconds, head.steps = paused - start, step
            callback(step, head)
            start += time.perf_counter() - paused  # the callback's time is not training time
    head.train_seconds, head.steps = time.perf_counter() - start, steps
    head.network.requires_grad_(False)
    return head


def learned_model(head: CovarianceHead, *, eta: float = 1.0) -> DiagonalGaussianModel:
    """The Gaussian reverse model of a head and its score (for :func:`pathkl.model_path_kl`):
    :func:`pathkl.reverse_model` of the head as a posterior (its Tweedie mean and its ``diag C``, the
    ``diag`` family's variance ``s2 + lam^2 diag C(x)`` of a DDIM(eta) step, docs/theory.md section 2.3),
    with the OCM Appendix B.2 clip of step 2's variance where ``head.clip == "ocm"``."""
    model = reverse_model(head, "diag", eta=eta)
    if head.clip != "ocm":
        return model
    cap = ((head.data_high - head.data_low) / (_IMAGE_LEVELS * _MEAN_ABS_NORMAL)) ** 2

    def variance(x: torch.Tensor, t: int, grid: Grid) -> torch.Tensor:
        var = model.variance(x, t, grid)
        return torch.minimum(var, cap) if t == 2 else var

    return DiagonalGaussianModel(model.mean, variance)
