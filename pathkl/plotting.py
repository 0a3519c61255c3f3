"""The one figure style of the package's paper figures, and helpers for rate plots.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot, no global state), so they
render headless. Fonts are Computer Modern (matplotlib ships ``cmr10`` and the ``cm`` mathtext set),
which matches a default LaTeX paper without a TeX install. Colours are the Okabe-Ito palette, which
stays distinguishable under the common colour-vision deficiencies; each covariance family keeps its
colour and marker in every figure.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import matplotlib.colors
import matplotlib.ticker
import numpy
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .errors import InputError
from .families import parse_family
from .palette import OKABE_ITO

#: Widths in inches of one column and of the full text of a two-column paper (NeurIPS/ICML-like).
ONE_COLUMN = 3.25
TWO_COLUMN = 6.75

STYLE = {
    "font.family": "serif",
    "font.serif": ["cmr10"],
    "mathtext.fontset": "cm",
    "axes.formatter.use_mathtext": True,
    "axes.unicode_minus": False,
    "font.size": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 6.5,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.0,
    "lines.markersize": 3.5,
    "legend.frameon": False,
    "axes.prop_cycle": matplotlib.cycler(color=list(OKABE_ITO)),
    "pdf.fonttype": 42,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply :data:`STYLE` while figures are built and saved."""
    with matplotlib.rc_context(STYLE):
        yield


def family_style(family: str) -> tuple[str, str]:
    """``(colour, marker)`` of a covariance family (pathkl.families). A sized family (``lanczos:3``,
    ``rademacher:8``) keeps its kind's colour and marker, lightened towards white with its shade
    (1..8, small sizes darkest), so its sizes stay apart from each other and from every other kind."""
    entry = parse_family(family)
    if entry.shade is None:
        return entry.colour, entry.marker
    base = numpy.array(matplotlib.colors.to_rgb(entry.colour))
    return matplotlib.colors.to_hex(base + (1.0 - base) * 0.65 * (entry.shade - 1) / 7), entry.marker


def family_label(family: str) -> str:
    """Legend name of a family: mathtext for the isotropic ones, ``lanczos $k=3$`` for ``lanczos:3``."""
    return parse_family(family).label


def new_figure(*, columns: int = 1, aspect: float = 0.75, ncols: int = 1,
               nrows: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure one or two columns wide (``aspect`` = height / width of each panel), its panels in
    ``nrows`` rows of ``ncols`` (row by row)."""
    width = ONE_COLUMN if columns == 1 else TWO_COLUMN
    fig = Figure(figsize=(width, width / ncols * aspect * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def reference_slopes(ax: Axes, x: Sequence[float], *, anchor: float,
                     slopes: Sequence[int] = (-1, -2)) -> None:
    """Grey guide lines ``anchor * (x / x[0])^s`` for each slope ``s``, labelled at their right end."""
    x0, x1 = min(x), max(x)
    for s, ls in zip(slopes, (":", "--", "-.")):
        ax.plot([x0, x1], [anchor, anchor * (x1 / x0) ** s], ls, color="0.55", lw=0.7,
                label=f"slope ${s}$", zorder=0)


def slope_label(name: str, slope: float, low: float, high: float) -> str:
    """Legend text ``name: slope -1.0020 [-1.0100, -0.9950]`` (the fit's interval in brackets)."""
    return f"{name}: slope ${slope:.4f}$ $[{low:.4f}, {high:.4f}]$"


def log_grid(lo: float, hi: float, n: int = 50) -> list[float]:
    """``n`` points spaced evenly in log between ``lo`` and ``hi``."""
    a, b = math.log(lo), math.log(hi)
    return [math.exp(a + (b - a) * i / (n - 1)) for i in range(n)]


def integer_log_ticks(ax: Axes, values: Sequence[float]) -> None:
    """Label a log x-axis at ``values`` (e.g. the T of a ladder) with plain integers."""
    ax.set_xticks(list(values), [f"{v:g}" for v in values])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.pdf`` (vector) and ``stem.png`` (200 dpi) with no timestamps, so that rebuilding
    an unchanged figure gives identical files.

    Each file is drawn in memory and then written through a temporary file and a rename, so a full
    disk leaves the old file (or none), never a truncated one (:class:`InputError`)."""
    logging.getLogger("fontTools").setLevel(logging.ERROR)  # cmr10's header dates trip a warning
    paths = [stem.with_suffix(".pdf"), stem.with_suffix(".png")]
    options = [{"metadata": {"CreationDate": None, "ModDate": None, "Producer": None,
                             "Creator": None}},
               {"dpi": 200, "metadata": {"Software": None}}]
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        for path, kwargs in zip(paths, options):
            buf = io.BytesIO()
            with style():
                fig.savefig(buf, format=path.suffix[1:], **kwargs)
            _replace_atomically(path, buf.getvalue())
    except OSError as e:
        raise InputError(f"cannot write figure {stem}: {e.strerror or e}") from None
    return paths


def _replace_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
