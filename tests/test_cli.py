"""The ``pathkl`` command line, called in-process through ``pathkl.cli.main``.

Every number the CLI prints is checked against the library called directly (``path_kl``, the rate
fits), never against another CLI output. Bad input must exit 2 with exactly one line on stderr, no
traceback, nothing on stdout and no file left behind.
"""

import json
import math

import pytest

from pathkl.cli import COMMANDS, main
from pathkl.families import FAMILIES, get_family
from pathkl.pathspace import path_kl
from pathkl.presets import PRESETS
from pathkl.rates import fit_order, predicted_constant
from pathkl.refspec import load_reference
from pathkl.schedules import VPLinear, get_schedule, grid_from_chain, grid_from_taus

# The text output prints 12 significant digits: relative rounding error <= 5e-12.
PRINTED_REL = 1e-11


def run(argv, capsys):
    """``main(argv)`` -> (exit code, stdout, stderr); argparse errors arrive as SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def library(ref="gaussian-5d", schedule="vp-linear", cov="analytic", steps=100, first_step=1):
    return path_kl(PRESETS[ref][1](), get_schedule(schedule).grid(steps), get_family(cov), first_step=first_step)


# ---- pathkl kl -----------------------------------------------------------------------------------
def test_kl_text_prints_the_three_library_numbers(capsys):
    code, out, err = run(["kl", "--ref", "gaussian-5d", "--cov", "analytic", "--steps", "100"], capsys)
    assert (code, err) == (0, "")
    printed = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()[1:] if line.strip()}
    expected = library()
    for key in ("terminal", "steps", "total"):
        assert printed[key] == pytest.approx(getattr(expected, key), rel=PRINTED_REL)


def test_kl_json_equals_library_exactly(capsys):
    code, out, err = run(["kl", "--ref", "gaussian-2d", "--schedule", "cosine", "--cov", "diag",
                          "--steps", "50", "--json"], capsys)
    assert (code, err) == (0, "")
    doc = json.loads(out)
    expected = library("gaussian-2d", "cosine", "diag", 50)
    # JSON writes floats with repr, which round-trips exactly.
    assert (doc["terminal"], doc["steps"], doc["total"]) == (expected.terminal, expected.steps, expected.total)
    assert doc["T"] == 50


def test_kl_json_beta_tilde_is_the_string_inf_and_first_step_two_is_finite(capsys):
    code, out, _ = run(["kl", "--cov", "beta_tilde", "--steps", "40", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0
    assert doc["steps"] == "inf" and doc["total"] == "inf"
    assert isinstance(doc["terminal"], float) and math.isfinite(doc["terminal"])

    code, out, _ = run(["kl", "--cov", "beta_tilde", "--steps", "40", "--first-step", "2", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["first_step"] == 2
    assert doc["steps"] == library(cov="beta_tilde", steps=40, first_step=2).steps


def test_first_step_two_leaves_out_exactly_step_one(capsys):
    # Independent of the CLI's summation: the full sum minus the library's step-1 value.
    _, out, _ = run(["kl", "--cov", "beta", "--steps", "30", "--first-step", "2", "--json"], capsys)
    full = library(cov="beta", steps=30)
    assert json.loads(out)["steps"] == pytest.approx(full.steps - float(full.per_step[0]), rel=1e-14)


def test_kl_taus_inline_and_from_file(capsys, tmp_path):
    taus = [0.0, 0.1, 0.3, 0.6, 1.0]
    expected = path_kl(PRESETS["gaussian-2d"][1](), grid_from_taus(get_schedule("vp-linear"), taus),
                       get_family("beta"))
    taus_file = tmp_path / "taus.txt"
    taus_file.write_text("0 0.1\n0.3 0.6\n1\n")
    for spec in (",".join(map(str, taus)), f"@{taus_file}"):
        code, out, _ = run(["kl", "--ref", "gaussian-2d", "--cov", "beta", "--taus", spec, "--json"], capsys)
        doc = json.loads(out)
        assert code == 0 and doc["T"] == 4
        assert (doc["steps"], doc["total"]) == (expected.steps, expected.total)


def test_kl_ddpm_linear_indices_is_a_chain_subsequence(capsys):
    indices = [0, 100, 250, 500, 1000]
    schedule = get_schedule("ddpm-linear")
    expected = path_kl(PRESETS["gaussian-5d"][1](), grid_from_chain(schedule, 1000, indices), get_family("beta"))
    code, out, _ = run(["kl", "--schedule", "ddpm-linear", "--cov", "beta", "--indices",
                        ",".join(map(str, indices)), "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["T"] == 4
    assert doc["steps"] == expected.steps
    # A 4-step subsequence of a 1000-step chain is a coarser grid: a larger KL than the full chain.
    assert doc["steps"] > library(schedule="ddpm-linear", cov="beta", steps=1000).steps


# ---- pathkl rates --------------------------------------------------------------------------------
LADDER = [32, 64, 128, 256, 512]


def test_rates_json_matches_the_library(capsys):
    code, out, err = run(["rates", "--ref", "gaussian-5d", "--cov", "beta,full", "--steps", ",".join(map(str, LADDER)),
                          "--json"], capsys)
    assert (code, err) == (0, "")
    rows = {row["cov"]: row for row in json.loads(out)}
    reference, schedule = PRESETS["gaussian-5d"][1](), get_schedule("vp-linear")
    for name, row in rows.items():
        assert {"cov", "T", "kl", "kl_error", "slope", "slope_ci", "constant", "constant_predicted"} <= row.keys()
        assert row["T"] == LADDER and row["met_rtol"] is True
        family = get_family(name)
        assert row["kl"] == [path_kl(reference, schedule.grid(t), family).steps for t in LADDER]
    beta = rows["beta"]
    fit = fit_order(LADDER, beta["kl"])
    assert beta["slope"] == fit.slope and beta["slope_ci"] == list(fit.interval)
    assert beta["slope_ci"][0] <= beta["slope"] <= beta["slope_ci"][1]
    assert beta["constant_predicted"] == predicted_constant(get_family("beta"), reference, schedule).value
    # T * steps at the largest T approaches the predicted integral (O(1/T) correction: 2% at T = 512).
    assert beta["constant"] == pytest.approx(beta["constant_predicted"], rel=0.02)
    full = rows["full"]
    assert full["kl"] == [0.0] * len(LADDER) and full["slope"] is None
    assert full["constant_predicted"] == 0.0


def test_rates_plot_writes_a_png(capsys, tmp_path):
    out_file = tmp_path / "rates.png"
    code, out, err = run(["rates", "--cov", "analytic", "--steps", "16,32,64,128", "--plot", str(out_file)], capsys)
    assert (code, err) == (0, "")
    assert out_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_file.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rates.png"]  # no temporary left over
    assert "analytic" in out and str(out_file) in out


# ---- bad input -----------------------------------------------------------------------------------
def _json_ref(tmp_path, text):
    path = tmp_path / "ref.json"
    path.write_text(text)
    return str(path)


BAD_REFS = {
    "non-symmetric": ('{"kind": "gaussian", "cov": [[1, 0.5], [0.2, 1]]}', 'not symmetric'),
    "not positive definite": ('{"kind": "gaussian", "cov": [[1, 2], [2, 1]]}', 'not positive definite'),
    "NaN in cov": ('{"kind": "gaussian", "cov": [[1, NaN], [NaN, 1]]}', 'NaN or inf'),
    "inf in eigenvalues": ('{"kind": "gaussian", "eigenvalues": [1, Infinity]}', 'NaN or inf'),
    "NaN in mean": ('{"kind": "gaussian", "mean": [NaN, 0], "cov": [[1, 0], [0, 1]]}', 'NaN or inf'),
    "zero eigenvalue": ('{"kind": "gaussian", "eigenvalues": [1, 0, 2]}', '> 0'),
    "negative eigenvalue": ('{"kind": "gaussian", "eigenvalues": [1, -0.5]}', '> 0'),
    "malformed JSON": ('{"kind": "gaussian", "eigenvalues": [1, 2}', 'malformed JSON'),
    "unknown kind": ('{"kind": "laplace", "scale": 1}', "'kind'"),
    "image, negative floor": ('{"kind": "gaussian-image", "shape": [1, 8, 8], "spectrum": {"floor": -1}}', 'floor'),
}

BAD_ARGS = {
    "non-increasing taus": (["kl", "--taus", "0,0.5,0.4,1"], 'strictly increasing'),
    "taus not from 0": (["kl", "--taus", "0.1,0.5,1"], 'start at tau = 0'),
    "taus not to 1": (["kl", "--taus", "0,0.5,0.9"], 'end at tau = 1'),
    "NaN in taus": (["kl", "--taus", "0,nan,1"], 'NaN'),
    "T = 0": (["kl", "--steps", "0"], '>= 1'),
    "T < 1 in a ladder": (["rates", "--steps", "0,1,2,3"], '>= 1'),
    "unknown family": (["kl", "--cov", "gamma"], 'unknown covariance family'),
    "unknown family in a list": (["rates", "--cov", "beta,gamma", "--steps", "8,16,32,64"], 'unknown covariance family'),
    "no processes": (["rates", "--jobs", "0"], '--jobs'),
    "sampling-only family": (["kl", "--cov", "lanczos:3"], "pathkl sample --cov lanczos:3"),
    "unknown preset": (["kl", "--ref", "no-such-preset"], 'neither a preset'),
    "unknown schedule": (["kl", "--schedule", "sigmoid"], 'invalid choice'),
    "indices off ddpm-linear": (["kl", "--indices", "0,10,100"], 'ddpm-linear'),
    "indices not increasing": (["kl", "--schedule", "ddpm-linear", "--indices", "0,500,400,1000"], 'increase strictly'),
}


def assert_clean_failure(code, out, err, tmp_path, before, names=""):
    """Exit 2, one line on stderr naming the problem (``names``), nothing else written."""
    assert code == 2
    assert names in err
    assert out == ""
    assert len(err.splitlines()) == 1 and err.endswith("\n") and "error" in err
    assert "Traceback" not in err
    assert {p.name for p in tmp_path.iterdir()} == before  # no output or temporary file left behind


@pytest.mark.parametrize("case", sorted(BAD_REFS))
@pytest.mark.parametrize("command", ["kl", "rates"])
def test_bad_reference_json_exits_2_with_one_line(case, command, capsys, tmp_path):
    text, names = BAD_REFS[case]
    ref = _json_ref(tmp_path, text)
    argv = [command, "--ref", ref] + (["--steps", "8,16,32,64", "--plot", str(tmp_path / "r.pdf")]
                                       if command == "rates" else ["--steps", "10"])
    assert_clean_failure(*run(argv, capsys), tmp_path, {"ref.json"}, names)


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_arguments_exit_2_with_one_line(case, capsys, tmp_path):
    argv, names = BAD_ARGS[case]
    if argv[0] == "rates":
        argv = argv + ["--plot", str(tmp_path / "r.png")]
    assert_clean_failure(*run(argv, capsys), tmp_path, set(), names)


@pytest.mark.parametrize("plot, names", [("rates.jpg", "unsupported file type"), ("rates", "unsupported file type"),
                                         ("missing-folder/rates.png", "does not exist")])
def test_bad_plot_path_exits_2_before_any_work(plot, names, capsys, tmp_path):
    argv = ["rates", "--steps", "8,16,32,64", "--plot", str(tmp_path / plot)]
    assert_clean_failure(*run(argv, capsys), tmp_path, set(), names)


def test_missing_json_file_exits_2(capsys, tmp_path):
    assert_clean_failure(*run(["kl", "--ref", str(tmp_path / "absent.json")], capsys), tmp_path, set(),
                         "neither a preset")


# ---- help ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [[]] + [[name] for name in COMMANDS])
def test_help_exits_0_and_shows_an_example(argv, capsys):
    code, out, err = run(argv + ["--help"], capsys)
    assert (code, err) == (0, "")
    assert "example" in out.lower() and "pathkl " in out


def test_kl_prints_every_part_with_its_error_and_method(capsys, tmp_path):
    """The error contract at the surface: text prints value +- error (or exact) and the method; JSON
    carries terminal_error, steps_error, total_error, method, rtol, met_rtol, equal to the library's."""
    code, out, err = run(["kl", "--ref", "gaussian-2d", "--cov", "diag", "--steps", "20"], capsys)
    assert (code, err) == (0, "") and "(closed form)" in out.splitlines()[0]
    assert all("+-" in line or "exact" in line for line in out.splitlines()[1:4])
    spec = {"kind": "mog", "weights": [0.5, 0.5], "means": [[-2], [2]], "stds": [0.1, 0.3]}
    path = tmp_path / "mog1.json"
    path.write_text(json.dumps(spec))
    code, out, err = run(["kl", "--ref", str(path), "--cov", "full", "--steps", "4", "--rtol", "1e-7", "--json"], capsys)
    doc = json.loads(out)
    expected = path_kl(load_reference(str(path)), VPLinear().grid(4), FAMILIES["full"], rtol=1e-7)
    assert (code, err) == (0, "") and doc["method"] == "quadrature" and doc["met_rtol"] is True
    for key in ("terminal", "steps", "total"):
        assert (doc[key], doc[key + "_error"]) == (getattr(expected, key), getattr(expected, key + "_error"))
    assert abs(doc["steps"] - 0.5403859580468613) <= doc["steps_error"] <= 1e-7 * doc["steps"]


def test_kl_warns_on_stderr_when_rtol_is_not_met(capsys, tmp_path):
    """Monte Carlo cannot reach 1e-6 with a few hundred samples: exit 0, one warning line, and the
    JSON says met_rtol false with the interval's half-width as the error."""
    spec = {"kind": "mog", "weights": [0.3, 0.7], "means": [[-1, 0, 0.5, 0, 0], [1, 0.5, 0, 0, -0.5]], "stds": [0.3, 0.5]}
    path = tmp_path / "mog5.json"
    path.write_text(json.dumps(spec))
    code, out, err = run(["kl", "--ref", str(path), "--cov", "full", "--steps", "4", "--mc-samples", "32",
                          "--mc-inner", "16", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["method"] == "monte carlo" and doc["met_rtol"] is False
    assert len(err.splitlines()) == 1 and "warning" in err and "rtol" in err
    assert doc["total_error"] == pytest.approx(doc["ci95"][1] - doc["total"], rel=1e-12)
