"""pathkl.ocm: the OCM theorems as properties of pathkl's own loss code, by exact enumeration of all
Rademacher probes and torch autograd (OCM paper, arXiv 2406.10808, Theorem 2 and eqs. (10)-(11))."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pathkl import heads, load_reference, ocm
from pathkl.errors import InputError
from pathkl.heads import Batch, parse_estimator, train_head, true_score
from pathkl.ocm import ocm_loss, probe_products, probe_regression_loss, rademacher_probes
from pathkl.references import MixtureReference
from pathkl.schedules import NoiseLevel, get_schedule
from pathkl.testing import spd_matrices

CI = settings.get_profile("ci")
DTYPE = torch.float64


def all_probes(d: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=d)), dtype=DTYPE)


def products(hess: torch.Tensor):
    return lambda v: v @ hess  # H symmetric


def oracle_gradient(h: torch.Tensor, hess: torch.Tensor) -> torch.Tensor:
    """Autograd of the oracle loss ``||h - diag H||^2`` (one point)."""
    h = h.clone().requires_grad_(True)
    ((h - torch.diagonal(hess)) ** 2).sum().backward()
    return h.grad


def expected_gradient(loss, h: torch.Tensor, hess: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over every tuple of m probes (all 2^(d m)) of ``loss`` and of its autograd gradient in h."""
    h = h.clone()[None].requires_grad_(True)
    tuples = list(itertools.product(all_probes(h.shape[1]), repeat=m))
    mean = sum(loss(h, products(hess), torch.stack(tup)[:, None, :]) for tup in tuples) / len(tuples)
    (grad,) = torch.autograd.grad(mean, h)
    return mean.detach(), grad[0]


def offdiagonal_sq(hess: torch.Tensor) -> float:
    return float((hess**2).sum() - (torch.diagonal(hess) ** 2).sum())


@st.composite
def instances(draw, max_dim: int = 4):
    d = draw(st.integers(1, max_dim))
    hess = draw(spd_matrices(d, low=0.1, high=10.0))
    sign = draw(st.sampled_from([1.0, -1.0]))  # Hessians of log q are often negative definite
    h = torch.tensor(draw(st.lists(st.floats(-5, 5), min_size=d, max_size=d)), dtype=DTYPE)
    return sign * hess, h


@given(instances())
@CI
def test_theorem2_ocm_gradient_is_the_oracle_gradient_in_expectation(case):
    hess, h = case
    mean, grad = expected_gradient(ocm_loss, h, hess, 1)
    tol = 1e-12 * (1 + float(hess.abs().max()) ** 2 + float(h.abs().max()) ** 2)
    assert torch.allclose(grad, oracle_gradient(h, hess), rtol=0, atol=tol)
    # ... and the loss exceeds the oracle loss by the probe variance sum_{i != j} H_ij^2, free of h.
    want = float(((h - torch.diagonal(hess)) ** 2).sum()) + offdiagonal_sq(hess)
    assert float(mean) == pytest.approx(want, rel=1e-12, abs=tol)


@given(instances(max_dim=3), st.integers(1, 3))
@CI
def test_probe_regression_redrawn_probes_is_unbiased(case, m):
    """Eq. (10) with probes redrawn per x: minimiser diag H for every M, constant (1/M) sum H_ij^2."""
    hess, h = case
    if hess.shape[0] * m > 8:
        m = 8 // hess.shape[0]
    mean, grad = expected_gradient(probe_regression_loss, h, hess, m)
    tol = 1e-12 * (1 + float(hess.abs().max()) ** 2 + float(h.abs().max()) ** 2)
    assert torch.allclose(grad, oracle_gradient(h, hess), rtol=0, atol=tol)
    want = float(((h - torch.diagonal(hess)) ** 2).sum()) + offdiagonal_sq(hess) / m
    assert float(mean) == pytest.approx(want, rel=1e-12, abs=tol)


@given(instances(), st.integers(1, 6), st.integers(0, 2**31 - 1))
@CI
def test_eq10_and_eq11_have_the_same_gradient_on_the_same_probes(case, m, seed):
    """Eq. (11) over M probes is eq. (10) plus the probes' spread (1/M) sum_m ||p_m - mean p||^2,
    free of h: autograd of both losses agree draw by draw."""
    hess, h = case
    probes = rademacher_probes(1, h.numel(), m, generator=torch.Generator().manual_seed(seed))
    grads = []
    for loss in (ocm_loss, probe_regression_loss):
        x = h.clone()[None].requires_grad_(True)
        loss(x, products(hess), probes).backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-12, atol=1e-12 * (1 + float(hess.abs().max())))


