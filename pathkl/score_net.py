"""A score network learned by denoising score matching, and the level-conditioned network it is made of
(docs/learned.md section 5).

Denoising score matching (Vincent 2011, "A connection between score matching and denoising
autoencoders"; the noise-prediction form of Ho et al. 2020, eq. (14)): for
``x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps``,

    min_theta E_{t, x_0, eps} ||eps_theta(x_t, t) - eps||^2,

whose minimiser is ``eps_theta(x) = E[eps | x_t = x] = -sqrt(1 - abar) grad log q_t(x)``, so the learned
score is ``s_theta = -eps_theta / sqrt(1 - abar)`` (the OCM paper's Appendix B.1 convention). Levels are
drawn from a training chain (a :class:`~pathkl.schedules.Grid`, ``t`` uniform on 1..T as in the OCM
paper's eq. (13)), and the network is conditioned on the level's log-SNR ``log(abar / (1 - abar))``
(a continuous input), so it can be evaluated at the levels of any grid.

Everything is float64 (pathkl's convention): on this 2-core CPU a 2 -> 128 -> 128 -> 128 -> 2 network
takes about 2.3 s per 1000 Adam steps at batch 256 (float32 would be some 1.5x faster; the toy does
not need it). ``benchmarks/bench_heads.py`` prints the measured costs.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .arrays import as_tensor
from .errors import InputError
from .schedules import DTYPE, Grid, NoiseLevel

#: A score function ``(x (n, d), level) -> grad log q_t(x)`` (n, d); ``level.abar`` is 0-d (one level
#: for every row, e.g. ``grid.level(t)``) or of shape (n,) (one level per row).
ScoreFn = Callable[[torch.Tensor, NoiseLevel], torch.Tensor]

#: Fourier frequencies of the log-SNR embedding.
_FREQUENCIES = (1.0, 2.0, 4.0)
#: Scale of the log-SNR before it enters the network (a vp-linear chain spans about -10..+9).
_LOGSNR_SCALE = 10.0


def log_snr(level: NoiseLevel, n: int) -> torch.Tensor:
    """``log(abar / (1 - abar))`` per row, shape (n, 1), from a 0-d or per-row (n,) level."""
    value = torch.log(level.abar) - torch.log(level.one_minus_abar)
    return value.to(DTYPE).reshape(-1, 1).expand(n, 1)


def level_features(level: NoiseLevel, n: int) -> torch.Tensor:
    """The network's level input, (n, 1 + 2 len(_FREQUENCIES)): the scaled log-SNR and its sines
    and cosines (a smooth embedding, so the network interpolates between the training levels)."""
    u = log_snr(level, n) / _LOGSNR_SCALE
    angles = u * torch.tensor(_FREQUENCIES, dtype=DTYPE) * torch.pi
    return torch.cat([u, torch.sin(angles), torch.cos(angles)], -1)


class LevelNet(nn.Module):
    """An MLP ``(inputs (n, k), level) -> (n, out)`` conditioned on the noise level through
    :func:`level_features`; SiLU activations, float64."""

    def __init__(self, inputs: int, out: int, *, width: int = 64, depth: int = 3, seed: int = 0):
        super().__init__()
        if min(inputs, out, width, depth) < 1:
            raise InputError(f"a network needs inputs, out, width, depth >= 1, got {inputs}, {out}, {width}, {depth}")
        sizes = [inputs + 1 + 2 * len(_FREQUENCIES), *([width] * depth)]
        layers: list[nn.Module] = []
        # nn.Linear draws its initial weights from the global generator: seed a forked copy of it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for a, b in itertools.pairwise(sizes):
                layers += [nn.Linear(a, b, dtype=DTYPE), nn.SiLU()]
            layers.append(nn.Linear(sizes[-1], out, dtype=DTYPE))
        self.body = nn.Sequential(*layers)

    def forward(self, inputs: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        return self.body(torch.cat([inputs, level_features(level, inputs.shape[0])], -1))


def training_levels(grid: Grid, t: torch.Tensor) -> NoiseLevel:
    """The per-row levels ``x_t`` of steps ``t`` (a 1-D tensor of 0..T) of the training chain."""
    return NoiseLevel(grid.abar[t], grid.one_minus_abar[t])


def noised(x0: torch.Tensor, eps: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
    """``x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps`` with per-row (n,) or 0-d levels."""
    return level.abar.reshape(-1, 1).sqrt() * x0 + level.one_minus_abar.reshape(-1, 1).sqrt() * eps


def checked_samples(samples_x0, what: str = "samples_x0") -> torch.Tensor:
    """Training data as a finite float64 (N, d) tensor."""
    x0 = as_tensor(samples_x0, what).to(DTYPE)
    if x0.ndim != 2 or x0.shape[0] < 2 or not torch.isfinite(x0).all():
        raise InputError(f"{what} must be a finite (N, d) array with N >= 2, got shape {tuple(x0.shape)}")
    return x0


def checked_training(grid, steps: int, lr: float, batch: int) -> None:
    """Refuse a training chain that is not a Grid and non-positive step counts, rates or batches."""
    if not isinstance(grid, Grid):
        raise InputError(f"the training chain must be a pathkl Grid (e.g. get_schedule('vp-linear').grid(1000)), "
                         f"got {type(grid).__name__}")
    if steps < 0 or not lr > 0 or batch < 1:
        raise InputError(f"training needs steps >= 0, lr > 0 and batch >= 1, got {steps}, {lr}, {batch}")


@dataclass
class ScoreNetwork:
    """A trained noise-prediction network as a :data:`ScoreFn`: ``score(x, level) = -eps_theta(x, level)
    / sqrt(1 - abar)`` (module docstring). ``losses``: the DSM loss of every training step."""

    network: LevelNet
    train_seconds: float = 0.0
    steps: int = 0
    losses: list[float] = field(default_factory=list)

    def noise_prediction(self, x: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        """``eps_theta(x, level)`` (n, d)."""
        return self.network(x, level)

    def __call__(self, x: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        return -self.noise_prediction(x, level) / level.one_minus_abar.reshape(-1, 1).sqrt()


def train_score_network(samples_x0, grid: Grid, *, steps: int, lr: float = 1e-3, seed: int = 0,
                        batch: int = 256, width: int = 128, depth: int = 3) -> ScoreNetwork:
    """Fit ``eps_theta`` by denoising score matching (module docstring) on ``samples_x0`` (N, d) over the
    levels of the training chain ``grid`` (t uniform on 1..T, one level per row), ``steps`` Adam steps
    of ``batch`` rows at learning rate ``lr``, seeded."""
    x0_all = checked_samples(samples_x0)
    checked_training(grid, steps, lr, batch)
    generator = torch.Generator().manual_seed(seed)
    net = LevelNet(x0_all.shape[1], x0_all.shape[1], width=width, depth=depth, seed=seed)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    model = ScoreNetwork(net)
    start = time.perf_counter()
    for _ in range(steps):
        t = torch.randint(1, grid.T + 1, (batch,), generator=generator)
        level = training_levels(grid, t)
        x0 = x0_all[torch.randint(0, x0_all.shape[0], (batch,), generator=generator)]
        eps = torch.randn(x0.shape, dtype=DTYPE, generator=generator)
        loss = ((net(noised(x0, eps, level), level) - eps) ** 2).sum(-1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        model.losses.append(float(loss.detach()))
    model.train_seconds, model.steps = time.perf_counter() - start, steps
    net.requires_grad_(False)
    return model
