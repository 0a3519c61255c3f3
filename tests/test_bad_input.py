"""Bad input and start-up (issue 12): every bad input is one line on stderr, exit code 2, nothing on
stdout and no file written; every input that is not bad gives the right number, checked against an
independent route (the Gaussian closed form for a one-component mixture, the same mixture without
its zero-weight component, +inf for a point mass at step 1). ``pathkl --help`` must not import torch.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings

import pathkl
from pathkl import schedules
from pathkl.cli import COMMANDS
from pathkl.errors import InputError
from pathkl.families import get_family
from pathkl.pathspace import path_kl
from pathkl.references import GaussianReference, MixtureReference
from pathkl.refspec import load_reference
from pathkl.schedules import DTYPE, VPLinear, get_schedule
from pathkl.testing import malformed_reference_specs, reference_specs
from studies.runner import Study
from tests.test_cli import run

ROOT = Path(__file__).resolve().parents[1]
CI = settings.get_profile("ci")


def write_ref(tmp_path: Path, spec, name: str = "ref.json") -> str:
    path = tmp_path / name
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return str(path)


def assert_refused(code, out, err, tmp_path, before, names=()):
    """Exit 2, one line on stderr naming the problem, nothing on stdout, no file left behind."""
    assert code == 2, err
    assert out == ""
    assert err.startswith("pathkl") and err.endswith("\n") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for name in (names,) if isinstance(names, str) else names:
        assert name in err, err
    assert {p.name for p in tmp_path.iterdir()} == before


@pytest.fixture
def small_memory(monkeypatch):
    """A machine with 16 GiB: the memory refusals must not depend on the machine the tests run on."""
    monkeypatch.setattr(schedules, "memory_limit", lambda: 16 << 30)


# ---- reference JSON ------------------------------------------------------------------------------
BAD_REFS = {
    # a typo "means" in a Gaussian dropped the mean (and changed the answer 2000x)
    "typo 'means' in a gaussian": ({"kind": "gaussian", "means": [100, 0], "cov": [[1, 0], [0, 1]]},
                                   ("unknown key 'means'", "did you mean 'mean'")),
    "unknown key": ({"kind": "gaussian", "eigenvalues": [1, 2], "basis": [[1, 0], [0, 1]]}, "unknown key 'basis'"),
    "typo 'std' in a mog": ({"kind": "mog", "weights": [1], "means": [[0]], "stds": [1], "std": [2]}, "'std'"),
    "typo in a power law": ({"kind": "gaussian-image", "shape": [1, 4, 4], "spectrum": {"exponnt": 2}},
                            ("'exponnt'", "'exponent'")),
    "unknown key, empirical": ({"kind": "empirical", "points": [[0], [1]], "weight": [0.5, 0.5]}, "'weight'"),
    "negative std": ({"kind": "mog", "weights": [0.5, 0.5], "means": [[-1], [1]], "stds": [-0.1, 0.3]}, "stds"),
    "zero std": ({"kind": "mog", "weights": [0.5, 0.5], "means": [[-1], [1]], "stds": [0, 0.3]}, "stds"),
    "cov and eigenvalues": ({"kind": "gaussian", "cov": [[1, 0], [0, 1]], "eigenvalues": [4, 4]},
                            ("exactly one", "'cov'", "'eigenvalues'")),
    "neither cov nor eigenvalues": ({"kind": "gaussian", "mean": [0]}, "exactly one"),
    "two component forms": ({"kind": "mog", "weights": [1], "means": [[0]], "stds": [1], "variances": [[1]]},
                            "exactly one"),
    "empty eigenvalues": ({"kind": "gaussian", "eigenvalues": []}, "empty"),
    "empty cov": ({"kind": "gaussian", "cov": [[]]}, "empty"),
    "empty points": ({"kind": "empirical", "points": [[]]}, "empty"),
    "subnormal eigenvalue": ({"kind": "gaussian", "eigenvalues": [1e-320, 1]}, "must lie in [1e-300"),  # the Gaussian range check (gaussian.py) speaks first
    "subnormal variance from std 1e-160": ({"kind": "mog", "weights": [0.5, 0.5], "means": [[-1], [1]],
                                            "stds": [1e-160, 0.3]}, "smallest normal"),
    "subnormal diagonal variance": ({"kind": "mog", "weights": [0.5, 0.5], "means": [[-1], [1]],
                                     "variances": [[1e-310], [1]]}, "smallest normal"),
    "subnormal full covariance": ({"kind": "mog", "weights": [1], "means": [[0, 0]],
                                   "covs": [[[1e-320, 0], [0, 1]]]}, "smallest normal"),
    "subnormal image spectrum": ({"kind": "gaussian-image", "shape": [1, 2, 2], "spectrum": [[1e-320, 1], [1, 1]]},
                                 "smallest normal"),
    "image shape a string": ({"kind": "gaussian-image", "shape": "3x8x8"}, "'shape'"),
    "image shape with a boolean": ({"kind": "gaussian-image", "shape": [True, 4, 4]}, "'shape'"),
    "image spectrum a string": ({"kind": "gaussian-image", "shape": [1, 4, 4], "spectrum": "abc"}, "'spectrum'"),
    "image spectrum ragged": ({"kind": "gaussian-image", "shape": [1, 4, 4], "spectrum": [[1, 2], [3]]},
                              ("'spectrum'", "rectangular")),
    "image spectrum of a wrong shape": ({"kind": "gaussian-image", "shape": [1, 4, 4], "spectrum": [[1, 1], [1, 1]]},
                                        "spectrum shape"),
    "image mean a string": ({"kind": "gaussian-image", "shape": [1, 4, 4], "mean": "abc"}, "'mean'"),
    "image mean of a wrong length": ({"kind": "gaussian-image", "shape": [1, 4, 4], "mean": [1, 2, 3]}, "'mean'"),
    "image exponent a boolean": ({"kind": "gaussian-image", "shape": [1, 4, 4], "spectrum": {"exponent": True}},
                                 "finite numbers"),
    "eigenvalue a string": ({"kind": "gaussian", "eigenvalues": [1, "2"]}, "'eigenvalues'"),
    "eigenvalue a boolean": ({"kind": "gaussian", "eigenvalues": [1, True]}, "'eigenvalues'"),
    "eigenvalue beyond float64": ('{"kind": "gaussian", "eigenvalues": [1, 1' + "0" * 400 + "]}", "float64"),
    "mixture means near 1e308": ({"kind": "mog", "weights": [0.5, 0.5], "means": [[1e308], [-1e308]], "stds": [1, 1]},
                                 "at most 1e+100"),
    "data points near 1e308": ({"kind": "empirical", "points": [[1e308], [0]]}, "at most 1e+100"),
}


@pytest.mark.parametrize("case", sorted(BAD_REFS))
def test_bad_reference_json_is_refused_in_one_line(case, capsys, tmp_path):
    spec, names = BAD_REFS[case]
    ref = write_ref(tmp_path, spec)
    assert_refused(*run(["kl", "--ref", ref, "--steps", "4"], capsys), tmp_path, {"ref.json"}, names)


def test_typo_means_no_longer_drops_the_mean(tmp_path):
    """The spelled-right file gives the KL of the shifted Gaussian (terminal ``abar_T |m|^2 / 2``)."""
    ref = load_reference(write_ref(tmp_path, {"kind": "gaussian", "mean": [100, 0], "cov": [[1, 0], [0, 1]]}))
    grid = VPLinear().grid(10)
    terminal = path_kl(ref, grid, get_family("analytic")).terminal
    assert terminal == pytest.approx(0.5 * float(grid.abar[-1]) * 100**2, rel=1e-12)


@pytest.mark.parametrize("stds, variances", [([-0.5, 1.0], None), ([0.0, 1.0], None), ([1e-160, 1.0], None),
                                             (None, [[1e-310], [1.0]]), ([1e200, 1.0], None)])
def test_mixture_constructor_refuses_bad_variances(stds, variances):
    with pytest.raises(InputError):
        MixtureReference.from_components([0.5, 0.5], [[-1.0], [1.0]], stds=stds, variances=variances)


@CI
@given(malformed_reference_specs())
def test_every_malformed_reference_is_an_input_error(tmp_path_factory, case):
    spec, defect = case
    path = tmp_path_factory.mktemp("ref") / "ref.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(InputError) as err:
        load_reference(str(path))
    assert "\n" not in str(err.value), defect


@CI
@given(reference_specs())
def test_every_valid_reference_spec_loads(tmp_path_factory, spec):
    path = tmp_path_factory.mktemp("ref") / "ref.json"
    path.write_text(json.dumps(spec))
    assert load_reference(str(path)).dim >= 1


# ---- mixtures ------------------------------------------------------------------------------------
def test_zero_weight_component_is_left_out_exactly():
    """A far zero-weight component gave NaN (nodes of weight 0 times a NaN integrand). It contributes
    nothing, so the mixture equals the one without it, number for number, and weights are not renormalised."""
    with_zero = MixtureReference.from_components([0.5, 0.5, 0.0], [[-1.0], [1.0], [500.0]], stds=[0.3, 0.5, 0.1])
    without = MixtureReference.from_components([0.5, 0.5], [[-1.0], [1.0]], stds=[0.3, 0.5])
    assert with_zero.size == 2 and torch.equal(with_zero.weights, without.weights)
    grid = VPLinear().grid(8)
    for name in ("beta", "full"):
        a, b = path_kl(with_zero, grid, get_family(name)), path_kl(without, grid, get_family(name))
        assert math.isfinite(a.total) and (a.total, a.total_error) == (b.total, b.total_error)


def test_zero_weight_component_is_left_out_in_3d_and_for_data_points():
    covs = torch.stack([torch.eye(3, dtype=DTYPE) * v for v in (0.1, 0.2, 0.3)])
    with_zero = MixtureReference.from_components([0.0, 0.4, 0.6], [[9.0, 0, 0], [1, 0, 0], [-1, 0, 0]], covs=covs)
    without = MixtureReference.from_components([0.4, 0.6], [[1.0, 0, 0], [-1, 0, 0]], covs=covs[1:])
    for field in ("weights", "means", "eigenvalues"):
        assert torch.equal(getattr(with_zero, field), getattr(without, field))
    assert torch.equal(with_zero.covs.rotations, without.covs.rotations)
    data = MixtureReference.empirical([[0.0], [1.0], [5.0]], weights=[0.5, 0.5, 0.0])
    assert data.size == 2 and data.weights.tolist() == [0.5, 0.5]
    with pytest.raises(InputError, match="sum to 1"):  # zero weights are dropped, never renormalised
        MixtureReference.from_components([0.0, 0.5], [[0.0], [1.0]], stds=[1.0, 1.0])


def test_zero_weight_component_in_the_cli_is_finite(capsys, tmp_path):
    spec = {"kind": "mog", "weights": [0.5, 0.5, 0.0], "means": [[-1], [1], [500]], "stds": [0.3, 0.5, 0.1]}
    code, out, err = run(["kl", "--ref", write_ref(tmp_path, spec), "--cov", "beta", "--steps", "8", "--json"], capsys)
    doc = json.loads(out)
    expected = path_kl(MixtureReference.from_components([0.5, 0.5], [[-1.0], [1.0]], stds=[0.3, 0.5]),
                       VPLinear().grid(8), get_family("beta"))
    assert (code, err) == (0, "") and doc["total"] == expected.total


SINGLE = {"kind": "mog", "weights": [1.0], "means": [[1.0]], "stds": [0.3]}
SINGLE_GAUSSIAN = GaussianReference.from_eigenvalues([0.09], mean=[1.0])


@pytest.mark.parametrize("spec", [SINGLE, {**SINGLE, "weights": [0.0, 1.0], "means": [[5.0], [1.0]], "stds": [1.0, 0.3]},
                                  {"kind": "mog", "weights": [1.0], "means": [[1.0]], "covs": [[[0.09]]]}])
def test_single_component_mixture_kl_equals_the_gaussian(spec, capsys, tmp_path):
    grid = VPLinear().grid(16)
    for name in ("beta", "analytic", "full"):
        code, out, err = run(["kl", "--ref", write_ref(tmp_path, spec), "--cov", name, "--steps", "16", "--json"], capsys)
        doc = json.loads(out)
        expected = path_kl(SINGLE_GAUSSIAN, grid, get_family(name))
        assert (code, err) == (0, "")
        assert doc["total"] == pytest.approx(expected.total, rel=1e-14, abs=1e-300)


def test_single_component_mixture_rates_equal_the_gaussian(capsys, tmp_path):
    """``rates`` raised IndexError on a one-component 1-D mixture; it must equal the Gaussian."""
    argv = ["rates", "--cov", "beta,full", "--steps", "8,16,32,64", "--json", "--ref"]
    code, out, err = run(argv + [write_ref(tmp_path, SINGLE)], capsys)
    assert (code, err) == (0, ""), err
    gauss = write_ref(tmp_path, {"kind": "gaussian", "mean": [1.0], "eigenvalues": [0.09]}, "gauss.json")
    code_g, out_g, _ = run(argv + [gauss], capsys)
    assert code_g == 0
    for row, expected in zip(json.loads(out), json.loads(out_g)):
        assert row["kl"] == pytest.approx(expected["kl"], rel=1e-14)
        assert row["constant_predicted"] == pytest.approx(expected["constant_predicted"], rel=1e-12)


def test_single_component_mixture_leading_constant_in_the_library():
    from pathkl.rates import predicted_constant

    mix = MixtureReference.from_components([1.0], [[1.0]], stds=[0.3])
    got = predicted_constant(get_family("beta"), mix, VPLinear())
    expected = predicted_constant(get_family("beta"), SINGLE_GAUSSIAN, VPLinear())
    assert got.value == pytest.approx(expected.value, rel=1e-9)


# ---- empirical data ------------------------------------------------------------------------------
README_EMPIRICAL = {"kind": "empirical", "points": [[0, 1], [1, 0], [2, 2]]}


def test_rates_refuses_empirical_data_in_one_line(capsys, tmp_path):
    """Every family's step t = 1 is +inf on empirical data (q(x_0 | x_1) is discrete): no rate in T."""
    for spec in (README_EMPIRICAL, {"kind": "empirical", "points": [[0.5, 1.0]]}):
        ref = write_ref(tmp_path, spec)
        assert_refused(*run(["rates", "--ref", ref, "--steps", "8,16,32,64"], capsys), tmp_path, {"ref.json"},
                       "point masses")