@pytest.mark.parametrize("m", [1, 2, 3])
def test_fixed_probes_are_minimised_by_the_probe_estimate(m):
    """Probes held fixed per x (the other reading): both losses are minimised by that x's probe
    estimate (gradient 0 there, by autograd), whose mean over all probe tuples is diag H and whose
    mean squared error is the variance (1/M) sum_{j != i} H_ij^2 per coordinate: no bias, a variance
    that no choice between eq. (10) and eq. (11) removes."""
    hess = torch.tensor([[2.0, 0.5, -0.3], [0.5, 1.0, 0.2], [-0.3, 0.2, 3.0]], dtype=DTYPE)
    estimates = []
    for tup in itertools.product(all_probes(3), repeat=m):
        probes = torch.stack(tup)[:, None, :]
        estimate = probe_products(products(hess), probes).mean(0)
        for loss in (ocm_loss, probe_regression_loss):
            x = estimate.clone().requires_grad_(True)
            loss(x, products(hess), probes).backward()
            assert x.grad.abs().max() <= 1e-14
        estimates.append(estimate[0])
    estimates = torch.stack(estimates)
    diag = torch.diagonal(hess)
    assert torch.allclose(estimates.mean(0), diag, atol=1e-14)
    variance = ((hess**2).sum(1) - diag**2) / m
    assert torch.allclose(((estimates - diag) ** 2).mean(0), variance, atol=1e-13)


