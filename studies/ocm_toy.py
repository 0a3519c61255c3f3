"""The OCM toy (Ou et al. 2025, "Improved diffusion models with optimal covariance matching", ICLR 2025,
arXiv 2406.10808, section 5.1 and Figure 3): every covariance estimator of pathkl.heads, with the true
and with a learned score, on the 3x3 grid of the paper and on the rotated mixture, and the exact path
KL of every learned model (docs/learned.md) next to the oracle families.

The chain is ddpm-linear with ``chain`` = N steps (N = 1000: Ho et al.'s). The learned score is
pathkl's denoising-score-matching network (``score_steps`` Adam steps on ``data`` draws, trained once
per reference and shared by every point, :func:`prepare`); each head is trained by
:func:`pathkl.heads.train_head` for ``train_steps`` Adam steps at ``lr`` on the same draws and the same
chain. A point (reference, score, estimator, train_steps) trains one head and returns rows of four
panels (``panel``):

- ``cov`` (OCM Fig. 3a with the true score, 3b with the learned one): at each chain step ``t`` of
  ``levels``, ``cov_error`` = ``E_{x_t ~ q_t} ||c_hat(x_t) - c(x_t)||_2^2``, the mean squared L2 error
  of the head's ``diag Cov[x_0 | x_t]`` (before clipping: what the estimator learned) against the
  reference's exact one, over ``cov_samples`` draws (the same draws for every estimator), with its
  standard error ``cov_error_stderr``. ``diag Sigma_{t-1}(x_t)``, the one-step covariance the paper
  plots, is ``beta~_t + gamma_t^2 diag C``, so its error is this one times ``gamma_t^4``: the same
  ranking at every t.
- ``ddpm`` and ``ddim`` (Fig. 3c, 3d): ``samples`` draws of the model on the K-step subsequence
  ``round(linspace(0, N, K + 1))`` of the chain (the "even" skip-step trajectory), K = ``steps`` in
  ``T``, by ancestral sampling of :func:`pathkl.heads.learned_model` (DDPM: eta = 1; DDIM: eta = 0, the
  head's covariance on ``x_0`` as in the paper's Algorithm 2), against as many exact draws: unbiased
  ``MMD^2`` with the paper's bandwidths 2^-2..2^2 (:func:`pathkl.metrics.mmd`, ``mmd``) and its
  standard error over 10 blocks (``mmd_stderr``).
- ``kl``: the exact path KL of the DDPM model on the same K-step grid (:func:`pathkl.model_path_kl`,
  ``path_kl`` with the error it vouches for, ``path_kl_error``, and its mean and covariance parts);
  ``+inf`` where a head's variance is 0 somewhere (clipped at 0: only step 1 can be, where
  ``beta~_1 = 0`` leaves ``Sigma_1 = lam^2 C``), NaN for ``rademacher:M`` (fresh probes at every
  call: the kernel is not one Gaussian, so it has no exact KL). ``kl_from2``: the same summed from
  step 2 (pathkl's ``first_step = 2``): finite for every clipped head, and for ``beta_tilde``.

Heads are clipped as ``clip`` says (pathkl.heads: ``adpm``, Analytic-DPM's bounds, by default) for
sampling and the KL. Points with ``score = "oracle"`` are the families of pathkl.families with the
exact mean (``estimator`` = the family): their ``ddpm``/``ddim``/``kl``/``kl_from2`` rows from
:func:`pathkl.sampling.sample` and :func:`pathkl.path_kl` (``beta`` has no DDIM rows; ``beta_tilde``'s
``kl`` is +inf, its step 1 being degenerate). Points whose ``train_steps`` is
not the configured one form the training ladder (``ladder``; ``cov`` rows only): the error against
the Adam steps spent, and ``train_seconds`` what they cost on this machine. Every draw is seeded
from ``seed``: the sampler's noise and the exact draws are the same for every estimator (common
random numbers), the exact draws independent of the sampler's (seed + 10^6), as in few_step_sampling.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from pathkl import plotting
from pathkl.errors import InputError
from pathkl.families import get_family
from pathkl.heads import CLIPS, learned_model, parse_estimator, train_head, true_score
from pathkl.metrics import mmd
from pathkl.model_kl import model_path_kl
from pathkl.pathspace import path_kl
from pathkl.references import GaussianReference, MixtureReference
from pathkl.refspec import load_reference
from pathkl.rules import MonteCarlo
from pathkl.sampling import sample
from pathkl.schedules import DTYPE, get_schedule, grid_from_chain
from pathkl.score_net import train_score_network

from .results import ResultsTable
from .runner import Study, figure_suffix

SCORES = ("true", "learned")
ORACLE = "oracle"
SAMPLERS = {"ddpm": 1.0, "ddim": 0.0}
KL_RULES = ("monte carlo", "quadrature")
#: Offsets of the seeds of the exact draws (MMD) and of the draws of x_t at chain step t (``cov``).
_EXACT_SEED, _LEVEL_SEED = 10**6, 10**5


@dataclass(frozen=True)
class OCMToyConfig:
    """References (Gaussian or mixture: the model's path KL needs one; ``mog-ocm-grid-2d`` is the
    paper's grid as a 9-component mixture), estimators, families and every budget of the module
    docstring. ``kl_rule``: how model and oracle KLs are integrated over x_t (Monte Carlo with
    ``kl_outer`` draws per component, or quadrature to ``kl_rtol``; the grid's 9 narrow components
    make 2-D quadrature minutes per grid)."""

    references: tuple[str, ...] = ("mog-ocm-grid-2d", "mog-rotated")
    estimators: tuple[str, ...] = ("ocm", "probe:4", "sn_ddpm", "npr_ddpm", "i_ddpm", "analytic", "rademacher:4")
    scores: tuple[str, ...] = SCORES
    families: tuple[str, ...] = ("beta", "beta_tilde", "analytic", "diag", "full")
    chain: int = 1000
    data: int = 20000
    score_steps: int = 8000
    train_steps: int = 2000
    lr: float = 1e-3
    clip: str = "adpm"
    levels: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
    cov_samples: int = 2000
    T: tuple[int, ...] = (5, 10, 20, 50, 100)
    samples: int = 2000
    kl_rule: str = "monte carlo"
    kl_outer: int = 256
    kl_rtol: float = 1e-3
    ladder: tuple[int, ...] = (500, 2000, 8000, 50000)
    ladder_references: tuple[str, ...] = ("mog-ocm-grid-2d",)
    ladder_estimators: tuple[str, ...] = ("ocm",)
    ladder_scores: tuple[str, ...] = ("true",)
    seed: int = 0

    def __post_init__(self):
        for name in {*self.references, *self.ladder_references}:
            _checked_reference(name)
        for name in {*self.estimators, *self.ladder_estimators}:
            parse_estimator(name)
        for name in self.families:
            get_family(name)
        if not set(self.scores) | set(self.ladder_scores) <= set(SCORES):
            raise InputError(f"scores must be among {', '.join(SCORES)}")
        if self.clip != "none" and self.clip not in CLIPS:
            raise InputError(f"clip must be none or one of {', '.join(CLIPS)}, got {self.clip!r}")
        if self.kl_rule not in KL_RULES:
            raise InputError(f"kl_rule must be one of {', '.join(KL_RULES)}, got {self.kl_rule!r}")
        get_schedule("ddpm-linear").chain_betas(self.chain)
        if not all(1 <= k <= self.chain for k in (*self.T, *self.levels)):
            raise InputError(f"T and levels must lie in 1..chain = {self.chain}")
        if min(self.samples, self.cov_samples) < 20 or self.data < 2:
            raise InputError("need samples, cov_samples >= 20 (10 MMD blocks of 2) and data >= 2")
        if min((self.train_steps, self.score_steps, *self.ladder), default=1) < 1 or not self.lr > 0:
            raise InputError("training needs train_steps, score_steps and ladder steps >= 1 and lr > 0")
        if self.kl_outer < 4 or not self.kl_rtol > 0:
            raise InputError("need kl_outer >= 4 and kl_rtol > 0")


def _checked_reference(name: str):
    reference = _reference(name)
    if not isinstance(reference, (GaussianReference, MixtureReference)):
        raise InputError(f"ocm_toy needs a Gaussian or mixture reference (the model's path KL), got {name!r}; "
                         "for the paper's grid use mog-ocm-grid-2d")
    return reference


# One object per name and process: the engine caches its per-grid negentropies on it.
_reference = functools.lru_cache(maxsize=8)(load_reference)


def _trained(name: str) -> bool:
    return parse_estimator(name)[0].trained


def points(config: OCMToyConfig):
    out = [{"reference": r, "score": s, "estimator": e, "train_steps": config.train_steps if _trained(e) else 0}
           for r in config.references for s in config.scores for e in config.estimators]
    out += [{"reference": r, "score": ORACLE, "estimator": f, "train_steps": 0}
            for r in config.references for f in config.families]
    ladder = [{"reference": r, "score": s, "estimator": e, "train_steps": n}
              for n in sorted(config.ladder, reverse=True) for r in config.ladder_references
              for s in config.ladder_scores for e in config.ladder_estimators if _trained(e)]
    return [p for p in ladder if p not in out] + out  # the longest first: it overlaps the rest


# ---- shared inputs: data, chain, learned scores -----------------------------------------------------

def _chain(config: OCMToyConfig):
    return get_schedule("ddpm-linear").grid(config.chain)


def _skip_grid(config: OCMToyConfig, steps: int):
    """The K-step "even" subsequence ``round(linspace(0, N, K + 1))`` of the N-step chain."""
    return grid_from_chain(get_schedule("ddpm-linear"), config.chain,
                           np.round(np.linspace(0, config.chain, steps + 1)).astype(int))


def _data(config: OCMToyConfig, name: str) -> torch.Tensor:
    return _reference(name).sample(config.data, generator=torch.Generator().manual_seed(config.seed))


_SCORES: dict[tuple, object] = {}


def _score_key(config: OCMToyConfig, name: str) -> tuple:
    return (name, config.chain, config.data, config.score_steps, config.lr, config.seed)


def _learned_score(config: OCMToyConfig, name: str):
    """The denoising-score-matching network of ``name``, trained once per process (or installed)."""
    key = _score_key(config, name)
    if key not in _SCORES:
        _SCORES[key] = train_score_network(_data(config, name), _chain(config), steps=config.score_steps,
                                           lr=config.lr, seed=config.seed)
    return _SCORES[key]


def prepare(config: OCMToyConfig) -> dict[tuple, object]:
    """Every learned score of the sweep, trained once by the driving process."""
    names = {p["reference"] for p in points(config) if p["score"] == "learned"}
    return {_score_key(config, n): _learned_score(config, n) for n in sorted(names)}


def install(scores: dict[tuple, object]) -> None:
    """Put the scores of :func:`prepare` into this process's memo."""
    _SCORES.update(scores)


def _score(config: OCMToyConfig, name: str, kind: str):
    return true_score(_reference(name)) if kind == "true" else _learned_score(config, name)


# ---- the panels ---------------------------------------------------------------------------------------

def _row(panel: str, *, t: int = 0, steps: int = 0, **values) -> dict:
    out = {"panel": panel, "t": t, "steps": steps, "cov_error": math.nan, "cov_error_stderr": math.nan,
           "mmd": math.nan, "mmd_stderr": math.nan, "path_kl": math.nan, "path_kl_error": math.nan,
           "path_kl_mean": math.nan, "path_kl_covariance": math.nan}
    out.update(values)
    return out


def _cov_rows(config: OCMToyConfig, reference, head) -> list[dict]:
    chain, rows = _chain(config), []
    for t in config.levels:
        lv = chain.level(t)
        x = reference.sample(config.cov_samples, lv,
                             generator=torch.Generator().manual_seed(config.seed + _LEVEL_SEED + t))
        err = ((head.raw_cov_diagonal(x, lv) - reference.posterior_cov_diagonal(x, lv)) ** 2).sum(-1)
        rows.append(_row("cov", t=t, cov_error=float(err.mean()),
                         cov_error_stderr=float(err.std() / math.sqrt(err.numel()))))
    return rows


def ancestral_samples(model, grid, *, n: int, dim: int, seed: int) -> torch.Tensor:
    """``x_0`` of ``n`` chains of the Gaussian reverse model ``model`` on ``grid`` from ``x_T ~ N(0, I)``:
    ``x_{t-1} = mean(x_t) + variance(x_t)^{1/2} z``, the noise drawn in the order of
    :func:`pathkl.sampling.sample` (x_T, then one z per step), so that a model with the exact mean and
    a family's covariance draws that family's samples from the same seed. A negative variance (an
    unclipped head) is taken as 0, as SN-DPM's sampler clamps it."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, dtype=DTYPE, generator=generator)
    with torch.no_grad():
        for t in range(grid.T, 0, -1):
            z = torch.randn(n, dim, dtype=DTYPE, generator=generator)
            var = torch.as_tensor(model.variance(x, t, grid), dtype=DTYPE)
            x = model.mean(x, t, grid) + var.clamp_min(0.0).sqrt() * z
    return x


def _exact_draws(config: OCMToyConfig, reference) -> torch.Tensor:
    return reference.sample(config.samples, generator=torch.Generator().manual_seed(config.seed + _EXACT_SEED))


def _mmd_row(panel: str, steps: int, x: torch.Tensor, exact: torch.Tensor) -> dict:
    estimate = mmd(x, exact)
    return _row(panel, steps=steps, mmd=estimate.value, mmd_stderr=estimate.stderr)


class _ZeroVariance(Exception):
    """A head's variance is 0 (or below) at some point: the model's path KL is +inf there."""


def _positive(model):
    """``model`` whose variance raises :class:`_ZeroVariance` where it is not > 0."""
    def variance(x, t, grid):
        var = torch.as_tensor(model.variance(x, t, grid), dtype=DTYPE)
        if not (var > 0).all():
            raise _ZeroVariance
        return var
    return replace(model, variance=variance)


#: The KL panels and the first step each sums from.
KL_PANELS = {"kl": 1, "kl_from2": 2}


def _model_kl_rows(config: OCMToyConfig, reference, model, grid) -> list[dict]:
    rows = []
    for panel, first in KL_PANELS.items():
        try:
            kl = model_path_kl(reference, grid, _positive(model), rtol=config.kl_rtol, rule=_rule(config),
                               first_step=min(first, grid.T))
        except _ZeroVariance:
            rows.append(_row(panel, steps=grid.T, path_kl=math.inf))
            continue
        rows.append(_row(panel, steps=grid.T, path_kl=kl.total.value, path_kl_error=kl.total.error,
                         path_kl_mean=kl.mean.value, path_kl_covariance=kl.covariance.value))
    return rows


def _rule(config: OCMToyConfig):
    return MonteCarlo(outer=config.kl_outer, seed=config.seed) if config.kl_rule == "monte carlo" else "quadrature"


def _estimator_rows(config: OCMToyConfig, reference, score, head) -> list[dict]:
    """The ``ddpm``, ``ddim`` and ``kl`` rows of a trained head."""
    if config.clip != "none":
        head = replace(head, clip=config.clip)
    exact, rows = _exact_draws(config, reference), []
    gaussian = parse_estimator(head.estimator)[0].name != "rademacher"
    for steps in config.T:
        grid = _skip_grid(config, steps)
        for panel, eta in SAMPLERS.items():
            x = ancestral_samples(learned_model(head, eta=eta), grid, n=config.samples,
                                  dim=reference.dim, seed=config.seed)
            rows.append(_mmd_row(panel, steps, x, exact))
        rows += (_model_kl_rows(config, reference, learned_model(head), grid) if gaussian
                 else [_row(panel, steps=steps) for panel in KL_PANELS])
    return rows


def _oracle_rows(config: OCMToyConfig, reference, name: str) -> list[dict]:
    family, exact, rows = get_family(name), _exact_draws(config, reference), []
    for steps in config.T:
        grid = _skip_grid(config, steps)
        for panel, eta in SAMPLERS.items():
            if eta == 1.0 or not family.ddpm_only:
                run = sample(reference, grid, name, n=config.samples, eta=eta, seed=config.seed)
                rows.append(_mmd_row(panel, steps, run.samples, exact))
        for panel, first in KL_PANELS.items():
            first = min(first, grid.T)
            kl = path_kl(reference, grid, family, rtol=config.kl_rtol, rule=_rule(config), first_step=first)
            full = path_kl(reference, grid, get_family("full"), rtol=config.kl_rtol, rule=_rule(config),
                           first_step=first)
            rows.append(_row(panel, steps=steps, path_kl=kl.total, path_kl_error=kl.total_error,
                             path_kl_mean=0.0, path_kl_covariance=kl.steps - full.steps))
    return rows


def run_point(config: OCMToyConfig, point) -> list[dict]:
    reference = _reference(point["reference"])
    if point["score"] == ORACLE:
        return [dict(r, train_seconds=0.0) for r in _oracle_rows(config, reference, point["estimator"])]
    score = _score(config, point["reference"], point["score"])
    head = train_head(point["estimator"], score, _data(config, point["reference"]), _chain(config),
                      steps=point["train_steps"], lr=config.lr, seed=config.seed)
    rows = _cov_rows(config, reference, head)
    if point["train_steps"] in (config.train_steps, 0):
        rows += _estimator_rows(config, reference, score, head)
    return [dict(r, train_seconds=head.train_seconds) for r in rows]


# ---- figures --------------------------------------------------------------------------------------

#: Each estimator's (colour, marker, label): Paul Tol's "muted" colours, apart from the Okabe-Ito
#: colours of the families (pathkl.families), so an estimator is never mistaken for a family.
ESTIMATOR_STYLES = {
    "ocm": ("#882255", "o", "OCM"),
    "probe": ("#AA4499", "v", "probe regression"),
    "sn_ddpm": ("#332288", "s", "SN-DDPM"),
    "npr_ddpm": ("#88CCEE", "D", "NPR-DDPM"),
    "i_ddpm": ("#999933", "^", "I-DDPM"),
    "analytic": ("#DDCC77", "P", "A-DDPM (MC)"),
    "rademacher": ("#44AA99", "X", "Rademacher"),
}


def estimator_style(name: str) -> tuple[str, str, str]:
    """``(colour, marker, label)`` of an estimator; ``probe:M`` and ``rademacher:M`` say their M."""
    spec, size = parse_estimator(name)
    colour, marker, label = ESTIMATOR_STYLES[spec.name]
    return colour, marker, f"{label} $M={size}$" if spec.sized else label


def _series(ax, rows: list[dict], x: str, y: str, err: str, *, gid: str, dashed: bool = False, **style) -> None:
    rows = sorted((r for r in rows if math.isfinite(r[y])), key=lambda r: r[x])
    if not rows:
        return
    xs, ys = [r[x] for r in rows], [r[y] for r in rows]
    errs = [r[err] if math.isfinite(r[err]) else 0.0 for r in rows]
    bars = ax.errorbar(xs, ys, yerr=errs, capsize=1.2, ls="--" if dashed else "-",
                       mfc="none" if dashed else style.get("color"), lw=0.7 if dashed else 1.0, ms=2.8, **style)
    bars.lines[0].set_gid(gid)  # the data line only (the caps are lines too)


def _draw(ax, table: ResultsTable, reference: str, panel: str, score: str, y: str, err: str, *,
          oracles: bool) -> None:
    x = "t" if panel == "cov" else "steps"
    main = table.meta["config"]["train_steps"]
    for name in table.distinct("estimator"):
        rows = [r for r in table.rows if (r["reference"], r["score"], r["estimator"], r["panel"])
                == (reference, score, name, panel) and r["train_steps"] in (main, 0)]
        if rows:
            colour, marker, label = estimator_style(name)
            _series(ax, rows, x, y, err, gid=f"data:{score}:{name}", color=colour, marker=marker, label=label)
    if not oracles:
        return
    for name in table.distinct("estimator"):
        rows = [r for r in table.rows if (r["reference"], r["score"], r["estimator"], r["panel"])
                == (reference, ORACLE, name, panel)]
        if rows:
            colour, marker = plotting.family_style(name)
            _series(ax, rows, x, y, err, gid=f"data:{ORACLE}:{name}", dashed=True, color=colour, marker=marker,
                    label=f"oracle {plotting.family_label(name)}")


def _mmd_axes(ax, table: ResultsTable, reference: str) -> None:
    stderr = [r["mmd_stderr"] for r in table.rows if r["reference"] == reference and math.isfinite(r["mmd_stderr"])]
    noise = 2.0 * float(np.median(stderr)) if stderr else 1e-4
    ax.axhspan(-noise, noise, color="0.9", lw=0, zorder=0)
    ax.set_yscale("symlog", linthresh=noise, linscale=0.5)
    ax.set(xscale="log", xlabel="sampling steps $K$", ylabel="MMD$^2$")


def figures(table: ResultsTable) -> dict:
    """Per reference, six panels: (a, b) the covariance error against the chain step t with the true
    and the learned score (log-log); (c, d) MMD^2 against the steps K of DDPM and DDIM with the learned
    score, the oracle families dashed (symmetric-log y, linear within the shaded +-2 median standard
    errors); (e, f) the exact path KL from step 2 (``kl_from2``: finite for every clipped head) against
    K with the learned and with the true score, the oracle families dashed. Plus
    ``training``: the ladder's covariance error (mean over the levels) against the Adam steps."""
    out = {}
    for reference in table.distinct("reference"):
        fig, axes = plotting.new_figure(columns=2, aspect=0.72, ncols=2, nrows=3)
        for ax, score, tag in ((axes[0], "true", "(a) true score"), (axes[1], "learned", "(b) learned score")):
            _draw(ax, table, reference, "cov", score, "cov_error", "cov_error_stderr", oracles=False)
            ax.set(xscale="log", yscale="log", xlabel="chain step $t$",
                   ylabel=r"$E\,\|\hat c - c\|_2^2$, $c = \mathrm{diag\,Cov}[x_0|x_t]$", title=tag)
        for ax, panel, tag in ((axes[2], "ddpm", "(c) DDPM, learned score"), (axes[3], "ddim", "(d) DDIM, learned score")):
            _draw(ax, table, reference, panel, "learned", "mmd", "mmd_stderr", oracles=True)
            _mmd_axes(ax, table, reference)
            ax.set_title(tag)
        for ax, score, tag in ((axes[4], "learned", "(e) learned score"), (axes[5], "true", "(f) true score")):
            _draw(ax, table, reference, "kl_from2", score, "path_kl", "path_kl_error", oracles=True)
            ax.set(xscale="log", yscale="log", xlabel="sampling steps $K$", ylabel="path KL, steps 2..K", title=tag)
        for ax in axes[2:]:
            steps = sorted({r["steps"] for r in table.rows if r["reference"] == reference and r["steps"] > 0})
            if steps:
                plotting.integer_log_ticks(ax, steps)
        handles = {}
        for ax in axes:
            for h, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, h)
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=4, fontsize="small")
        fig.suptitle(reference)
        out[figure_suffix(reference)] = fig
    ladder = _ladder_figure(table)
    if ladder is not None:
        out["training"] = ladder
    return out


