"""Summary figure of one job: persistence diagram, sky (phi1, phi2), proper-motion plane."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def summary_plot(path: Path, *, births, deaths, pair_sigma, sigma_threshold, essential_births,
                 phi1, phi2, pm1, pm2, candidate, title: str, max_background: int = 200_000,
                 seed: int = 0) -> None:
    """Write a three-panel PNG. Candidates are coloured; background stars are grey."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), constrained_layout=True)
    ax = axes[0]
    sig = np.asarray(pair_sigma)
    strong = sig >= sigma_threshold
    ax.scatter(births[~strong], deaths[~strong], s=6, c="0.5", label="pairs")
    ax.scatter(births[strong], deaths[strong], s=30, c="tab:red",
               label=f"sigma >= {sigma_threshold:g}")
    if len(births):
        lo, hi = float(np.min(deaths)), float(np.max(births))
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.5)
        for b in essential_births:
            ax.axvline(b, color="tab:blue", lw=0.8, ls=":")
    ax.set_xlabel("birth (log density)")
    ax.set_ylabel("death (log density)")
    ax.set_title("H0 persistence (dotted: essential)")
    ax.legend(loc="lower right", fontsize=8)

    rng = np.random.default_rng(seed)
    bg = np.flatnonzero(candidate < 0)
    if len(bg) > max_background:
        bg = rng.choice(bg, max_background, replace=False)
    fg = np.flatnonzero(candidate >= 0)
    cmap = plt.get_cmap("tab10")
    for ax, (x, y, xl, yl) in zip(axes[1:], [(phi1, phi2, "phi1 [deg]", "phi2 [deg]"),
                                             (pm1, pm2, "pm_phi1 cos(phi2) [mas/yr]",
                                              "pm_phi2 [mas/yr]")], strict=True):
        ax.scatter(x[bg], y[bg], s=1, c="0.75", rasterized=True)
        for c in np.unique(candidate[fg]):
            sel = fg[candidate[fg] == c]
            ax.scatter(x[sel], y[sel], s=4, color=cmap(int(c) % 10), label=f"candidate {c}")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    if len(fg):
        axes[1].legend(loc="upper right", fontsize=8, markerscale=3)
    axes[1].set_title("sky, stream frame")
    axes[2].set_title("proper motions, stream frame")
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
