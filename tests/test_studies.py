"""Study machinery: resumable runs, refusal to touch foreign files, configurations, figures.

The independent reference for "resume" is always a second, uninterrupted run of the same study into
another directory: the two results files must be byte-identical.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import studies
from pathkl.errors import InputError
from studies import config as cfg
from studies.progress import Progress, format_duration
from studies.results import load, read_runs
from studies.runner import Study, run_study

ROOT = Path(__file__).resolve().parents[1]


# ---- a toy study: cheap, deterministic, with an optional sleep and an injectable interruption ----

@dataclass(frozen=True)
class ToyConfig:
    T: tuple[int, ...] = (2, 4, 8, 16)
    families: tuple[str, ...] = ("a", "b", "c")
    seed: int = 0
    sleep: float = 0.0


INTERRUPT_AT = {"count": -1}  # raise KeyboardInterrupt when this many points have run (serial only)


def toy_points(config: ToyConfig):
    return [{"family": f, "T": t, "seed": config.seed} for f in config.families for t in config.T]


def toy_run_point(config: ToyConfig, point):
    if INTERRUPT_AT["count"] == 0:
        raise KeyboardInterrupt
    INTERRUPT_AT["count"] -= 1
    time.sleep(config.sleep)
    p = {"a": 1, "b": 2, "c": 3}[point["family"]]
    return [{"k": k, "value": (k + 1.0) / point["T"] ** p, "third": (point["seed"] + 1) / 3.0}
            for k in range(2)]


TOY = Study("toy", "toy study for tests (two rows per point)", ToyConfig, toy_points,
            toy_run_point, ("family", "T", "seed"), ("value", "third"), row_columns=("k",))


def run_toy_cli(out: str, sleep: float, jobs: int) -> None:
    """Entry point of the subprocess that the kill and interrupt tests stop."""
    run_study(TOY, ToyConfig(sleep=sleep, T=(2, 4, 8, 16, 32)), Path(out), jobs=jobs,
              progress=False)


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


# ---- resuming ----------------------------------------------------------------------------------

@settings(max_examples=8, derandomize=True, deadline=None)
@given(stop=st.integers(min_value=0, max_value=11))
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path_factory, stop):
    ref, out = tmp_path_factory.mktemp("ref"), tmp_path_factory.mktemp("out")
    run_study(TOY, ToyConfig(), ref, progress=False)
    INTERRUPT_AT["count"] = stop
    try:
        with pytest.raises(KeyboardInterrupt):
            run_study(TOY, ToyConfig(), out, progress=False)
    finally:
        INTERRUPT_AT["count"] = -1
    assert len(load(out).rows) == 2 * stop  # nothing lost but the point in progress
    summary = run_study(TOY, ToyConfig(), out, progress=False)
    assert (summary.skipped, summary.ran) == (stop, 12 - stop)
    assert (out / "results.csv").read_bytes() == (ref / "results.csv").read_bytes()
    runs = read_runs(out)
    assert runs[-1]["completed"] and sum(r["points_run"] for r in runs) == 12


@pytest.mark.parametrize("sig, jobs", [(signal.SIGKILL, 1), (signal.SIGINT, 2)])
def test_killed_or_interrupted_run_leaves_a_readable_file_and_resume_completes(tmp_path, sig, jobs):
    """SIGKILL at a random moment of a serial run, or Ctrl-C (SIGINT) during a parallel one: the
    results parse, hold only whole points, no process of the run survives, and resuming gives the
    bytes of an uninterrupted run."""
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_toy_cli(str(ref), 0.0, 1)
    # 0.2 s a point: after the 3 points awaited below, >= 1 s of the run is left for the signal to land
    # (at 0.05 s a loaded machine once let a 2-job run finish first).
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import test_studies as t; "
            "t.run_toy_cli(sys.argv[3], 0.2, int(sys.argv[4]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(ROOT / "tests"), str(ROOT), str(out),
                             str(jobs)], start_new_session=True, stderr=subprocess.DEVNULL)
    records = out / "points"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (records.exists()
                                                and len(list(records.glob("*.json"))) >= 3):
        time.sleep(0.005)
    os.kill(proc.pid, sig)
    assert proc.wait(timeout=30) != 0
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no worker left behind in the run's process group
        os.killpg(proc.pid, 0)
    partial = load(out)
    assert 6 <= len(partial.rows) < 30 and len(partial.rows) % 2 == 0
    run_toy_cli(str(out), 0.2, 1)
    assert (out / "results.csv").read_bytes() == (ref / "results.csv").read_bytes()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_parallel_jobs_give_the_serial_bytes(tmp_path):
    study = studies.REGISTRY["gaussian_rates"]
    config = study.config(small=True)
    run_study(study, config, tmp_path / "serial", progress=False)
    run_study(study, config, tmp_path / "par", jobs=2, progress=False)
    assert ((tmp_path / "serial" / "results.csv").read_bytes()
            == (tmp_path / "par" / "results.csv").read_bytes())


# ---- foreign and corrupt files are reported, never overwritten ----------------------------------

def _prepared(tmp_path: Path) -> Path:
    out = tmp_path / "res"
    run_study(TOY, ToyConfig(T=(2, 4)), out, progress=False)
    return out


def _record(d: Path) -> Path:
    return min((d / "points").glob("*.json"))


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "results.json").unlink(), "no results.json sidecar"),
    (lambda d: (d / "results.json").write_text("{not json"), "not a readable results sidecar"),
    (lambda d: (d / "results.json").write_text('{"hello": 1}'), "not a pathkl results sidecar"),
    # torn in the middle of a number: no trailing newline
    (lambda d: _record(d).write_text(_record(d).read_text()[:-30]), "torn write"),
    # a cell edited by hand (value 'abc'), the file still well-formed JSON
    (lambda d: _record(d).write_text(_record(d).read_text().replace('"0.', '"abc', 1)),
     "checksum mismatch"),
    (lambda d: _record(d).write_text("garbage\n"), "not a point record"),
    (lambda d: (d / "points" / "0123.json").write_text(_record(d).read_text()),
     "does not match its key"),
])
def test_damaged_results_are_reported_and_left_untouched(tmp_path, damage, message):
    out = _prepared(tmp_path)
    damage(out)
    before = files(out)
    with pytest.raises(InputError, match=message):
        run_study(TOY, ToyConfig(T=(2, 4)), out, progress=False)
    assert files(out) == before


def test_other_study_or_configuration_is_refused(tmp_path):
    out = _prepared(tmp_path)
    before = files(out)
    with pytest.raises(InputError, match="different configuration .*differs in: T, seed"):
        run_study(TOY, ToyConfig(T=(2, 8), seed=1), out, progress=False)
    other = Study("other", "", ToyConfig, toy_points, toy_run_point, TOY.key_columns,
                  TOY.value_columns, row_columns=TOY.row_columns)
    with pytest.raises(InputError, match="holds results of study 'toy'"):
        run_study(other, ToyConfig(T=(2, 4)), out, progress=False)
    assert files(out) == before


# ---- configuration --------------------------------------------------------------------------------

def test_config_layers_defaults_preset_toml_and_set(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('T = [3, 5]\nsleep = 1\nfamilies = ["x"]\n')
    c = cfg.build_config(ToyConfig, base={"seed": 4}, toml_path=toml, assignments=["T=7,9"])
    assert c == ToyConfig(T=(7, 9), families=("x",), seed=4, sleep=1.0)


@pytest.mark.parametrize("assignment, message", [
    ("nope=1", "unknown configuration key"), ("seed=1.5", "expected int"),
    ("T=a,b", "expected int"), ("seed", "expects key=value"),
])
def test_bad_overrides_are_input_errors(assignment, message):
    with pytest.raises(InputError, match=message):
        cfg.build_config(ToyConfig, assignments=[assignment])


def test_bad_toml_is_an_input_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("T = [1, \n")
    with pytest.raises(InputError, match="not valid TOML"):
        cfg.build_config(ToyConfig, toml_path=bad)
    with pytest.raises(InputError, match="cannot read"):
        cfg.build_config(ToyConfig, toml_path=tmp_path / "missing.toml")


# ---- progress ------------------------------------------------------------------------------------

def test_progress_logs_eta_to_a_non_terminal_stream():
    stream = io.StringIO()
    bar = Progress(4, already=1, label="x", stream=stream, log_every=0.0)
    for _ in range(3):
        bar.advance()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("x [") and "4/4 100%" in lines[-1]
    assert "ETA 0:00" in lines[-1]
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "1:05"


# ---- registered studies, CLI and figures --------------------------------------------------------

@pytest.mark.parametrize("name", sorted(studies.REGISTRY))
def test_small_configuration_of_every_study_runs(tmp_path, name):
    study = studies.REGISTRY[name]
    config = study.config(small=True)
    summary = run_study(study, config, tmp_path, progress=False)
    table = load(tmp_path)
    assert summary.ran == len(study.points(config)) > 0 and len(table.rows) >= summary.ran
    assert table.columns == study.key_columns + study.row_columns + study.value_columns


def test_rate_study_rows_are_the_library_numbers(tmp_path):
    """The rows are pathkl's path_kl for the point, on an independently built reference and grid."""
    from pathkl.families import get_family
    from pathkl.pathspace import path_kl
    from pathkl.presets import PRESETS
    from pathkl.schedules import get_schedule

    study = studies.REGISTRY["gaussian_rates"]
    run_study(study, study.config(small=True), tmp_path, progress=False)
    ref = PRESETS["gaussian-5d"][1]()
    for row in load(tmp_path).rows:
        assert row["schedule"] == "vp-linear"
        kl = path_kl(ref, get_schedule("vp-linear").grid(row["T"]), get_family(row["family"]))
        assert (row["steps"], row["terminal"]) == (kl.steps, kl.terminal)  # same code path: exact


