"""Covariance heads (pathkl.heads) on the OCM toy: training time per estimator and the error of each
estimator's diag Cov[x_0 | x_t] against the reference's exact ``posterior_cov_diagonal``.

    python3 benchmarks/bench_heads.py [--steps 2000] [--repeats 2] [--learned] [--curve 20000]

Data: 8192 draws of the 3x3 grid (means {-3, 0, 3}^2, std 0.1, ``mog-ocm-grid-2d``); training chain:
vp-linear, T = 1000 (the OCM paper's toy trains its heads for 50,000 Adam steps at lr 1e-3).

Printed per estimator, with the true score (and with a DSM score network, ``--learned``):
- seconds per 1000 Adam steps (minimum over ``--repeats`` runs of ``--time-steps`` steps; batch 256);
- after ``--steps`` steps, at levels t of the chain: ``C``: relative RMS error of diag C (over 2000
  draws of q_t), ``step``: that of the reverse step's diagonal ``beta~_t + gamma_t^2 diag C`` (the
  OCM paper's Fig. 3 quantity), each without clipping and with ``clip="adpm"`` (Analytic-DPM's bounds);
- ``--curve N``: the OCM head's errors every N/10 steps up to N.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

import pathkl
from pathkl.heads import ESTIMATORS, train_head, true_score
from pathkl.score_net import train_score_network

LEVELS = (1, 10, 50, 100, 200, 300, 600, 1000)


def instances() -> list[str]:
    return [e.replace("probe:M", "probe:4").replace("rademacher:M", "rademacher:8") for e in ESTIMATORS]


class Errors:
    """Relative RMS errors of a head's diag C and of the step diagonal at LEVELS, on fixed draws of q_t."""

    def __init__(self, reference, grid):
        self.reference, self.grid = reference, grid
        self.draws = {t: reference.sample(2000, grid.level(t), generator=torch.Generator().manual_seed(t))
                      for t in LEVELS}

    def __call__(self, head) -> tuple[list[float], list[float]]:
        cov, step = [], []
        for t, x in self.draws.items():
            lv = self.grid.level(t)
            exact = self.reference.posterior_cov_diagonal(x, lv)
            got = head.posterior_cov_diagonal(x, lv)
            gamma2 = self.grid.abar[t - 1] * self.grid.beta[t - 1] ** 2 / self.grid.one_minus_abar[t] ** 2
            sigma = self.grid.beta_tilde[t - 1] + gamma2 * exact
            cov.append(float((got - exact).pow(2).sum(-1).mean().sqrt() / exact.pow(2).sum(-1).mean().sqrt()))
            step.append(float((gamma2 * (got - exact)).pow(2).sum(-1).mean().sqrt() / sigma.pow(2).sum(-1).mean().sqrt()))
        return cov, step


def row(label: str, values: list[float]) -> str:
    return f"  {label:<16}" + " ".join(f"{v:9.2e}" for v in values)


def run(score, label: str, x0, grid, errors: Errors, args) -> None:
    print(f"\n== {label} score; errors after {args.steps} steps; levels t = {LEVELS}")
    for name in instances():
        timed = []
        for repeat in range(args.repeats):
            head = train_head(name, score, x0, grid, steps=args.time_steps, seed=repeat)
            timed.append(head.train_seconds * 1000 / max(args.time_steps, 1))
        head = train_head(name, score, x0, grid, steps=args.steps, seed=0)
        cost = f"{min(timed):.2f} s/1000 steps" if head.network is not None else "training-free"
        print(f"{name} ({cost})")
        for clip in (None, "adpm"):
            cov, step = errors(dataclasses.replace(head, clip=clip))
            print(row(f"C   clip={clip}", cov))
            print(row(f"step clip={clip}", step))


def curve(score, x0, grid, errors: Errors, steps: int) -> None:
    print(f"\n== OCM head (true score): error against Adam steps; levels t = {LEVELS}")

    def report(step, head):
        cov, step_err = errors(head)
        loss = sum(head.losses[-200:]) / len(head.losses[-200:])
        print(f"  {step:6d} steps {head.train_seconds:7.1f} s  loss {loss:8.3g}")
        print(row("C", cov))
        print(row("step", step_err))

    train_head("ocm", score, x0, grid, steps=steps, seed=0, callback=report, every=max(steps // 10, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--time-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--learned", action="store_true", help="also heads on a DSM score network")
    parser.add_argument("--score-steps", type=int, default=4000)
    parser.add_argument("--curve", type=int, default=0, help="OCM error every N/10 steps up to N")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference = pathkl.load_reference("mog-ocm-grid-2d")
    grid = pathkl.get_schedule("vp-linear").grid(1000)
    x0 = reference.sample(8192, generator=torch.Generator().manual_seed(0))
    errors = Errors(reference, grid)
    print(f"{torch.get_num_threads()} thread(s), float64, batch 256, Adam lr 1e-3")
    run(true_score(reference), "true", x0, grid, errors, args)
    if args.learned:
        start = time.perf_counter()
        net = train_score_network(x0, grid, steps=args.score_steps, seed=0)
        print(f"\nDSM score network: {args.score_steps} steps in {time.perf_counter() - start:.1f} s "
              f"({net.train_seconds * 1000 / args.score_steps:.2f} s/1000 steps)")
        run(net, "learned (DSM)", x0, grid, errors, args)
    if args.curve:
        curve(true_score(reference), x0, grid, errors, args.curve)


if __name__ == "__main__":
    main()