def test_ocm_loss_by_hand_and_on_a_batch():
    """One point, one probe, by hand; and a batch is the mean over its points."""
    hess = torch.tensor([[1.0, 2.0], [2.0, -3.0]], dtype=DTYPE)
    v = torch.tensor([[[1.0, -1.0]]], dtype=DTYPE)
    h = torch.tensor([[0.5, 0.25]], dtype=DTYPE)
    # v * (H v) = (1 * (1 - 2), -1 * (2 + 3)) = (-1, -5)
    assert float(ocm_loss(h, products(hess), v)) == pytest.approx(1.5**2 + 5.25**2, rel=1e-15)
    probes = rademacher_probes(5, 2, 3, generator=torch.Generator().manual_seed(0))
    hs = torch.randn(5, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    each = [ocm_loss(hs[i : i + 1], products(hess), probes[:, i : i + 1]) for i in range(5)]
    assert float(ocm_loss(hs, products(hess), probes)) == pytest.approx(float(sum(each) / 5), rel=1e-14)
    assert set(probes.unique().tolist()) == {-1.0, 1.0}


def test_bad_probe_shapes_are_refused():
    h = torch.zeros(2, 3, dtype=DTYPE)
    with pytest.raises(InputError, match="probes must have shape"):
        ocm_loss(h, products(torch.eye(3, dtype=DTYPE)), torch.ones(2, 3, dtype=DTYPE))
    with pytest.raises(InputError, match="n, d, m >= 1"):
        rademacher_probes(0, 3)


# ---- eq. (10) both ways: symbolically, and on the losses pathkl.heads trains with ----------------


def _symbolic_fixed_probe_minimiser(d: int, m: int):
    """Sympy: symbolic symmetric H and head h, one fixed tuple of m probes; the minimiser of eq. (10)
    and of eq. (11) on that tuple, and the tuple's probe estimate ``(1/m) sum v * (H v)``."""
    sp = pytest.importorskip("sympy")  # a core dependency; skip cleanly where it is absent
    h = sp.Matrix(sp.symbols(f"h0:{d}", real=True))
    H = sp.Matrix(d, d, lambda i, j: sp.Symbol(f"H{min(i, j)}{max(i, j)}", real=True))

    def sq(v):
        return sum(e**2 for e in v)

    results = []
    for tup in itertools.product(itertools.product((-1, 1), repeat=d), repeat=m):
        vs = [sp.Matrix(v) for v in tup]
        probes = [v.multiply_elementwise(H * v) for v in vs]
        estimate = sum(probes, sp.zeros(d, 1)) / m
        eq10 = sq(h - estimate)
        eq11 = sum(sq(h - p) for p in probes) / m
        argmins = [sp.solve([sp.diff(loss, hi) for hi in h], list(h), dict=True) for loss in (eq10, eq11)]
        results.append((argmins, estimate))
    return sp, h, H, results


@pytest.mark.parametrize("d, m", [(2, 1), (2, 2), (3, 1)])
def test_fixed_probes_minimiser_is_the_probe_estimate_symbolically(d, m):
    """The other reading of eq. (10) (probes drawn once per point and kept): for every tuple, eq. (10)
    and eq. (11) are both minimised by that tuple's probe estimate (sympy solve, symbolic H), whose mean
    over the tuples is diag H and whose mean squared error is ``(1/M) sum_{j != i} H_ij^2`` per
    coordinate (symbolic identity): what the paper calls the bias of small M is this variance, and it
    is the same for eq. (10) and eq. (11). With probes redrawn, both are minimised by diag H (claim
    ``ocm.eq10-probe-regression``, symbolic in proofs_check)."""
    sp, h, H, results = _symbolic_fixed_probe_minimiser(d, m)
    for argmins, estimate in results:
        for solution in argmins:
            assert len(solution) == 1
            assert all(sp.expand(solution[0][h[i]] - estimate[i]) == 0 for i in range(d))
    estimates = [est for _, est in results]
    mean = sum(estimates, sp.zeros(d, 1)) / len(estimates)
    assert all(sp.expand(mean[i] - H[i, i]) == 0 for i in range(d))
    for i in range(d):
        mse = sum((est[i] - H[i, i]) ** 2 for est in estimates) / len(estimates)
        want = sum(H[i, j] ** 2 for j in range(d) if j != i) / m
        assert sp.expand(mse - want) == 0


def _heads_probe_batch(hess: torch.Tensor, probes: torch.Tensor):
    """A pathkl.heads training batch at one x repeated per probe tuple, whose products are ``v -> H v``
    (a level with abar = 1/2: the heads' operator ``(I + s H)/a`` is then ``2 I + H``)."""
    n = probes.shape[1]
    half = torch.full((n,), 0.5, dtype=DTYPE)
    level = NoiseLevel(half, half)
    x = torch.zeros(n, hess.shape[0], dtype=DTYPE)
    return Batch(x, x, x, level, x, lambda v: (v + 0.5 * v @ hess) / 0.5, probes)


@pytest.mark.parametrize("name, m", [("probe:2", 2), ("probe:3", 3), ("ocm", 1)])
def test_the_training_loss_both_ways(name, m):
    """The loss pathkl.heads trains ``probe:M`` (eq. (10)) and ``ocm`` (eq. (11)) with, on the operator
    ``A = (I + s H)/a``: (fixed) on one tuple of probes its minimiser is that tuple's probe estimate
    (autograd gradient 0 there); (redrawn) its mean over all 2^(d M) tuples has the oracle gradient
    ``2 (y - diag A)`` (autograd), so the minimiser is diag A, i.e. h = diag H."""
    spec, _ = parse_estimator(name)
    hess = torch.tensor([[-2.0, 0.7, 0.3], [0.7, -1.0, -0.4], [0.3, -0.4, -3.0]], dtype=DTYPE)
    op = 2 * torch.eye(3, dtype=DTYPE) + hess
    tuples = torch.stack([torch.stack(t) for t in itertools.product(all_probes(3), repeat=m)], 1)  # (m, T, d)
    for k in (0, 5, tuples.shape[1] - 1):  # fixed: one tuple
        probes = tuples[:, k : k + 1]
        estimate = (probes * (probes @ op)).mean(0)
        y = estimate.clone().requires_grad_(True)
        spec.loss(y, _heads_probe_batch(hess, probes)).backward()
        assert y.grad.abs().max() <= 1e-13
    y0 = torch.tensor([[0.3, -1.2, 2.0]], dtype=DTYPE)
    y = y0.expand(tuples.shape[1], 3).clone().requires_grad_(True)
    spec.loss(y, _heads_probe_batch(hess, tuples)).backward()  # mean over tuples = expectation
    assert torch.allclose(y.grad.sum(0), 2 * (y0[0] - torch.diagonal(op)), rtol=0, atol=1e-13)


def test_training_calls_pathkl_ocm_losses(monkeypatch):
    """pathkl.heads trains with pathkl.ocm's own functions (the names it imports are those objects), and
    a training run goes through them."""
    assert heads.ocm_loss is ocm.ocm_loss and heads.probe_regression_loss is ocm.probe_regression_loss
    calls = []
    for name in ("ocm_loss", "probe_regression_loss"):
        original = getattr(ocm, name)
        monkeypatch.setattr(heads, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    reference = load_reference("mog-1d")
    x0 = reference.sample(64, generator=torch.Generator().manual_seed(0))
    grid = get_schedule("vp-linear").grid(20)
    for estimator in ("ocm", "probe:2"):
        heads.train_head(estimator, heads.true_score(reference), x0, grid, steps=3, batch=16)
    assert calls == ["ocm_loss"] * 3 + ["probe_regression_loss"] * 3


def test_probe_regression_trained_with_redrawn_probes_reaches_diag_h():
    """End to end: ``probe:1`` (eq. (10) with M = 1, probes redrawn every step) trained on the true
    score of a correlated Gaussian (noisy probes) converges to the exact diagonal, not to a biased
    value: its error is below half the spread of a single point's probe estimate, the RMS error of the
    fixed-probe minimiser (measured after 300 steps, seeds 0-2: 0.03-0.37 of that spread, 2-7% of diag C)."""
    reference = MixtureReference.from_components([1.0], [[1.0, -1.0]], covs=[[[1.0, 0.8], [0.8, 1.0]]])
    grid = get_schedule("vp-linear").grid(100)
    x0 = reference.sample(2048, generator=torch.Generator().manual_seed(0))
    head = train_head("probe:1", true_score(reference), x0, grid, steps=300, seed=0)
    for t in (10, 40, 70):
        lv = grid.level(t)
        x = reference.sample(400, lv, generator=torch.Generator().manual_seed(t))
        c = reference.posterior_cov_diagonal(x, lv)
        cov = reference.posterior_cov(x[:1], lv)[0]
        spread = ((cov**2).sum(1) - torch.diagonal(cov) ** 2).sqrt()  # sd of one probe's estimate of C
        err = (head.posterior_cov_diagonal(x, lv) - c).pow(2).mean(0).sqrt()
        assert (err < spread / 2).all(), (t, err, spread)
