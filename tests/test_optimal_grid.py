"""Optimal time grids (pathkl.optimal_grid, pathkl.asymptotic_grid) against independent routes:

1. brute force: every K-step subsequence of a few candidates, each grid's KL from pathkl.path_kl on
   the grid itself (not from pair costs), for Gaussians (closed form) and a 1-D mixture (quadrature);
2. the Gaussian pair costs and terminal terms against 40-digit mpmath (tests/mp_reference.py);
3. property: the DP grid is never worse than the uniform or asymptotic grid when the candidates
   contain their levels;
4. the asymptotic grid against the closed-form law for one- and two-eigenvalue Gaussians.
"""

import itertools
import json
import math
from fractions import Fraction

import mpmath as mp
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pathkl.asymptotic_grid import asymptotic_density, asymptotic_grid
from pathkl.errors import InputError
from pathkl.families import FAMILIES
from pathkl.optimal_grid import Candidates, best_grid, choose_grid, pair_costs, shortest_path
from pathkl.pathspace import path_kl
from pathkl.presets import PRESETS, fixed_rotation
from pathkl.references import GaussianReference
from pathkl.schedules import get_schedule, grid_from_taus
from pathkl.testing import gaussian_references

from . import mp_reference as ref

EIGS = [0.05, 0.3, 1.0, 2.5, 6.0]
BASIS = fixed_rotation(5)
REFERENCE = GaussianReference.from_eigenvalues(EIGS, basis=BASIS, mean=[0.3, -1.0, 0.0, 2.0, 0.5])
# The DP sums the same closed-form steps as path_kl on the same levels, in another order (and, for a
# chain, log abar from the chain's running sum instead of the subsequence's): rounding only, each
# step within 64 eps relative (pathkl.rules.closed_form.ROUNDING), so 1e-12 relative.
REL = 1e-12


def _brute_force(reference, pool, family, steps, **kw):
    """min over every K-step subsequence of path_kl(...).total, and its argmin."""
    n = pool.n
    best = (math.inf, None)
    for inner in itertools.combinations(range(1, n), steps - 1):
        positions = (0, *inner, n)
        best = min(best, (path_kl(reference, pool.grid(positions), family, **kw).total, positions))
    return best


@pytest.mark.parametrize("family", ["beta", "analytic", "diag", "full"])
@pytest.mark.parametrize("schedule,n", [("vp-linear", 8), ("cosine", 8), ("ddpm-linear", 24)])
def test_dp_finds_the_brute_force_minimum_gaussian(schedule, n, family):
    """Cosine caps the last step's beta, so the terminal term depends on the last interior level;
    ddpm-linear's candidates are the chain's indices."""
    pool = Candidates.uniform(get_schedule(schedule), n)
    costs = pair_costs(REFERENCE, pool, FAMILIES[family])
    for steps in (1, 2, 3) if schedule == "ddpm-linear" else (1, 2, 3, 4):
        chosen = best_grid(costs, steps)
        minimum, _ = _brute_force(REFERENCE, pool, FAMILIES[family], steps)
        assert chosen.value == pytest.approx(minimum, rel=REL)
        assert path_kl(REFERENCE, pool.grid(chosen.positions), FAMILIES[family]).total == pytest.approx(minimum, rel=REL)
        assert 0 <= chosen.regret_bound <= 2 * REL * minimum  # Gaussian errors are rounding bounds


@pytest.mark.parametrize("family", ["analytic", "full"])
def test_dp_finds_the_brute_force_minimum_mixture(family):
    """Engine pair costs with quadrature errors: the chosen grid's exact KL is within the DP's regret
    bound (plus the KLs' own errors) of the brute-force minimum, and the DP's value within its
    error of the chosen grid's KL."""
    reference = PRESETS["mog-1d"][1]()
    pool = Candidates.uniform(get_schedule("vp-linear"), 5)
    costs = pair_costs(reference, pool, FAMILIES[family], rtol=1e-8)
    for steps in (2, 3):
        chosen = best_grid(costs, steps)
        kl = path_kl(reference, pool.grid(chosen.positions), FAMILIES[family], rtol=1e-8)
        minimum, argmin = _brute_force(reference, pool, FAMILIES[family], steps, rtol=1e-8)
        best_error = path_kl(reference, pool.grid(argmin), FAMILIES[family], rtol=1e-8).total_error
        assert abs(chosen.value - kl.total) <= chosen.error + kl.total_error
        assert kl.total <= minimum + chosen.regret_bound + kl.total_error + best_error
        assert chosen.lower <= minimum + best_error