_POINT_MASS_FIX = (
    "pathkl/mixture_kl.py step_kls/_negentropies (and mixture_mc.step_kls in d > 3): with point masses "
    "(reference.eigenvalues == 0) step t = 1 is a KL from a discrete law, +inf for every family; the "
    "engine builds I - R_k (and I + kappa G) from a zero kernel covariance and Cholesky fails. Fix: "
    "set values[0] = inf, errors[0] = 0 and run _climb and the Gaussian part on steps 2..T only")


@pytest.mark.parametrize("points", [README_EMPIRICAL["points"], [[0.5, 1.0]]])
def test_empirical_step_one_is_infinite_and_the_rest_is_finite(points):
    data = MixtureReference.empirical(points)
    grid = VPLinear().grid(8)
    later = path_kl(data, grid.window(2, 8), get_family("diag"))  # steps 2..8 alone: finite today
    result = path_kl(data, grid, get_family("diag"))
    assert math.isinf(result.per_step[0]) and math.isinf(result.total)
    assert torch.equal(result.per_step[1:], later.per_step)


def test_readme_empirical_example_in_the_cli(capsys, tmp_path):
    ref = write_ref(tmp_path, README_EMPIRICAL)
    code, out, err = run(["kl", "--ref", ref, "--cov", "diag", "--steps", "8", "--json"], capsys)
    assert (code, err) == (0, "") and json.loads(out)["total"] == "inf"


