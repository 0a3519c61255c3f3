"""Noise schedules and time grids (docs/theory.md section 1).

A schedule gives ``log abar(tau)`` for ``tau in [0, 1]``; a :class:`Grid` fixes the steps
``0 = tau_0 < ... < tau_T = 1`` and holds every per-step quantity in float64. Each step's
``log alpha_t = log abar_t - log abar_{t-1}`` is computed by a formula that never subtracts the two
logarithms, and ``beta_t = -expm1(log alpha_t)``, so that the O(1/T) quantities keep full relative
precision up to T = 10^6 and beyond.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError

DTYPE = torch.float64


@dataclass(frozen=True)
class NoiseLevel:
    """One noise level: ``x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps``.

    Both numbers are kept because ``1 - abar`` cannot be recovered from ``abar`` to full relative
    precision when ``abar`` is close to 1.
    """

    abar: torch.Tensor
    one_minus_abar: torch.Tensor

    @staticmethod
    def from_log_abar(log_abar: torch.Tensor | float) -> NoiseLevel:
        log_abar = torch.as_tensor(log_abar, dtype=DTYPE)
        return NoiseLevel(torch.exp(log_abar), torch.expm1(log_abar).abs())


class Schedule:
    """A noise schedule: ``abar(tau)`` strictly decreasing with ``abar(0) = 1``."""

    name: str

    def log_abar(self, tau: torch.Tensor) -> torch.Tensor:
        """``log abar(tau)``."""
        raise NotImplementedError

    #: Floor on each step's ``log alpha_t`` (a cap on ``beta_t``); ``-inf`` means no cap.
    min_log_alpha: float = -math.inf

    def log_alpha(self, tau_prev: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """``log abar(tau) - log abar(tau_prev)`` without cancellation (before any cap)."""
        raise NotImplementedError

    def beta_rate(self, tau: torch.Tensor) -> torch.Tensor:
        """Continuous rate ``beta(tau) = -d log abar / d tau``, so that ``beta_t ~ beta(tau_t) / T``."""
        raise NotImplementedError

    def level(self, tau: float | torch.Tensor) -> NoiseLevel:
        """The noise level at ``tau``."""
        return NoiseLevel.from_log_abar(self.log_abar(torch.as_tensor(tau, dtype=DTYPE)))

    def grid(self, steps: int) -> Grid:
        """The uniform grid with ``steps`` steps."""
        return grid_from_taus(self, torch.linspace(0.0, 1.0, check_steps(steps) + 1, dtype=DTYPE))


@dataclass(frozen=True)
class VPLinear(Schedule):
    """Variance-preserving linear schedule (Song et al.):
    ``beta(tau) = beta_min + tau (beta_max - beta_min)``,
    ``log abar(tau) = -beta_min tau - (beta_max - beta_min) tau^2 / 2``."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    name: str = "vp-linear"

    def log_abar(self, tau):
        return -(self.beta_min * tau + 0.5 * (self.beta_max - self.beta_min) * tau * tau)

    def log_alpha(self, tau_prev, tau):
        # tau^2 - tau_prev^2 = (tau - tau_prev)(tau + tau_prev): no cancellation.
        mid_rate = self.beta_min + 0.5 * (self.beta_max - self.beta_min) * (tau + tau_prev)
        return -(tau - tau_prev) * mid_rate

    def beta_rate(self, tau):
        return self.beta_min + (self.beta_max - self.beta_min) * tau


