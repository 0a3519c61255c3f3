"""Log-log rate plot of ``steps`` against T (what ``pathkl rates --plot`` draws)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# Okabe-Ito colour-blind-safe palette.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def plot_rates(rows: Sequence[dict], path: Path, *, title: str) -> None:
    """One line per family (``rows`` as printed by ``pathkl rates --json``), with the fitted slope and
    its interval in the legend, and dashed reference slopes -1 and -2 through the first family."""
    fig, ax = plt.subplots(figsize=(3.4, 2.6), constrained_layout=True)
    drawn = [r for r in rows if r["slope"] is not None]
    for colour, row in zip(PALETTE, drawn):
        lo, hi = row["slope_ci"]
        label = f"{row['cov']}: slope {row['slope']:.3f} [{lo:.3f}, {hi:.3f}]"
        ax.loglog(row["steps"], row["kl"], "o-", color=colour, ms=3, lw=1.2, label=label)
    if drawn:
        t0, k0 = drawn[0]["steps"][0], drawn[0]["kl"][0]
        ts = [drawn[0]["steps"][0], drawn[0]["steps"][-1]]
        for order, style in ((1, "--"), (2, ":")):
            ax.loglog(ts, [k0 * (t / t0) ** -order for t in ts], style, color="grey", lw=0.8,
                      label=f"slope $-{order}$")
    ax.set_xlabel("number of steps $T$")
    ax.set_ylabel("path KL (steps)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=5.5, frameon=False)
    fig.savefig(path, format=path.suffix.lstrip(".") or None)
    plt.close(fig)