def test_one_data_point_analytic_equals_diag_within_its_error():
    data = MixtureReference.empirical([[0.5, 1.0]])
    window = VPLinear().grid(8).window(2, 8)
    analytic, diag = path_kl(data, window, get_family("analytic")), path_kl(data, window, get_family("diag"))
    assert diag.steps == 0.0
    assert abs(analytic.steps - diag.steps) <= analytic.steps_error


# ---- sizes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, names", [
    (["kl", "--steps", "1e9"], ("T = 1000000000", "256 GB", "17.2 GB")),
    (["kl", "--steps", "1000000000"], "256 GB"),
    (["kl", "--steps", "99999999999999999999999"], "TB"),
    (["kl", "--schedule", "ddpm-linear", "--indices", "0,1000000000"], ("N = 1000000000", "32 GB")),
    (["kl", "--schedule", "ddpm-linear", "--steps", "1e9"], "256 GB"),
    (["rates", "--steps", "8,16,32,1e9"], "256 GB"),
    (["lanczos", "--t", "0.5", "--k", "1", "--steps", "1e9"], "256 GB"),
    (["sample", "--steps", "1e9"], "256 GB"),
])
def test_grids_that_do_not_fit_in_memory_are_refused_up_front(argv, names, small_memory, capsys, tmp_path):
    assert_refused(*run(argv, capsys), tmp_path, set(), names)