@dataclass(frozen=True)
class Cosine(Schedule):
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): ``f(tau) = cos^2(((tau + s)/(1 + s)) pi/2)``,
    ``abar = f / f(0)``, with every per-step ``beta_t`` capped at ``max_beta`` (their 0.999)."""

    s: float = 0.008
    max_beta: float = 0.999
    name: str = "cosine"

    def _angle(self, tau):
        return (tau + self.s) / (1.0 + self.s) * (math.pi / 2)

    def _complement(self, tau):
        """``pi/2 - angle(tau) = (1 - tau) / (1 + s) * pi/2``, accurate where the angle nears pi/2."""
        return (1.0 - tau) / (1.0 + self.s) * (math.pi / 2)

    def log_abar(self, tau):
        # cos(angle) = sin(complement): a plain log where abar is not close to 1, a ratio form near 0.
        direct = 2.0 * (torch.log(torch.sin(self._complement(tau))) - math.log(math.cos(self._angle(0.0))))
        return torch.where(tau < 0.5, self.log_alpha(torch.zeros_like(tau), tau), direct)

    def log_alpha(self, tau_prev, tau):
        # h = angle(tau) - angle(tau_prev), formed from tau - tau_prev. With b = angle(tau_prev):
        #   cos(b + h) / cos(b) = 1 - 2 sin^2(h/2) - tan(b) sin(h)              (b away from pi/2)
        # and with c = complement(tau): cos(b + h) / cos(b) = 1 / (1 - 2 sin^2(h/2) + cot(c) sin(h)),
        # whose tangent is accurate near pi/2 because 1 - tau is exact there.
        h = (tau - tau_prev) / (1.0 + self.s) * (math.pi / 2)
        shrink = -2.0 * torch.sin(h / 2) ** 2
        near_zero = torch.log1p((shrink - torch.tan(self._angle(tau_prev)) * torch.sin(h)).clamp(min=-1.0))
        c = self._complement(tau)
        near_one = -torch.log1p(shrink + torch.sin(h) * torch.cos(c) / torch.sin(c))
        return 2.0 * torch.where(tau_prev < 0.5, near_zero, near_one)

    def beta_rate(self, tau):
        return math.pi / (1.0 + self.s) / torch.tan(self._complement(tau))

    @property
    def min_log_alpha(self) -> float:
        return math.log1p(-self.max_beta)


@dataclass(frozen=True)
class DDPMLinear(Schedule):
    """Discrete linear schedule of Ho et al. (2020): ``beta_n = linspace(1e-4, 0.02, N) * 1000 / N``.

    ``steps`` picks the chain length N; a grid may also be a subsequence of the chain
    (:func:`grid_from_chain`). Its continuum limit is :class:`VPLinear` with the default
    ``beta_min = 0.1``, ``beta_max = 20``, which is what the leading-constant integrals use.
    """

    name: str = "ddpm-linear"

    @staticmethod
    def chain_betas(length: int) -> torch.Tensor:
        """``beta_n``, n = 1..N, for a chain of length N (each must be below 1: N >= 21)."""
        if length <= 20:
            raise InputError(f"ddpm-linear needs at least 21 steps (beta_N = 20/N must be < 1), got {length}")
        return torch.linspace(1e-4, 0.02, length, dtype=DTYPE) * (1000.0 / length)

    def continuum(self) -> VPLinear:
        return VPLinear()

    def log_abar(self, tau):
        return self.continuum().log_abar(tau)

    def log_alpha(self, tau_prev, tau):
        return self.continuum().log_alpha(tau_prev, tau)

    def beta_rate(self, tau):
        return self.continuum().beta_rate(tau)

    def grid(self, steps: int) -> Grid:
        steps = check_steps(steps)
        return grid_from_chain(self, steps, np.arange(steps + 1))


SCHEDULES: dict[str, Schedule] = {s.name: s for s in (VPLinear(), Cosine(), DDPMLinear())}


def get_schedule(name: str) -> Schedule:
    """The schedule registered under ``name`` (``vp-linear``, ``cosine``, ``ddpm-linear``)."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise InputError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}") from None


@dataclass(frozen=True)
class Grid:
    """A time grid with its per-step quantities, all float64 tensors.

    Arrays over levels have length T + 1 (index t = 0..T); arrays over steps have length T
    (index t - 1 for step t = 1..T).
    """

    schedule: Schedule
    taus: torch.Tensor
    log_abar: torch.Tensor
    log_alpha: torch.Tensor

    @property
    def T(self) -> int:
        return self.log_alpha.numel()

    @property
    def abar(self) -> torch.Tensor:
        """``abar_t``, t = 0..T."""
        return torch.exp(self.log_abar)

    @property
    def one_minus_abar(self) -> torch.Tensor:
        """``1 - abar_t = -expm1(log abar_t)``, t = 0..T (+0, not -0, at t = 0)."""
        return torch.expm1(self.log_abar).abs()

    @property
    def alpha(self) -> torch.Tensor:
        """``alpha_t``, t = 1..T."""
        return torch.exp(self.log_alpha)

    @property
    def beta(self) -> torch.Tensor:
        """``beta_t = 1 - alpha_t = -expm1(log alpha_t)``, t = 1..T."""
        return -torch.expm1(self.log_alpha)

    @property
    def beta_tilde(self) -> torch.Tensor:
        """``beta~_t = (1 - abar_{t-1}) beta_t / (1 - abar_t)``, t = 1..T (0 at t = 1)."""
        one_minus = self.one_minus_abar
        return one_minus[:-1] * self.beta / one_minus[1:]

    def window(self, first: int, last: int) -> Grid:
        """Steps ``first..last`` as a grid of their own (levels ``first - 1 .. last``): its step k is
        step ``first + k - 1`` here, with identical per-step quantities."""
        if not 1 <= first <= last <= self.T:
            raise InputError(f"a window needs 1 <= first <= last <= T = {self.T}, got {first}..{last}")
        return Grid(self.schedule, self.taus[first - 1 : last + 1], self.log_abar[first - 1 : last + 1],
                    self.log_alpha[first - 1 : last])

    def level(self, t: int) -> NoiseLevel:
        """The noise level of ``x_t``, t = 0..T."""
        return NoiseLevel.from_log_abar(self.log_abar[t])


#: Bytes a path-space KL holds per step of its grid: some 30 float64 arrays over the steps (the grid's
#: levels and per-step coefficients, the per-step KLs, their errors and the temporaries between);
#: measured at 200-240 (peak resident memory of ``pathkl kl`` at T = 2e6 and 4e6).
BYTES_PER_STEP = 256
#: Bytes per element of a ddpm-linear chain (its betas, their logarithms, the segment sums).
BYTES_PER_CHAIN_ELEMENT = 32


