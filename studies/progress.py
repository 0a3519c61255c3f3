"""A small progress bar with an ETA, written to stderr.

On a terminal the bar redraws in place; otherwise (logs, CI) it prints a line at most every
``log_every`` seconds and at the end, so long runs stay visible without flooding the log.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour)."""
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts finished points of ``total`` (``already`` of them done before this run started).

    The ETA is the remaining count times the mean wall time per point finished in this run, which
    already accounts for parallel workers.
    """

    def __init__(self, total: int, *, already: int = 0, label: str = "", stream: TextIO | None = None,
                 enabled: bool = True, width: int = 28, log_every: float = 30.0):
        self.total, self.done, self.already = total, already, already
        self.label, self.width, self.log_every = label, width, log_every
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled and total > already
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self._last_log = time.monotonic()

    def line(self) -> str:
        frac = self.done / self.total if self.total else 1.0
        fill = round(self.width * frac)
        elapsed = time.monotonic() - self.start
        ran = self.done - self.already
        eta = elapsed / ran * (self.total - self.done) if ran else float("nan")
        eta_text = format_duration(eta) if ran else "?"
        return (f"{self.label} [{'#' * fill}{'.' * (self.width - fill)}] {self.done}/{self.total} "
                f"{100 * frac:3.0f}%  elapsed {format_duration(elapsed)}  ETA {eta_text}")

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + self.line())
            if self.done >= self.total:
                self.stream.write("\n")
        elif self.done >= self.total or now - self._last_log >= self.log_every:
            self.stream.write(self.line() + "\n")
            self._last_log = now
        self.stream.flush()