@pytest.mark.parametrize("shape", [[100000, 100000, 100000], [1e5, 1e5, 1e5]])
def test_an_image_that_does_not_fit_is_refused_up_front(shape, small_memory, capsys, tmp_path):
    ref = write_ref(tmp_path, {"kind": "gaussian-image", "shape": shape})
    assert_refused(*run(["kl", "--ref", ref, "--steps", "4"], capsys), tmp_path, {"ref.json"},
                   ("shape [100000, 100000, 100000]", "TB"))


def test_library_grids_check_memory_and_steps(small_memory):
    with pytest.raises(InputError, match="256 GB"):
        VPLinear().grid(10**9)
    for bad in (0, -3, 2.5, True, float("inf"), float("nan"), "8"):
        with pytest.raises(InputError, match="integer >= 1"):
            VPLinear().grid(bad)
    assert VPLinear().grid(8.0).T == 8 and get_schedule("ddpm-linear").grid(50).T == 50
    assert schedules.check_steps(10**6) == 10**6  # 256 MB: fits


@dataclass(frozen=True)
class _TinyConfig:
    n: int = 3


def _tiny_points(config):
    return [{"i": i} for i in range(config.n)]


def _tiny_point(config, point):
    return {"value": float(point["i"]) ** 2}


_TINY = Study(
    "tiny", "three points", _TinyConfig, _tiny_points, _tiny_point, ("i",), ("value",))