def memory_limit() -> int:
    """The most memory one computation may plan to use: this machine's physical memory, in bytes
    (16 GiB where the operating system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 16 << 30


def format_bytes(n: float) -> str:
    """``n`` bytes in MB, GB or TB (decimal), three significant digits."""
    if n >= 1e300:
        return "more than 1e288 TB"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size or unit == "MB":
            return f"{n / size:.3g} {unit}"
    raise AssertionError("unreachable")


def check_memory(needed: float, what: str) -> None:
    """``InputError`` naming ``what`` and both numbers when ``needed`` bytes exceed :func:`memory_limit`:
    refused before any allocation, instead of an out-of-memory kill minutes later."""
    limit = memory_limit()
    if needed > limit:
        raise InputError(f"{what} needs about {format_bytes(needed)} of memory, more than this machine's "
                         f"{format_bytes(limit)}")


def check_steps(steps: int, *, what: str = "the number of steps T") -> int:
    """``steps`` as an int: an integer >= 1 whose grid fits in memory (:data:`BYTES_PER_STEP`)."""
    integer = isinstance(steps, (int, np.integer)) and not isinstance(steps, (bool, np.bool_))
    whole = isinstance(steps, (float, np.floating)) and math.isfinite(steps) and float(steps).is_integer()
    if not (integer or whole) or steps < 1:
        raise InputError(f"{what} must be an integer >= 1, got {steps!r}")
    value = int(steps)
    check_memory(BYTES_PER_STEP * (value + 1), f"a grid of T = {value} steps ({BYTES_PER_STEP} bytes a step)")
    return value


def grid_from_taus(schedule: Schedule, taus: Sequence[float] | torch.Tensor) -> Grid:
    """Grid on the given noise levels: strictly increasing, ``taus[0] = 0``, ``taus[-1] = 1``."""
    taus = torch.as_tensor(taus, dtype=DTYPE).flatten()
    check_memory(BYTES_PER_STEP * taus.numel(), f"a grid of T = {taus.numel() - 1} steps ({BYTES_PER_STEP} bytes a step)")
    if taus.numel() < 2 or not torch.isfinite(taus).all():
        raise InputError("a time grid needs at least two finite taus, from 0 to 1")
    if taus[0] != 0.0 or taus[-1] != 1.0:
        raise InputError(f"a time grid must start at tau = 0 and end at tau = 1, got {float(taus[0])} .. {float(taus[-1])}")
    if not (taus[1:] > taus[:-1]).all():
        raise InputError("a time grid must be strictly increasing")
    if isinstance(schedule, DDPMLinear):
        raise InputError("ddpm-linear is discrete: give a number of steps or a subsequence of the chain")
    raw = schedule.log_alpha(taus[:-1], taus[1:])
    log_alpha = torch.clamp(raw, min=schedule.min_log_alpha)
    log_abar = schedule.log_abar(taus)
    capped = torch.nonzero(log_alpha != raw).flatten()
    if capped.numel():
        # From the first capped step (cosine, near tau = 1) on, abar follows the capped alphas.
        first = int(capped[0])
        log_abar[first + 1 :] = log_abar[first] + torch.cumsum(log_alpha[first:], 0)
    return Grid(schedule, taus, log_abar, log_alpha)


def grid_from_chain(schedule: DDPMLinear, length: int, indices: Sequence[int], *, to_end: bool = True) -> Grid:
    """Grid on the subsequence ``0 = i_0 < ... < i_T = N`` of a discrete chain of length N.

    ``log alpha_t`` is the sum of ``log1p(-beta_n)`` over ``i_{t-1} < n <= i_t`` (segment sums, not
    differences of cumulative sums). ``to_end=False`` lets the subsequence end at ``i_T <= N`` (a
    sampler that starts below the chain's end, as diffusers' "leading" spacing does,
    pathkl.timesteps); its last tau is then ``i_T / N < 1``.
    """
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size < 2 or not np.issubdtype(idx.dtype, np.integer):
        raise InputError("a chain subsequence must be a list of at least two integers")
    ends = idx[-1] == length if to_end else idx[-1] <= length
    if idx[0] != 0 or not ends or not (np.diff(idx) > 0).all():
        where = f"to the chain length {length}" if to_end else f"to at most the chain length {length}"
        raise InputError(f"a chain subsequence must increase strictly from 0 {where}")
    check_memory(BYTES_PER_CHAIN_ELEMENT * int(length) + BYTES_PER_STEP * idx.size,
                 f"a ddpm-linear chain of length N = {length} ({BYTES_PER_CHAIN_ELEMENT} bytes an element)")
    log_one_minus_beta = torch.log1p(-schedule.chain_betas(length)).numpy()
    log_alpha = torch.from_numpy(np.add.reduceat(log_one_minus_beta[: idx[-1]], idx[:-1]))
    log_abar = torch.cat([torch.zeros(1, dtype=DTYPE), torch.cumsum(log_alpha, 0)])
    return Grid(schedule, torch.as_tensor(idx / length, dtype=DTYPE), log_abar, log_alpha)