def test_cli_reports_damaged_results_in_one_line_with_exit_2(tmp_path, capsys):
    from pathkl.cli import main

    out = tmp_path / "r"
    assert main(["study", "run", "gaussian_rates", "--small", "--out", str(out), "--quiet"]) == 0
    (out / "results.json").write_text("garbage")
    before = files(out)
    capsys.readouterr()
    assert main(["study", "run", "gaussian_rates", "--small", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable results sidecar" in err
    assert files(out) == before
    assert main(["study", "run", "nope"]) == 2
    capsys.readouterr()
    assert main(["study", "list", "--json"]) == 0
    assert set(studies.REGISTRY) == {s["name"] for s in json.loads(capsys.readouterr().out)}
    assert main(["study", "run", "gaussian_rates", "--set", "T=1,2"]) == 2


def test_figs_headless_files_and_plotted_data_match_results(tmp_path):
    """``pathkl figs`` in a fresh process with no display: runs the missing study, writes non-empty
    PDF and PNG files, and never loads pyplot (so no GUI backend can be picked)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    code = ("import sys; from pathkl.cli import main; rc = main(sys.argv[1:]); "
            "assert 'matplotlib.pyplot' not in sys.modules; sys.exit(rc)")
    res, figs = tmp_path / "results", tmp_path / "figs"
    subprocess.run([sys.executable, "-c", code, "figs", "gaussian_rates", "--small", "--quiet",
                    "--results", str(res), "--out", str(figs)], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    pdf, png = figs / "gaussian_rates-gaussian-5d.pdf", figs / "gaussian_rates-gaussian-5d.png"
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    table = load(res / "gaussian_rates")
    fig = studies.REGISTRY["gaussian_rates"].figures(table)["gaussian-5d"]
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}
    for family in ("beta", "analytic"):
        x, y = lines[f"data:{family}"].get_data()
        assert list(x) == table.column("T", family=family)
        assert list(y) == table.column("steps", family=family)
    assert "data:full" not in lines  # exactly zero: named in the legend, not plotted on log axes
    assert all(s == 0.0 for s in table.column("steps", family="full"))


def test_covariance_error_leading_curve_integrates_to_the_predicted_constant(tmp_path):
    """Midpoint sums of the study's ``leading`` column against pathkl.rates' adaptive quadrature
    (QUADPACK, rel. 1e-10): an independent route to the same integral. The midpoint rule is second
    order, so the error must be small (2e-3 at T = 50, measured 7e-4) and shrink about 4x when T
    doubles (band [3, 5]); the scaled KLs sum to T^p steps, which must converge at first order."""
    from pathkl.families import get_family
    from pathkl.presets import PRESETS
    from pathkl.rates import predicted_constant
    from pathkl.schedules import get_schedule

    study = studies.REGISTRY["covariance_error"]
    config = study.config(assignments=["T=50,100", "families=beta"])
    run_study(study, config, tmp_path, progress=False)
    table = load(tmp_path)
    exact = predicted_constant(get_family("beta"), PRESETS["gaussian-5d"][1](),
                               get_schedule("vp-linear")).value
    err = {T: math.fsum(table.column("leading", T=T)) / T / exact - 1 for T in (50, 100)}
    assert abs(err[50]) < 2e-3 and 3 < err[50] / err[100] < 5
    gap = {T: math.fsum(table.column("scaled", T=T)) / T / exact - 1 for T in (50, 100)}
    assert 1.8 < gap[50] / gap[100] < 2.2
    fig = study.figures(table)["gaussian-5d"]
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}
    x, y = lines["data:beta"].get_data()
    assert list(x) == table.column("tau", T=100) and list(y) == table.column("kernel_kl", T=100)


def _registered(name: str):
    if name not in studies.REGISTRY:
        pytest.skip(f"study {name} is not registered (the pathkl API it needs is not available)")
    return studies.REGISTRY[name]


def test_lanczos_decay_respects_the_bound_and_matches_the_k_step_sampler(tmp_path):
    """Every draw's error is below the a priori bound B_k (theory against measurement), and the
    errors taken from the leading blocks of one k_max-step run equal fresh k-step sampler draws
    (rounding only: 1e-12 absolute on errors of order <= 1)."""
    study = _registered("lanczos_decay")
    import torch

    from pathkl.lanczos import lanczos_sampler

    config = study.config(small=True)
    run_study(study, config, tmp_path, progress=False)
    table = load(tmp_path)
    assert all(r["error_max"] <= r["bound"] for r in table.rows)
    kappa = config.kappas[-1]
    lam = torch.logspace(-math.log10(kappa), 0.0, config.dim, dtype=torch.float64)
    z = torch.randn(config.samples, config.dim, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(config.seed))
    for k in (1, 4, config.k_max):
        draw = lanczos_sampler(k)(lambda v: lam * v, z)
        err = torch.linalg.vector_norm(draw.sample - lam.sqrt() * z, dim=1) / z.norm(dim=1)
        (row,) = [r for r in table.rows if r["kappa"] == kappa and r["k"] == k]
        assert abs(row["error_mean"] - float(err.mean())) < 1e-12
        assert abs(row["estimate_mean"] - float(draw.error_estimate.mean())) < 1e-12
    fig = study.figures(table)[""]
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}
    x, y = lines[f"data:{kappa}"].get_data()
    assert list(x) == table.column("k", kappa=kappa)
    assert list(y) == table.column("error_mean", kappa=kappa)


def test_few_step_sampling_full_is_exact_on_gaussian_data(tmp_path):
    """With the exact mean and the full covariance every reverse kernel is exact for Gaussian data,
    so MMD^2 must be 0 within 4 standard errors (a deterministic seed; 4 s.e. would be exceeded by
    chance with probability ~6e-5); beta_tilde at T = 2 is far from exact (> 10 s.e.)."""
    study = _registered("few_step_sampling")
    config = study.config(assignments=["families=full,beta_tilde", "T=2,8", "samples=1000"])
    run_study(study, config, tmp_path, progress=False)
    table = load(tmp_path)
    for row in table.rows:
        if row["family"] == "full":
            assert abs(row["metric"]) < 4 * row["metric_stderr"]
    (bad,) = [r for r in table.rows if (r["family"], r["T"]) == ("beta_tilde", 2)]
    assert bad["metric"] > 10 * bad["metric_stderr"]


def test_sidecar_records_configuration_environment_and_timings(tmp_path):
    import numpy
    import torch

    run_study(TOY, ToyConfig(seed=5), tmp_path, progress=False)
    meta = load(tmp_path).meta
    assert meta["study"] == "toy" and meta["runs"][0]["seed"] == 5
    assert meta["config"] == {"T": [2, 4, 8, 16], "families": ["a", "b", "c"], "seed": 5,
                              "sleep": 0.0}
    env = meta["environment"]
    assert (env["torch"], env["numpy"], env["device"]) == (torch.__version__, numpy.__version__, "cpu")
    assert env["git_commit"] is None or len(env["git_commit"].split("+")[0]) == 40
    assert len(meta["point_seconds"]) == 12 and all(v >= 0 for v in meta["point_seconds"].values())
    assert meta["runs"][0]["completed"] and meta["runs"][0]["points_run"] == 12


def test_optimal_grids_dp_is_the_brute_force_minimum_and_beats_the_grids_it_contains(tmp_path):
    """The small run's DP rows against independent routes: on the mixture, path_kl of every K-step
    subsequence of the candidates (brute force, not the pair costs) is no lower than the DP grid's
    KL beyond the regret bound and both KLs' errors; on the Gaussian, where the quadratic grid
    (k/K)^2 lies in the quadratic lattice (K divides N), the DP's KL is at most its KL (rounding:
    1e-12 relative). The figure plots the table's numbers."""
    import itertools

    from pathkl.families import get_family
    from pathkl.optimal_grid import Candidates
    from pathkl.pathspace import path_kl
    from pathkl.refspec import load_reference
    from pathkl.schedules import get_schedule

    study = _registered("optimal_grids")
    config = study.config(small=True)
    run_study(study, config, tmp_path, progress=False)
    table = load(tmp_path)
    pool = Candidates.uniform(get_schedule("vp-linear"), config.mixture_candidates, spacing=config.spacing)
    mixture = load_reference(config.mixture)
    for family in config.families:
        for steps in config.mixture_K:
            (dp,) = [r for r in table.rows if (r["reference"], r["family"], r["grid"], r["K"])
                     == (config.mixture, family, "dp", steps)]
            assert {float(t) for t in dp["taus"].split()} <= set(pool.taus.tolist())
            for inner in itertools.combinations(range(1, pool.n), steps - 1):
                kl = path_kl(mixture, pool.grid((0, *inner, pool.n)), get_family(family),
                             rtol=config.mixture_rtol)
                assert dp["total"] <= kl.total + dp["regret_bound"] + dp["total_error"] + kl.total_error
        for steps in config.K:
            if config.candidates % steps == 0 and family != "full":
                by_grid = {r["grid"]: r["total"] for r in table.rows
                           if (r["reference"], r["family"], r["K"]) == (config.gaussian, family, steps)}
                assert by_grid["dp"] <= by_grid["quadratic"] * (1 + 1e-12)
    fig = study.figures(table)[config.gaussian]
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}
    x, y = lines[f"data:{config.families[0]}:dp"].get_data()
    assert list(x) == table.column("K", reference=config.gaussian, family=config.families[0], grid="dp")
    assert list(y) == table.column("steps", reference=config.gaussian, family=config.families[0], grid="dp")


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_ocm_toy_sampler_draws_the_diag_family_from_the_same_seed(eta):
    """The study's ancestral sampler of a Gaussian reverse model, given the exact mean and the
    ``diag`` family's variance (built here from the DDIM coefficients and the reference's closed
    forms), draws pathkl.sample's ``diag`` samples from the same seed: the same noise in the same
    order, so they agree to rounding (1e-12 absolute on draws of order 1, 6 steps)."""
    study = _registered("ocm_toy")
    import torch

    from pathkl.covariances import ReverseStep
    from pathkl.model_kl import DiagonalGaussianModel
    from pathkl.refspec import load_reference
    from pathkl.sampling import sample
    from studies.ocm_toy import _skip_grid, ancestral_samples

    reference = load_reference("mog-rotated")
    grid = _skip_grid(study.config(small=True), 6)

    def mean(x, t, g):
        step = ReverseStep.ddim(g, t, eta=eta)
        return step.lam * reference.posterior_mean(x, step.level) + step.kappa * x

    def variance(x, t, g):
        step = ReverseStep.ddim(g, t, eta=eta)
        return step.s2 + step.lam**2 * reference.posterior_cov_diagonal(x, step.level)

    ours = ancestral_samples(DiagonalGaussianModel(mean, variance), grid, n=64, dim=2, seed=3)
    theirs = sample(reference, grid, "diag", n=64, eta=eta, seed=3).samples
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)