def test_study_jobs_are_capped_at_the_points_to_run(tmp_path, monkeypatch):
    """--jobs 1000 on 3 points forked 1000 workers; now as many as there are points (and 1 for none)."""
    from studies import runner

    pools = []
    real = runner.multiprocessing.get_context

    class Context:
        def __init__(self, method):
            self.inner = real(method)

        def Pool(self, processes, **kwargs):
            pools.append(processes)
            return self.inner.Pool(processes, **kwargs)

    monkeypatch.setattr(runner.multiprocessing, "get_context", Context)
    summary = runner.run_study(_TINY, _TinyConfig(), tmp_path / "out", jobs=1000, progress=False)
    assert summary.ran == 3 and pools == [3]
    from studies.results import read_runs

    assert read_runs(tmp_path / "out")[-1]["jobs"] == 3
    again = runner.run_study(_TINY, _TinyConfig(), tmp_path / "out", jobs=1000, progress=False)
    assert again.ran == 0 and pools == [3]


@pytest.mark.parametrize("argv", [["study", "run", "gaussian_rates", "--jobs", "0"], ["figs", "--jobs", "-2"]])
def test_jobs_below_one_are_usage_errors(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_refused(*run(argv, capsys), tmp_path, set(), "--jobs")


# ---- command-line arguments ----------------------------------------------------------------------
@pytest.mark.parametrize("cov", ["", ",", " , "])
def test_rates_with_no_family_prints_nothing(cov, capsys, tmp_path):
    assert_refused(*run(["rates", "--cov", cov, "--plot", str(tmp_path / "r.png")], capsys), tmp_path, set(),
                   "--cov names no family")


@pytest.mark.parametrize("cov, names", [("lanczos:0", ("lanczos:k", ">= 1")), ("lanczos", ("lanczos:k", ">= 1")),
                                        ("lanczos:x", "lanczos:k"), ("rademacher:1", ("rademacher:M", ">= 2")),
                                        ("gamma", "unknown covariance family")])
def test_sample_family_sizes_are_named(cov, names, capsys, tmp_path):
    code, out, err = run(["sample", "--cov", cov, "--steps", "4", "--n", "10"], capsys)
    assert_refused(code, out, err, tmp_path, set(), names)
    if cov != "gamma":
        assert "unknown" not in err


def test_sample_default_family_fits_a_2d_reference(capsys):
    """The default lanczos:3 exceeded d = 2 on gaussian-2d; the default is now lanczos:min(3, d)."""
    code, out, err = run(["sample", "--ref", "gaussian-2d", "--steps", "4", "--n", "40", "--json"], capsys)
    assert (code, err) == (0, "") and json.loads(out)["cov"] == "lanczos:2"
    code, out, err = run(["sample", "--ref", "gaussian-5d", "--steps", "4", "--n", "40", "--json"], capsys)
    assert (code, err) == (0, "") and json.loads(out)["cov"] == "lanczos:3"


# ---- start-up ------------------------------------------------------------------------------------
HEAVY = ("torch", "scipy", "matplotlib", "sympy", "numpy")


def _imports_after(argv: list[str]) -> tuple[int, list[str], str]:
    code = ("import sys\nfrom pathkl.cli import main\n"
            f"try:\n    rc = main({argv!r})\nexcept SystemExit as e:\n    rc = e.code\n"
            f"print(rc, *sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    rc, *loaded = proc.stdout.splitlines()[-1].split()
    return int(rc), loaded, proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["kl", "--steps", "abc"], ["kl", "--schedule", "x"],
                                  ["rates", "--cov", ""], ["sample", "--cov", "lanczos:0"]]
                         + [[name, "--help"] for name in COMMANDS] + [["study", "run", "--help"]])
