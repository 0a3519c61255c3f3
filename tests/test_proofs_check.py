"""The theorem registry: every claim passes, and breaking a formula makes its check fail."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import proofs_check
from pathkl import families
from pathkl.cli import main
from pathkl.schedules import get_schedule
from pathkl.testing import gaussian_references, noise_levels
from proofs_check import (
    all_claims,
    analytic_dpm,
    diffusion_fisher,
    get_claim,
    lgs,
    ocm,
    optimal_grids,
    reeves_pfister,
    run_claim,
    tweedie,
)
from proofs_check.spot import conditional

#: Deterministic CI settings, applied per test (loading the profile would change every test).
CI = settings.get_profile("ci")
CLAIMS = all_claims()
_POSTERIOR_PARAMS = analytic_dpm.claimed_posterior_params
_FISHER = diffusion_fisher.claimed_fisher
PREFIXES = {"tweedie", "ocm", "adpm", "lgs", "rp", "df", "grids"}


def test_registry_is_complete_and_traceable():
    ids = [c.id for c in CLAIMS]
    assert len(ids) >= 15 and len(set(ids)) == len(ids)
    for c in CLAIMS:
        assert c.id.split(".")[0] in PREFIXES, c.id
        assert c.method in ("symbolic", "numeric", "both")
        assert c.source.strip() and c.statement.strip()
    assert {c.id.split(".")[0] for c in CLAIMS} == PREFIXES


def test_every_claim_has_a_mutation():
    assert {c.id for c in CLAIMS} <= {m[3] for m in MUTATIONS}


def test_readme_lists_every_claim():
    readme = (Path(proofs_check.__file__).parent / "README.md").read_text()
    assert all(f"`{c.id}`" in readme for c in CLAIMS)


@pytest.mark.parametrize("claim_id", [c.id for c in CLAIMS])
def test_claim_passes(claim_id):
    result = run_claim(get_claim(claim_id))
    assert result.outcome.passed, result.outcome.detail


def _ocm_eq24_as_printed(g, score, alpha, beta, one_minus_abar, beta_tilde):
    """OCM eq. (24) as printed: the square is over (g/(1-abar) - score), not over score alone."""
    return beta_tilde + beta**2 / alpha * (g / one_minus_abar - score) ** 2


def _slides_skip_noise_form(alpha, beta, one_minus_abar, mean_sq_eps):
    """The skip-step slide's noise form as printed: beta_{t|s}/beta_{t|s} (= 1) in the bracket."""
    return beta / alpha * (1 - mean_sq_eps)