def test_ocm_toy_rademacher_error_is_its_closed_form_variance(tmp_path):
    """With the true score, the M-probe Rademacher estimate of diag C errs by C_12 m (1, 1) in 2-D,
    m the mean of M products v_1 v_2 (E m^2 = 1/M): the study's ``cov_error`` must match
    E_x 2 C_12(x)^2 / M from the reference's dense posterior covariance on independent draws, within
    4 combined standard errors (seeded: no flakiness). The figure plots the table's numbers."""
    study = _registered("ocm_toy")
    import torch

    from pathkl.refspec import load_reference
    from pathkl.schedules import get_schedule

    config = study.config(small=True)
    run_study(study, config, tmp_path, progress=False)
    table = load(tmp_path)
    assert {"estimator", "score", "t", "cov_error", "steps", "mmd", "mmd_stderr", "path_kl",
            "path_kl_error"} <= set(table.columns)
    reference = load_reference("mog-rotated")
    chain = get_schedule("ddpm-linear").grid(config.chain)
    for t in config.levels:
        (row,) = [r for r in table.rows if (r["score"], r["estimator"], r["panel"], r["t"]) == ("true", "rademacher:2", "cov", t)]
        lv = chain.level(t)
        x = reference.sample(4000, lv, generator=torch.Generator().manual_seed(99))
        exact = 2 * reference.posterior_cov(x, lv)[:, 0, 1] ** 2 / 2
        stderr = math.hypot(row["cov_error_stderr"], float(exact.std()) / math.sqrt(exact.numel()))
        assert abs(row["cov_error"] - float(exact.mean())) < 4 * stderr
    fig = study.figures(table)["mog-rotated"]
    lines = {ln.get_gid(): ln for ax in fig.axes[:1] for ln in ax.get_lines() if ln.get_gid()}
    x, y = lines["data:true:ocm"].get_data()
    ocm = [r for r in table.rows if (r["score"], r["estimator"], r["panel"], r["train_steps"]) == ("true", "ocm", "cov", config.train_steps)]
    assert list(x) == [r["t"] for r in ocm] and list(y) == [r["cov_error"] for r in ocm]


def test_ocm_toy_refuses_a_product_reference():
    study = _registered("ocm_toy")
    with pytest.raises(InputError, match="mog-ocm-grid-2d"):
        study.config(assignments=["references=mog-ocm-grid"])