def _ladder_figure(table: ResultsTable):
    """The covariance error, averaged over the levels, against the Adam steps (log-log)."""
    groups = {}
    for r in table.rows:
        if r["panel"] == "cov" and r["train_steps"] > 0:
            groups.setdefault((r["reference"], r["score"], r["estimator"]), {}).setdefault(r["train_steps"], []).append(r)
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return None
    fig, (ax,) = plotting.new_figure(columns=1, aspect=0.8)
    styles = ("-", "--", ":", "-.")
    for k, ((reference, score, name), by_steps) in enumerate(groups.items()):
        colour, marker, label = estimator_style(name)
        steps = sorted(by_steps)
        mean = [sum(r["cov_error"] for r in by_steps[n]) / len(by_steps[n]) for n in steps]
        err = [math.sqrt(sum(r["cov_error_stderr"] ** 2 for r in by_steps[n])) / len(by_steps[n]) for n in steps]
        bars = ax.errorbar(steps, mean, yerr=err, color=colour, marker=marker, ls=styles[k % len(styles)],
                           capsize=1.2, label=f"{label}, {score} score, {reference}")
        bars.lines[0].set_gid(f"ladder:{reference}:{score}:{name}")
    ax.set(xscale="log", yscale="log", xlabel="Adam steps", ylabel="covariance error, mean over levels",
           title="training ladder")
    ax.legend(fontsize="x-small")
    return fig


STUDY = Study(
    name="ocm_toy",
    description="OCM toy: covariance estimators' error, MMD vs steps (DDPM/DDIM) and exact path KL",
    config_type=OCMToyConfig,
    points=points,
    run_point=run_point,
    key_columns=("reference", "score", "estimator", "train_steps"),
    row_columns=("panel", "t", "steps"),
    value_columns=("cov_error", "cov_error_stderr", "mmd", "mmd_stderr", "path_kl", "path_kl_error",
                   "path_kl_mean", "path_kl_covariance", "train_seconds"),
    small={"references": ("mog-rotated",), "estimators": ("ocm", "sn_ddpm", "rademacher:2"),
           "families": ("beta", "diag"), "data": 200, "score_steps": 10, "train_steps": 10,
           "levels": (10, 500), "cov_samples": 100, "T": (2, 4), "samples": 100, "kl_outer": 8,
           "ladder": (5, 10), "ladder_references": ("mog-rotated",)},
    figures=figures,
    prepare=prepare,
    install=install,
)