# (module, attribute, broken replacement, claim that must then fail): each a plausible slip.
MUTATIONS = [
    (tweedie, "claimed_posterior_mean", lambda x, s, a, b: x + b * s, "tweedie.lemma1-mean"),
    (tweedie, "claimed_second_moment",
     lambda x, s1, s2, a, b, eye: (x * x.T + b * s1 * x.T + b * x * s1.T + b**2 * s2 + b**2 * s1 * s1.T) / a,
     "tweedie.lemma2-second-moment"),
    (tweedie, "claimed_posterior_cov", lambda h, a, b, eye: b / a * (eye + 2 * b * h),
     "tweedie.lemma3-covariance"),
    (tweedie, "claimed_noise_form", lambda e2, s, a, b: b / a * (e2 / b - s * s.T),
     "tweedie.eq33-noise-form"),
    (tweedie, "claimed_jvp_cov", lambda jac, a, b: b / a * jac, "tweedie.jvp-covariance"),
    (ocm, "claimed_scaled_cov", lambda h, a, var, eye: (var * h + var * eye) / a**2,
     "ocm.thm1-covariance"),
    (ocm, "claimed_probe", lambda v, hv: hv, "ocm.thm2-unbiased"),
    (ocm, "claimed_ocm_constant", lambda h: sum(x**2 for x in h), "ocm.thm2-loss-decomposition"),
    (ocm, "claimed_sn_cov", _ocm_eq24_as_printed, "ocm.thm3-sn-equivalence"),
    (ocm, "claimed_ocm_cov", lambda h, a, b: (b**2 * h + b) / a**2, "ocm.thm3-sn-equivalence"),
    (ocm, "claimed_gamma", lambda ap, a, l2: sp.sqrt(ap) + sp.sqrt(1 - ap - l2) * sp.sqrt(a / (1 - a)),
     "ocm.eq34-gamma"),
    (ocm, "claimed_skip_cov", lambda h, a: ((1 - a) ** 2 * h + (1 - a)) / a**2, "ocm.skip-step"),
    (ocm, "claimed_ddim_mean",
     lambda x0, xt, ap, a, var: sp.sqrt(ap) * x0 + (xt - sp.sqrt(a) * x0) * sp.sqrt(1 - ap - var),
     "ocm.ddim-forms"),
    (analytic_dpm, "claimed_posterior_params",
     lambda x0, xt, al, ap: (_POSTERIOR_PARAMS(x0, xt, al, ap)[0],
                             (1 - ap) * (1 - al)), "adpm.ddpm-posterior"),
    (analytic_dpm, "claimed_moment_match", lambda m, c, d: (m, c), "adpm.moment-matching"),
    (analytic_dpm, "claimed_optimal_variance", lambda al, b, s2: b / al * (1 - b * s2 / 2),
     "adpm.variance-bounds"),
    (ocm, "claimed_ocm_minimiser", lambda h: [sum(h[i, :]) for i in range(h.shape[0])],
     "ocm.thm2-minimiser"),
    # The reading the paper implies for eq. (10) (its average's variance not shrinking with M), and a
    # minimiser biased towards 0 for small M.
    (ocm, "claimed_probe_regression_excess", lambda h, m: ocm.claimed_ocm_constant(h),
     "ocm.eq10-probe-regression"),
    (ocm, "claimed_probe_regression_minimiser", lambda h, m: [h[i, i] * m / (m + 1) for i in range(h.shape[0])],
     "ocm.eq10-probe-regression"),
    (lgs, "claimed_defect", lambda name, h, c=None: h + (c or 0) * sp.eye(h.shape[0]),
     "lgs.kl-analytic-family"),
    (analytic_dpm, "claimed_gamma_sq", lambda al, ap: (1 - al) ** 2 / (1 - al * ap) ** 2,
     "adpm.law-of-total-variance"),
    (analytic_dpm, "claimed_optimal_variance", lambda al, b, s2: b * (1 - b * s2),
     "adpm.thm1-optimal-variance"),
    (analytic_dpm, "claimed_optimal_variance_noise", _slides_skip_noise_form, "adpm.skip-step"),
    (analytic_dpm, "claimed_bounded_data_bound", lambda bt, g2, lo, hi: bt + g2 * ((hi - lo) / 4) ** 2,
     "adpm.bounded-data-bound"),
    (lgs, "claimed_isotropic_coefficient", lambda: sp.Rational(1, 2), "lgs.kl-beta-family"),
    (lgs, "claimed_defect", lambda name, h, c=None: h, "lgs.kl-diag-family"),
    (lgs, "claimed_negentropy_coefficient", lambda: sp.Rational(1, 6), "lgs.kl-full-negentropy"),
    (lgs, "claimed_sqrt_on_ellipse",
     lambda a, b, th: (sp.sqrt(a) + sp.sqrt(b)) / 2 * sp.sqrt(1 + 2 * (sp.sqrt(b) - sp.sqrt(a))
                                                         / (sp.sqrt(b) + sp.sqrt(a)) * sp.cos(th)),
     "lgs.lanczos-sampler"),
    (reeves_pfister, "claimed_immse_derivative", lambda m: m, "rp.immse-gaussian"),
    (reeves_pfister, "claimed_immse_derivative", lambda m: m, "rp.immse-mixture"),
    (reeves_pfister, "claimed_gap", lambda d, m, i: (d * m).sum() - i, "rp.riemann-gap"),
    (reeves_pfister, "claimed_gap_bound", lambda d, tr: 0.1 * d * tr, "rp.gap-bound"),
    (reeves_pfister, "claimed_step_mean_penalty", lambda e2, var: e2 / var, "rp.imperfect-mean"),
    (reeves_pfister, "claimed_mean_error_term", lambda d, e2: (d * e2).sum(), "rp.imperfect-mean"),
    (reeves_pfister, "claimed_snr_step", lambda ap, a: ap - a, "rp.imperfect-mean"),
    (diffusion_fisher, "claimed_fisher",
     lambda w, y, a, var, eye: _FISHER(w, y, a, var, eye) - eye / var
     + eye / var**2, "df.outer-product"),
    (diffusion_fisher, "claimed_trace",
     lambda w, y, a, var: y.shape[1] / var - a**2 / var**2 * (w @ (y**2).sum(-1)), "df.trace-matvec"),
    (diffusion_fisher, "claimed_plugin_bound", lambda a, var, e2, em, n: a**2 / var**2 * (e2 + 2 * n * em),
     "df.plugin-bound"),
    (diffusion_fisher, "claimed_topk_bound", lambda a, var, rho, dist: a**2 / var**2 * rho * dist**2 / 4,
     "df.topk-bound"),
    (diffusion_fisher, "claimed_topk_mean_bound", lambda rho, dist: rho * dist / 2, "df.topk-bound"),
    (diffusion_fisher, "claimed_hutchinson_variance", lambda frob, diag: 2 * frob, "df.hutchinson-variance"),
    (optimal_grids, "claimed_law_variable", lambda lam, abar: sp.log(abar * lam), "grids.gaussian-law"),
    (optimal_grids, "claimed_two_eigenvalue_law_variable",
     lambda l1, l2, abar: sp.log((1 - abar + abar * l1) / (1 - abar + abar * l2)) / 2, "grids.gaussian-law"),
    (optimal_grids, "claimed_ddim_log_error", lambda lam, s, h: lam * h**2 / (lam + s**2) ** 2, "grids.tangent-law"),
    (optimal_grids, "claimed_tangent_levels",  # uniform in arctan(s), the coefficient 1 instead of sqrt(lambda)
     lambda lam, s_max, k: torch.tan(torch.arange(k, -1, -1, dtype=torch.float64) / k * math.atan(s_max)),
     "grids.tangent-law"),
]


