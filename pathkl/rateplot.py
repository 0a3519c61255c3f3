"""Log-log rate plot of ``steps`` against T (what ``pathkl rates --plot`` draws), in the shared
figure style of :mod:`pathkl.plotting`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from . import plotting


def plot_rates(rows: Sequence[dict], path: Path, *, title: str) -> None:
    """One line per family (``rows`` as printed by ``pathkl rates --json``) with the fitted slope and its
    interval in the legend, and grey reference slopes -1 and -2 from the first family's first point."""
    with plotting.style():
        fig, (ax,) = plotting.new_figure(columns=1, aspect=0.8)
        drawn = [r for r in rows if r["slope"] is not None]
        for row in drawn:
            colour, marker = plotting.family_style(row["cov"])
            label = plotting.slope_label(plotting.family_label(row["cov"]), row["slope"], *row["slope_ci"])
            ax.loglog(row["T"], row["kl"], marker=marker, color=colour, label=label)
        for row in rows:
            if row["slope"] is None and all(k == 0 for k in row["kl"]):
                colour, marker = plotting.family_style(row["cov"])
                ax.plot([], [], ls="none", marker=marker, color=colour,
                        label=f"{plotting.family_label(row['cov'])}: KL $= 0$ at every $T$ (not drawn)")
        if drawn:
            plotting.reference_slopes(ax, drawn[0]["T"], anchor=drawn[0]["kl"][0])
            plotting.integer_log_ticks(ax, drawn[0]["T"])
        ax.set_xlabel("number of steps $T$")
        ax.set_ylabel("path KL (sum of steps)")
        ax.set_title(title)
        ax.legend(fontsize="x-small")
        fig.savefig(path, format=path.suffix.lstrip("."), dpi=200)