@pytest.mark.parametrize("family", ["analytic", "diag"])
def test_dp_over_the_quadratic_lattice_finds_the_brute_force_minimum(family):
    """``spacing="quadratic"``: the levels are exactly ``(k / n)^2`` (fractions, exact in float64 for
    n = 8), and the DP over them picks the brute-force minimum of path_kl on every subsequence."""
    schedule, n = get_schedule("vp-linear"), 8
    pool = Candidates.uniform(schedule, n, spacing="quadratic")
    assert pool.taus.tolist() == [float(Fraction(k, n) ** 2) for k in range(n + 1)]
    costs = pair_costs(REFERENCE, pool, FAMILIES[family])
    for steps in (2, 3, 4):
        minimum, argmin = _brute_force(REFERENCE, pool, FAMILIES[family], steps)
        chosen = best_grid(costs, steps)
        assert chosen.value == pytest.approx(minimum, rel=REL) and chosen.positions == argmin


def test_candidate_spacing_is_checked():
    with pytest.raises(InputError, match="unknown candidate spacing"):
        Candidates.uniform(get_schedule("vp-linear"), 8, spacing="cubic")
    with pytest.raises(InputError, match="spacing is uniform"):
        Candidates.uniform(get_schedule("ddpm-linear"), 50, spacing="quadratic")


def test_shortest_path_against_enumeration_on_random_costs():
    """The DP itself on random cost matrices (no KL at all), every subsequence enumerated."""
    rng = np.random.default_rng(0)
    n = 9
    cost = np.triu(rng.exponential(size=(n + 1, n + 1)), 1)
    cost[np.tril_indices(n + 1)] = np.inf
    cost[2, 5] = np.inf  # a forbidden step
    for steps in range(1, n + 1):
        sums = [(sum(cost[a, b] for a, b in itertools.pairwise((0, *c, n))), (0, *c, n))
                for c in itertools.combinations(range(1, n), steps - 1)]
        positions, value = shortest_path(cost, steps)
        assert value == pytest.approx(min(sums)[0], rel=1e-14)
        assert sum(cost[a, b] for a, b in itertools.pairwise(positions)) == pytest.approx(value, rel=1e-14)


def _mp_pair(schedule, s, t):
    """40-digit alphas of the chain 0 -> s -> t (cosine: the last step capped, as pathkl has it)."""
    taus = [mp.mpf(0)] + ([mp.mpf(s)] if s > 0 else []) + [mp.mpf(t)]
    return ref.alphas(schedule, taus)


@pytest.mark.parametrize("schedule", ["vp-linear", "cosine"])
@pytest.mark.parametrize("family", ["beta", "beta_tilde", "analytic", "diag"])
def test_gaussian_pair_costs_and_terminals_match_mpmath(schedule, family):
    pool = Candidates.from_taus(get_schedule(schedule), [0.0, 0.05, 0.3, 0.8, 1.0])
    costs = pair_costs(REFERENCE, pool, FAMILIES[family])
    taus = pool.taus.tolist()
    for i, j in itertools.combinations(range(pool.n + 1), 2):
        alpha = _mp_pair(schedule, taus[i], taus[j])
        expected = ref.step_kls(EIGS, family, alpha, basis=BASIS.tolist(), steps=[len(alpha)])[len(alpha)]
        if mp.isinf(expected):
            assert math.isinf(costs.cost[i, j])
            continue
        assert costs.cost[i, j] == pytest.approx(float(expected), rel=1e-10)  # float64 taus -> 1e-10
        assert abs(costs.cost[i, j] - float(expected)) <= costs.error[i, j] + 1e-10 * float(expected)
        if j == pool.n:
            terminal = ref.terminal_kl(EIGS, REFERENCE.mean.tolist(), ref.abars(alpha)[-1])
            assert costs.terminal[i] == pytest.approx(float(terminal), rel=1e-10)


def test_pair_cost_is_the_step_of_a_two_level_grid():
    """c(0, 1) is the only step of the one-step grid; its terminal the grid's terminal."""
    schedule = get_schedule("vp-linear")
    pool = Candidates.uniform(schedule, 4)
    for name in ("beta", "analytic", "diag"):
        costs = pair_costs(REFERENCE, pool, FAMILIES[name])
        one = path_kl(REFERENCE, schedule.grid(1), FAMILIES[name])
        assert costs.cost[0, 4] == pytest.approx(one.steps, rel=REL)
        assert costs.terminal[0] == pytest.approx(one.terminal, rel=REL)