@pytest.mark.parametrize("module,name,broken,claim_id", MUTATIONS,
                         ids=[f"{m[3]}:{m[1]}" for m in MUTATIONS])
def test_broken_formula_fails(monkeypatch, module, name, broken, claim_id):
    monkeypatch.setattr(module, name, broken)
    outcome = run_claim(get_claim(claim_id)).outcome
    assert not outcome.passed, f"{claim_id} still passes with a broken {name}: {outcome.detail}"
    assert "Error" not in outcome.detail.split(":")[0], f"failed by crashing, not by comparison: {outcome.detail}"


def test_wrong_declared_constant_in_pathkl_fails(monkeypatch):
    """The registry also checks the constants pathkl's covariance families declare."""
    full = families.FAMILIES["full"]
    wrong = dataclasses.replace(full.general_rate, coefficient=1 / 6)
    monkeypatch.setitem(families.FAMILIES, "full", dataclasses.replace(full, general_rate=wrong))
    assert not run_claim(get_claim("lgs.kl-full-negentropy")).outcome.passed
    diag = families.FAMILIES["diag"]
    wrong = dataclasses.replace(diag.general_rate, order=2)
    monkeypatch.setitem(families.FAMILIES, "diag", dataclasses.replace(diag, general_rate=wrong))
    assert not run_claim(get_claim("lgs.kl-diag-family")).outcome.passed


