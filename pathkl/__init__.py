"""pathkl: exact path-space KL divergences, covariance families and rate studies for Gaussian diffusion
models (README.md, docs/errors.md).

The names a user needs, importable from here::

    import pathkl
    reference = pathkl.load_reference("mog-rotated")
    grid = pathkl.get_schedule("vp-linear").grid(64)
    result = pathkl.path_kl(reference, grid, pathkl.get_family("full"))
    print(result.steps, "+-", result.steps_error)

They load on first use (PEP 562), so ``import pathkl`` and ``pathkl --help`` stay at interpreter
speed; torch loads with the first numerical name.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "path_kl": "pathkl.pathspace",
    "PathKL": "pathkl.pathspace",
    "load_reference": "pathkl.refspec",
    "PRESETS": "pathkl.presets",
    "GaussianReference": "pathkl.references",
    "MixtureReference": "pathkl.references",
    "ProductReference": "pathkl.references",
    "EmpiricalReference": "pathkl.references",
    "get_schedule": "pathkl.schedules",
    "grid_from_taus": "pathkl.schedules",
    "grid_from_chain": "pathkl.schedules",
    "diffusers_timesteps": "pathkl.timesteps",
    "diffusers_chain_indices": "pathkl.timesteps",
    "grid_from_diffusers": "pathkl.timesteps",
    "FAMILIES": "pathkl.families",
    "get_family": "pathkl.families",
    "parse_family": "pathkl.families",
    "family_rates": "pathkl.rates",
    "ladder_rates": "pathkl.rates",
    "fit_order": "pathkl.rates",
    "lanczos_sampler": "pathkl.lanczos",
    "lanczos_accuracy": "pathkl.lgs_accuracy",
    "sample": "pathkl.sampling",
    "sample_model": "pathkl.sampling",
    "NetworkPosterior": "pathkl.denoiser",
    "reverse_model": "pathkl.denoiser",
    "mmd": "pathkl.metrics",
    "sliced_wasserstein": "pathkl.metrics",
    "sample_quality": "pathkl.metrics",
    "flow_map": "pathkl.pf_ode",
    "asymmetry": "pathkl.pf_ode",
    "fisher_trace": "pathkl.fisher",
    "fisher_matvec": "pathkl.fisher",
    "hutchinson_trace": "pathkl.fisher",
    "model_path_kl": "pathkl.model_kl",
    "ModelPathKL": "pathkl.model_kl",
    "GaussianReverseModel": "pathkl.model_kl",
    "DiagonalGaussianModel": "pathkl.model_kl",
    "ocm_loss": "pathkl.ocm",
    "probe_regression_loss": "pathkl.ocm",
    "ESTIMATORS": "pathkl.heads",
    "CovarianceHead": "pathkl.heads",
    "train_head": "pathkl.heads",
    "learned_model": "pathkl.heads",
    "true_score": "pathkl.heads",
    "train_score_network": "pathkl.score_net",
    "ScoreNetwork": "pathkl.score_net",
    "Estimate": "pathkl.estimate",
    "MonteCarlo": "pathkl.rules",
    "select_rule": "pathkl.rules",
}

__all__ = ["__version__", *_EXPORTS.keys()]  # noqa: PLE0604 (keys are the names)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pathkl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