@settings(max_examples=12, deadline=None)
@given(reference=gaussian_references(dims=(1, 4)), steps=st.integers(1, 5),
       family=st.sampled_from(["beta", "analytic", "diag"]), schedule=st.sampled_from(["vp-linear", "cosine"]),
       extra=st.lists(st.floats(0.01, 0.99), max_size=4))
def test_dp_never_worse_than_uniform_or_asymptotic(reference, steps, family, schedule, extra):
    sched, fam = get_schedule(schedule), FAMILIES[family]
    assume(fam.order(reference) == 1)  # e.g. in 1-D analytic and diag are exact (no leading term)
    try:
        density = asymptotic_density(reference, sched, fam, nodes=32)
        asymptotic = asymptotic_grid(density, sched, steps)[0]
    except InputError:  # a vanishing leading term (e.g. a spectrum of ones)
        assume(False)
    uniform = sched.grid(steps)
    for grid in (uniform, asymptotic):  # the DP excludes grids with a capped step before the last
        assume(not (grid.log_alpha[:-1] <= sched.min_log_alpha).any())
    pool = Candidates.from_taus(sched, torch.cat([uniform.taus, asymptotic.taus, torch.tensor(extra)]))
    try:
        chosen = best_grid(pair_costs(reference, pool, fam), steps)
        dp = path_kl(reference, pool.grid(chosen.positions), fam).total
        totals = [path_kl(reference, grid, fam).total for grid in (uniform, asymptotic)]
    except InputError as error:  # diag's documented refusal of spectra float64 cannot resolve
        if "cannot be evaluated to rounding accuracy" not in str(error):
            raise
        assume(False)
    for total in totals:
        assert dp <= total * (1 + REL)


def _law_taus(log_target):
    """vp-linear taus with log abar = log_target (abar = exp(-0.1 tau - 9.95 tau^2))."""
    return (-0.1 + np.sqrt(0.01 + 4 * 9.95 * -log_target)) / (2 * 9.95)


@pytest.mark.parametrize("case", ["beta-1d", "analytic-2eig"])
def test_asymptotic_grid_matches_the_gaussian_law(case):
    """Derived law (docs/grids.md): for N(0, lambda) and ``beta``, sqrt(f) = beta |g| = |d log nu / d tau|
    (nu = Var x_tau), so the levels are uniform in log nu; for two eigenvalues and ``analytic``,
    sqrt(f) = beta |g_1 - g_2| / sqrt 2 = |d log(nu_1 / nu_2) / d tau| / sqrt 2: uniform in log(nu_1/nu_2).
    The CDF (midpoint rule, linear inversion) is second order in the cell width h = 1/nodes in
    u = sqrt(tau): about h^2 max|CDF''| / (8 min CDF') ~ 1e-5 in tau at 256 cells (measured 5e-5 worst),
    16x less at 1024."""
    lam = np.array([0.2]) if case == "beta-1d" else np.array([0.2, 3.0])
    reference = GaussianReference.from_eigenvalues(lam.tolist())
    schedule, family = get_schedule("vp-linear"), FAMILIES[case.split("-")[0]]
    steps = 10
    abar1 = math.exp(-0.1 - 9.95)

    def log_nu(abar):
        return np.log(1 - abar + abar * lam)

    def stat(abar):
        v = log_nu(abar)
        return v[0] if lam.size == 1 else v[0] - v[1]

    targets = stat(1.0) + np.arange(steps + 1) / steps * (stat(abar1) - stat(1.0))
    # invert stat(abar) = target for abar in (abar1, 1] by bisection in log abar (stat is monotone)
    expected = []
    for target in targets[1:-1]:
        lo, hi = math.log(abar1), 0.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if (stat(math.exp(mid)) - target) * (stat(1.0) - target) > 0:
                hi = mid
            else:
                lo = mid
        expected.append(_law_taus(0.5 * (lo + hi)))
    for nodes, tolerance in ((256, 1e-4), (1024, 1e-5)):
        taus = asymptotic_density(reference, schedule, family, nodes=nodes).taus(steps).numpy()
        assert np.abs(taus[1:-1] - np.array(expected)).max() < tolerance


def test_asymptotic_refuses_a_vanishing_leading_term():
    with pytest.raises(InputError, match="vanishing"):
        asymptotic_density(REFERENCE, get_schedule("vp-linear"), FAMILIES["full"], nodes=8)
    with pytest.raises(InputError, match="no vanishing rate"):
        asymptotic_density(REFERENCE, get_schedule("vp-linear"), FAMILIES["beta_tilde"], nodes=8)