def test_cli_json_and_exit_codes(capsys, monkeypatch):
    assert main(["check", "ocm.thm2-unbiased", "ocm.thm2-minimiser", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == ["ocm.thm2-unbiased", "ocm.thm2-minimiser"]
    assert all({"id", "source", "status", "detail"} <= set(r) and r["status"] == "pass" for r in rows)

    monkeypatch.setattr(ocm, "claimed_probe", lambda v, hv: hv)
    assert main(["check", "ocm.thm2-unbiased", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["status"] == "fail"

    assert main(["check", "ocm.no-such-claim"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "unknown claim id" in captured.err and captured.err.count("\n") == 1


def test_cli_table_and_prefix(capsys):
    assert main(["check", "adpm"]) == 0
    out = capsys.readouterr().out
    adpm = [c.id for c in CLAIMS if c.id.startswith("adpm.")]
    assert all(i in out for i in adpm) and f"{len(adpm)} claims: {len(adpm)} pass, 0 fail" in out
    assert main(["check", "--list", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(CLAIMS)


# Property-based evidence: the paper formulas against dense Schur complements of the joint Gaussian
# over drawn references, rotations, spectra and noise levels (pathkl.testing strategies).

# Two float64 routes (eigen closed forms vs dense solve) through matrices with condition <= 1e3:
# agreement to ~1e-13 relative is expected; 1e-8 leaves room, while a formula slip is O(1).
PROP_RTOL = 1e-8


def _dense_cov_of(ref):
    return ref.basis.dense(ref.eigenvalues)


@CI
@given(gaussian_references(dims=(1, 4), condition=1e3, low=1e-2, high=10.0), noise_levels())
def test_tweedie_covariance_property(ref, lv):
    cov = _dense_cov_of(ref)
    eye = torch.eye(ref.dim, dtype=torch.float64)
    x = ref.sample(2, lv, generator=torch.Generator().manual_seed(1))
    a = lv.abar.sqrt()
    mean, post = conditional(ref.mean, cov, a * ref.mean, lv.abar * cov + lv.one_minus_abar * eye,
                             a * cov, x)
    claimed = tweedie.claimed_posterior_cov(ref.hessian(x, lv), lv.abar, lv.one_minus_abar, eye)
    scale = float(post.abs().max())
    assert torch.allclose(claimed, post.expand_as(claimed), rtol=PROP_RTOL, atol=PROP_RTOL * scale)
    claimed_mean = tweedie.claimed_posterior_mean(x, ref.score(x, lv), lv.abar, lv.one_minus_abar)
    assert torch.allclose(claimed_mean, mean, rtol=PROP_RTOL, atol=PROP_RTOL * float(mean.abs().max() + 1))


@CI
@given(gaussian_references(dims=(2, 4), condition=1e2, low=1e-2, high=10.0),
       st.floats(0.05, 0.95), st.floats(1e-4, 0.2))
def test_reverse_kernel_forms_property(ref, tau, step):
    """OCM Theorem 3 (OCM form), the law of total variance and Analytic-DPM's bounds at a drawn
    step, against the dense reverse kernel q(x_{t-1} | x_t)."""
    schedule = get_schedule("vp-linear")
    prev, lv = schedule.level(tau), schedule.level(tau + step)
    alpha = lv.abar / prev.abar
    beta = -torch.expm1(torch.log(lv.abar) - torch.log(prev.abar))
    cov = _dense_cov_of(ref)
    eye = torch.eye(ref.dim, dtype=torch.float64)
    cov_prev = prev.abar * cov + prev.one_minus_abar * eye
    x = ref.sample(1, lv, generator=torch.Generator().manual_seed(2))
    _, kernel = conditional(prev.abar.sqrt() * ref.mean, cov_prev, lv.abar.sqrt() * ref.mean,
                            lv.abar * cov + lv.one_minus_abar * eye, alpha.sqrt() * cov_prev, x)
    scale = float(kernel.abs().max())
    hd = torch.diagonal(ref.hessian(x, lv)[0])
    assert torch.allclose(ocm.claimed_ocm_cov(hd, alpha, beta), torch.diagonal(kernel),
                          rtol=PROP_RTOL, atol=PROP_RTOL * scale)
    beta_tilde = prev.one_minus_abar * beta / lv.one_minus_abar
    g2 = analytic_dpm.claimed_gamma_sq(alpha, prev.abar)
    formed = beta_tilde * eye + g2 * ref.posterior_cov(x, lv)[0]
    assert torch.allclose(formed, kernel, rtol=PROP_RTOL, atol=PROP_RTOL * scale)
    sigma2 = kernel.trace() / ref.dim  # Gaussian: Sigma* does not depend on x_t
    slack = 1e-10 * float(beta / alpha)
    assert beta_tilde - slack <= sigma2 <= beta / alpha + slack