def test_help_and_argument_errors_import_no_torch(argv):
    rc, loaded, err = _imports_after(argv)
    assert rc in (0, 2), err
    assert loaded == [], f"{argv} imported {loaded}"


def test_version_from_the_command_line_and_the_package(capsys):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert pathkl.__version__ == version
    code, out, err = run(["--version"], capsys)
    assert (code, out, err) == (0, f"pathkl {version}\n", "")


def test_parser_names_match_the_library_registries():
    """The CLI lists families, presets and schedules without importing torch: the lists must be the
    library's own."""
    from pathkl import families, sampling
    from pathkl.cli import common
    from pathkl.presets import PRESETS
    from pathkl.rules import MonteCarlo
    from pathkl.schedules import SCHEDULES

    assert common.FAMILY_NAMES == tuple(families.FAMILIES)
    assert common.SAMPLING_FAMILY_NAMES == families.FAMILY_NAMES
    assert common.SIZED_FAMILIES == {kind: (s.letter, s.smallest, s.meaning) for kind, s in families.SIZED_FAMILIES.items()}
    assert common.SAMPLING_ROUTES == sampling.ROUTES
    assert common.PRESET_NAMES == tuple(PRESETS)
    assert common.SCHEDULE_NAMES == tuple(SCHEDULES)
    assert (common.MC_OUTER, common.MC_INNER) == (MonteCarlo.outer, MonteCarlo.inner)


def test_empirical_step_one_is_infinite_by_monte_carlo_too():
    """d > 3 (Monte Carlo): the same exact +inf at step 1 from point masses, finite estimates after."""
    data = MixtureReference.empirical([[0.0, 1.0, 0.0, 0.5], [1.0, 0.0, 0.5, 0.0], [2.0, 2.0, 0.0, 0.0]])
    result = path_kl(data, VPLinear().grid(4), get_family("diag"))
    assert result.method == "monte carlo" and math.isinf(result.per_step[0]) and math.isinf(result.total)
    assert torch.isfinite(result.per_step[1:]).all()
