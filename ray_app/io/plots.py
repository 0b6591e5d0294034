"""Figures of one job.

* ``summary.png``: (a) the persistence diagram with every candidate a labelled marker
  (essential classes at their key saddle), (b) the sky in the stream frame with each
  candidate's fitted track, its width band and the members coloured by probability, (c) the
  proper-motion plane centred on the candidates with limits from percentiles, (d) a
  colour-magnitude panel when photometry was used.
* ``candidate_<i>.png``: phi2, both proper motions and parallax against phi1 with the fitted
  track and width band, the members by probability and the field in grey.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PROB_CMAP = "plasma_r"
FIELD_COLOUR = "0.72"
MARKERS = "ovs^Dp<>h*"


def _field_sample(n: int, mask: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    idx = np.flatnonzero(mask)
    if len(idx) > limit:
        idx = np.random.default_rng(seed).choice(idx, limit, replace=False)
    return idx


def _members_by_probability(ax, x, y, prob, members, vmin):
    order = members[np.argsort(prob[members], kind="stable")]  # most probable on top
    return ax.scatter(x[order], y[order], s=7, c=prob[order], cmap=PROB_CMAP, vmin=vmin,
                      vmax=1.0, edgecolors="none", rasterized=True)


def _band(ax, track, feature, colour="k"):
    if track is None:
        return
    x = track.phi1
    y = track.at(x, feature)
    w = track.width_at(x, feature)
    ax.plot(x, y, color=colour, lw=1.0)
    if np.all(np.isfinite(w)):
        ax.fill_between(x, y - w, y + w, color=colour, alpha=0.12, lw=0)


def summary_plot(path: Path, *, births, deaths, pair_sigma, sigma_threshold, candidates,
                 phi1, phi2, pm1, pm2, probability, label, tracks, member_threshold,
                 title: str, photometry=None, max_background: int = 200_000,
                 seed: int = 0) -> None:
    """Write ``summary.png``.

    Parameters
    ----------
    births, deaths, pair_sigma : arrays
        Finite pairs of the diagram (log density) and their sigma.
    candidates : list of dict
        ``index``, ``significance``, ``birth``, ``death``, ``essential`` per candidate.
    probability, label : (n,) arrays
        Largest membership probability of each star and its candidate (-1: none).
    tracks : list of Track or None
        Fitted track of each candidate (``index`` order).
    member_threshold : float
        ``memberProbability`` (the colour scale starts there).
    photometry : (magnitude, colour, names dict), optional
        Adds the colour-magnitude panel.
    """
    ncol = 4 if photometry is not None else 3
    fig, axes = plt.subplots(1, ncol, figsize=(5.3 * ncol, 5.0), constrained_layout=True)
    ax = axes[0]
    births, deaths = np.asarray(births), np.asarray(deaths)
    ax.scatter(births, deaths, s=5, c=FIELD_COLOUR, edgecolors="none", label="pairs")
    if len(births):
        lo = min([float(np.min(deaths))] + [c["death"] for c in candidates])
        hi = max([float(np.max(births))] + [c["birth"] for c in candidates])
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.5)
    cmap = plt.get_cmap("tab10")
    for c in candidates:
        colour = cmap(c["index"] % 10)
        ax.scatter([c["birth"]], [c["death"]], s=90, marker="*" if c["essential"] else "o",
                   facecolors=colour, edgecolors="k", linewidths=0.6, zorder=5,
                   label=f"#{c['index']} sigma {c['significance']:.1f}"
                         + (" (essential: at key saddle)" if c["essential"] else ""))
        ax.annotate(f"#{c['index']}  {c['significance']:.1f}\u03c3", (c["birth"], c["death"]),
                    xytext=(6, -10), textcoords="offset points", fontsize=8, zorder=6)
    ax.set_xlabel("birth (log density)")
    ax.set_ylabel("death (log density)")
    ax.set_title(f"H0 persistence: {len(candidates)} candidate(s) at sigma >= "
                 f"{sigma_threshold:g}")
    ax.legend(loc="lower right", fontsize=7)

    label = np.asarray(label)
    members = np.flatnonzero(label >= 0)
    field = _field_sample(len(label), label < 0, max_background, seed)
    sky, pm = axes[1], axes[2]
    for a, x, y in ((sky, phi1, phi2), (pm, pm1, pm2)):
        a.scatter(x[field], y[field], s=1, c=FIELD_COLOUR, edgecolors="none", rasterized=True)
    sc = None
    if len(members):
        sc = _members_by_probability(sky, phi1, phi2, probability, members, member_threshold)
        _members_by_probability(pm, pm1, pm2, probability, members, member_threshold)
    for i, track in enumerate(tracks):
        _band(sky, track, "phi2", colour=cmap(i % 10))
        if track is not None:
            x = track.phi1[len(track.phi1) // 2]
            match = candidates[i].get("match") if i < len(candidates) else None
            sky.annotate(f"#{i}" + (f" {match['name']}" if match else ""),
                         (x, track.at(x, "phi2")), xytext=(0, 10), textcoords="offset points",
                         fontsize=9, color=cmap(i % 10), fontweight="bold")
    sky.set_xlabel("phi1 [deg]")
    sky.set_ylabel("phi2 [deg]")
    sky.set_title("sky, stream frame: members by probability, fitted tracks")
    # the proper-motion plane: centred on the members, limits from the field's percentiles
    focus = members if len(members) else np.arange(len(pm1))
    cx, cy = np.median(pm1[focus]), np.median(pm2[focus])
    hx = max(0.5 * np.subtract(*np.percentile(pm1, [97.5, 2.5])), 4 * _mad(pm1[focus]), 0.5)
    hy = max(0.5 * np.subtract(*np.percentile(pm2, [97.5, 2.5])), 4 * _mad(pm2[focus]), 0.5)
    pm.set_xlim(cx - hx, cx + hx)
    pm.set_ylim(cy - hy, cy + hy)
    pm.set_xlabel("pm_phi1 cos(phi2) [mas/yr]")
    pm.set_ylabel("pm_phi2 [mas/yr]")
    pm.set_title("proper motions (2.5-97.5 % of the field)")
    if photometry is not None:
        mag, col, names = photometry
        cmd = axes[3]
        ok = np.isfinite(mag) & np.isfinite(col)
        f2 = field[ok[field]]
        cmd.scatter(col[f2], mag[f2], s=1, c=FIELD_COLOUR, edgecolors="none", rasterized=True)
        m2 = members[ok[members]]
        if len(m2):
            _members_by_probability(cmd, col, mag, probability, m2, member_threshold)
        if ok.any():
            cmd.set_xlim(*np.percentile(col[ok], [0.5, 99.5]))
            cmd.set_ylim(np.percentile(mag[ok], 99.9) + 0.2, np.percentile(mag[ok], 0.1) - 0.2)
        cmd.set_xlabel(names["colour"])
        cmd.set_ylabel(names["magnitude"])
        cmd.set_title("colour-magnitude")
    if sc is not None:
        fig.colorbar(sc, ax=axes[1:], shrink=0.8, label="membership probability", pad=0.01)
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def candidate_plot(path: Path, *, index: int, significance: float, phi1, features: dict,
                   probability, member_threshold: float, track, title: str,
                   max_background: int = 100_000, seed: int = 0) -> None:
    """Write ``candidate_<i>.png``: each feature against phi1 with the track and members.

    ``features``: ``phi2``, ``pm_phi1_cosphi2``, ``pm_phi2``, ``parallax`` arrays.
    """
    names = (("phi2", "phi2 [deg]"), ("pm_phi1_cosphi2", "pm_phi1 cos(phi2) [mas/yr]"),
             ("pm_phi2", "pm_phi2 [mas/yr]"), ("parallax", "parallax [mas]"))
    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True, constrained_layout=True)
    prob = np.asarray(probability)
    members = np.flatnonzero(prob >= member_threshold)
    field = _field_sample(len(prob), prob < member_threshold, max_background, seed)
    sc = None
    for ax, (name, lab) in zip(axes, names, strict=True):
        y = np.asarray(features[name])
        ax.scatter(phi1[field], y[field], s=1, c=FIELD_COLOUR, edgecolors="none",
                   rasterized=True)
        if len(members):
            sc = _members_by_probability(ax, phi1, y, prob, members, member_threshold)
        _band(ax, track, name)
        ax.set_ylabel(lab)
        # centred on the members (or track), wide enough to show the field around them
        ref = y[members] if len(members) else y
        centre = float(np.median(ref))
        half = max(6 * _mad(ref), 0.25 * np.subtract(*np.percentile(y, [97.5, 2.5])), 0.3)
        if track is not None:
            tv = track.at(track.phi1, name)
            lo, hi = min(tv.min(), centre) - half, max(tv.max(), centre) + half
        else:
            lo, hi = centre - half, centre + half
        ax.set_ylim(lo, hi)
    axes[-1].set_xlabel("phi1 [deg]")
    if sc is not None:
        fig.colorbar(sc, ax=axes, shrink=0.6, label="membership probability", pad=0.01)
    fig.suptitle(f"{title}: candidate #{index}, sigma {significance:.2f}, {len(members)} "
                 f"members (p >= {member_threshold:g}); line: fitted track, band: +-1 width")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _mad(v) -> float:
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return 0.0
    return float(1.4826 * np.median(np.abs(v - np.median(v))))