def test_choose_grid_reports_the_grid_it_chose():
    """The front function: the KL is path_kl of the printed taus; the ratio against the uniform grid."""
    schedule = get_schedule("vp-linear")
    for method in ("dp", "asymptotic"):
        result = choose_grid(REFERENCE, schedule, FAMILIES["analytic"], 6, method=method, candidates=60)
        out = result.as_dict()
        again = path_kl(REFERENCE, grid_from_taus(schedule, out["taus"]), FAMILIES["analytic"])
        assert out["kl"] == again.total and out["kl_error"] == again.total_error
        assert out["uniform_kl"] == path_kl(REFERENCE, schedule.grid(6), FAMILIES["analytic"]).total
        assert out["ratio"] == out["kl"] / out["uniform_kl"] < 1


def test_bad_grid_requests_are_input_errors():
    schedule = get_schedule("vp-linear")
    with pytest.raises(InputError, match="candidate steps"):
        choose_grid(REFERENCE, schedule, FAMILIES["analytic"], 20, candidates=10)
    with pytest.raises(InputError, match="infinite"):
        choose_grid(REFERENCE, schedule, FAMILIES["beta_tilde"], 3, candidates=10)
    with pytest.raises(InputError, match="include 0 and 1"):
        Candidates.from_taus(schedule, [0.0, 0.5])
    with pytest.raises(InputError, match="grid method"):
        choose_grid(REFERENCE, schedule, FAMILIES["analytic"], 3, method="greedy")


# ---- pathkl grid ---------------------------------------------------------------------------------

def test_cli_grid_feeds_pathkl_kl_and_matches_the_library(capsys, tmp_path):
    from tests.test_cli import run

    saved = tmp_path / "grid.txt"
    argv = ["grid", "--ref", "gaussian-5d", "--cov", "diag", "--steps", "5", "--candidates", "40"]
    code, out, err = run(argv + ["--json", "--save", str(saved)], capsys)
    assert (code, err) == (0, "")
    summary = json.loads(out)
    expected = choose_grid(PRESETS["gaussian-5d"][1](), get_schedule("vp-linear"), FAMILIES["diag"], 5,
                           candidates=40).as_dict()
    for key in ("taus", "kl", "kl_error", "uniform_kl", "uniform_kl_error", "ratio", "regret_bound"):
        assert summary[key] == expected[key]
    code, out, err = run(["kl", "--ref", "gaussian-5d", "--cov", "diag", "--taus", f"@{saved}", "--json"], capsys)
    assert (code, err) == (0, "") and json.loads(out)["total"] == summary["kl"]
    code, out, err = run(argv, capsys)
    assert code == 0 and "ratio" in out and ", ".join(repr(t) for t in summary["taus"]) in out


def test_cli_grid_prints_chain_indices_for_ddpm_linear(capsys, tmp_path):
    from tests.test_cli import run

    saved = tmp_path / "idx.txt"
    code, out, err = run(["grid", "--schedule", "ddpm-linear", "--cov", "beta", "--steps", "4", "--candidates", "50",
                          "--json", "--save", str(saved)], capsys)
    summary = json.loads(out)
    indices = summary["indices"]
    assert (code, err) == (0, "") and indices[0] == 0 and indices[-1] == 50 and len(indices) == 5
    code, out, err = run(["kl", "--schedule", "ddpm-linear", "--cov", "beta", "--indices", f"@{saved}", "--json"], capsys)
    assert code == 0 and json.loads(out)["total"] == summary["kl"]


@pytest.mark.parametrize("extra,message", [
    (["--steps", "20", "--candidates", "10"], "candidate steps"),
    (["--cov", "beta_tilde", "--candidates", "10"], "infinite"),
    (["--cov", "full", "--method", "asymptotic"], "vanishing"),
    (["--save", "grid.csv"], "unsupported file type"),
    (["--schedule", "ddpm-linear", "--spacing", "quadratic"], "spacing is uniform"),
])
def test_cli_grid_bad_input_is_one_line(extra, message, capsys, tmp_path, monkeypatch):
    from tests.test_cli import run

    monkeypatch.chdir(tmp_path)
    code, out, err = run(["grid", "--steps", "3", *extra], capsys)
    assert (code, out) == (2, "") and err.count("\n") == 1 and err.startswith("pathkl grid: error:")
    assert message in err and list(tmp_path.iterdir()) == []
