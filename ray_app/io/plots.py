"""Figures of one job.

* ``summary.png``: (a) the persistence diagram with every candidate a labelled marker
  (essential classes at their key saddle), (b) the sky in the stream frame with each
  candidate's fitted track, its width band and the members coloured by probability, (c) the
  proper-motion plane centred on the candidates with limits from percentiles, (d) a
  colour-magnitude panel when photometry was used.
* ``candidate_<i>.png``: phi2, both proper motions and parallax (and the magnitude, with
  photometry) against phi1 with the fitted track and width band, the members by
  probability and the field in grey.
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


def _track_xy(track, feature="phi2"):
    """Points of a Track (phi1 -> feature) or of a Polyline (sky positions, another frame)."""
    if hasattr(track, "at"):
        return track.phi1, track.at(track.phi1, feature)
    return track.phi1, track.phi2


def _band(ax, track, feature, colour="k"):
    if track is None:
        return
    if not hasattr(track, "at"):  # a track from another frame's search: band across its path
        x, y, w = track.phi1, track.phi2, track.width
        ax.plot(x, y, color=colour, lw=1.0)
        if len(x) > 1 and np.all(np.isfinite(w)):
            dx, dy = np.gradient(x), np.gradient(y)
            norm = np.hypot(dx, dy)
            norm[norm == 0] = 1.0
            nx, ny = -dy / norm * w, dx / norm * w
            ax.fill(np.concatenate([x + nx, (x - nx)[::-1]]),
                    np.concatenate([y + ny, (y - ny)[::-1]]), color=colour, alpha=0.12, lw=0)
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
            tx, ty = _track_xy(track)
            mid = len(tx) // 2
            match = candidates[i].get("match") if i < len(candidates) else None
            sky.annotate(f"#{i}" + (f" {match['name']}" if match else ""),
                         (tx[mid], ty[mid]), xytext=(0, 10), textcoords="offset points",
                         fontsize=9, color=cmap(i % 10), fontweight="bold",
                         # on a white ground: the label sits on the members it names
                         bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.8,
                               "lw": 0})
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
                   max_background: int = 100_000, seed: int = 0, magnitude=None,
                   cmd_shift=None) -> None:
    """Write ``candidate_<i>.png``: each feature against phi1 with the track and members.

    ``features``: ``phi2``, ``pm_phi1_cosphi2``, ``pm_phi2``, ``parallax`` arrays.
    ``magnitude`` (optional): ``(values, name)`` of the photometry's magnitude, drawn in a
    fifth panel with, where ``cmd_shift`` (the stream's distance-modulus offset along phi1,
    ``(nodes, shifts)``) is given, the members' median magnitude plus that offset: the
    stream's distance gradient as its photometry measured it.
    """
    names = (("phi2", "phi2 [deg]"), ("pm_phi1_cosphi2", "pm_phi1 cos(phi2) [mas/yr]"),
             ("pm_phi2", "pm_phi2 [mas/yr]"), ("parallax", "parallax [mas]"))
    if magnitude is not None:
        features = {**features, "magnitude": np.asarray(magnitude[0], dtype=float)}
        names = names + (("magnitude", f"{magnitude[1]} [mag]"),)
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 2.5 * len(names)), sharex=True,
                             constrained_layout=True)
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
        if name == "magnitude":
            _magnitude_panel(ax, phi1, y, members, cmd_shift)
            ax.set_ylabel(lab)
            continue
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


def _magnitude_panel(ax, phi1, mag, members, cmd_shift) -> None:
    """Limits of the magnitude panel (faint down) and the members' median magnitude shifted
    by the stream's fitted distance-modulus offset along phi1."""
    ok = np.isfinite(mag)
    if not ok.any():
        return
    ax.set_ylim(np.percentile(mag[ok], 99.5) + 0.2, np.percentile(mag[ok], 0.5) - 0.2)
    sel = members[np.isfinite(mag[members])]
    if cmd_shift is None or not len(sel):
        return
    nodes, shifts = cmd_shift
    x = np.linspace(float(np.min(phi1[sel])), float(np.max(phi1[sel])), 200)
    base = float(np.median(mag[sel] - np.interp(phi1[sel], nodes, shifts)))
    ax.plot(x, base + np.interp(x, nodes, shifts), color="k", lw=1.2,
            label="members' median + fitted distance-modulus offset")
    ax.legend(loc="upper left", fontsize=8)


def _mad(v) -> float:
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return 0.0
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def _mollweide_xy(ra, dec, centre: float = 0.0):
    """ICRS degrees -> matplotlib Mollweide axes radians, RA ``centre`` in the middle and
    increasing to the left (east), as sky maps are read."""
    lon = np.radians(np.mod(np.asarray(ra, float) - centre + 180.0, 360.0) - 180.0)
    return -lon, np.radians(np.asarray(dec, float))


def _map_centre(ra) -> float:
    """The RA to put in the middle of a map: the area's circular mean, to 30 deg (180 for an
    area all around the sky), so a searched area is not cut by the map's edge."""
    a = np.radians(np.asarray(ra, float))
    c, s = float(np.mean(np.cos(a))), float(np.mean(np.sin(a)))
    if len(a) == 0 or np.hypot(c, s) < 0.2:
        return 180.0
    return float(np.mod(np.round(np.degrees(np.arctan2(s, c)) / 30.0) * 30.0, 360.0))


def _split_at_wrap(x, y):
    """Break a line where it jumps across the map's edge (|dx| > pi)."""
    cut = np.flatnonzero(np.abs(np.diff(x)) > np.pi) + 1
    return zip(np.split(x, cut), np.split(y, cut), strict=True)


def survey_map(path: Path, *, searched, failed, candidates: list[dict], threshold: float,
               title: str) -> None:
    """Write ``map.png``: an all-sky Mollweide (ICRS) of the searched area (shaded), the
    patches that failed (red), every registry track (thin grey outlines) and the survey
    candidates' tracks coloured by their survey significance, labelled with their id and,
    where they match one, the registry stream."""
    from ..core.frames import frame_to_icrs
    from ..data.registry import all_streams

    fig = plt.figure(figsize=(13, 7.2))
    ax = fig.add_subplot(111, projection="mollweide")
    centre = _map_centre(searched[0])

    def xy(ra, dec):
        return _mollweide_xy(ra, dec, centre)

    x, y = xy(*searched)
    ax.scatter(x, y, s=1.2, c="#cfe3f3", edgecolors="none", rasterized=True,
               label="searched area")
    if len(failed[0]):
        fx, fy = xy(*failed)
        ax.scatter(fx, fy, s=1.2, c="#f3b0b0", edgecolors="none", rasterized=True,
                   label="not searched (failed patches)")
    from ..data.regions import _vec

    area = _vec(*searched)
    near = np.cos(np.radians(2.0))
    for s in all_streams():  # those crossing the searched area drawn stronger
        t = s.track_frame
        ra, dec = frame_to_icrs(s.frame, t["phi1"], t["phi2"])
        inside = len(area) and bool(np.any((_vec(ra, dec) @ area[:: max(1, len(area) // 4000)]
                                            .T).max(axis=1) > near))
        for sx, sy in _split_at_wrap(*xy(ra, dec)):
            ax.plot(sx, sy, color="0.35" if inside else "0.7", lw=0.8 if inside else 0.4,
                    alpha=0.9 if inside else 0.5)
    ax.plot([], [], color="0.35", lw=0.8, label="registry tracks")
    cmap = plt.get_cmap("viridis")
    sig = [c["significance"] for c in candidates]
    lo, hi = threshold, max(sig + [threshold + 1.0])
    norm = plt.Normalize(lo, hi)
    for c in candidates:
        order = np.argsort(c["track_ra"]) if len(c["track_ra"]) else []
        cx, cy = xy(np.asarray(c["track_ra"])[order], np.asarray(c["track_dec"])[order])
        colour = cmap(norm(c["significance"]))
        ax.scatter(cx, cy, s=9, color=colour, edgecolors="k", linewidths=0.2, zorder=3)
        label = f"#{c['id']}" + (f" {c['match_name']}" if c.get("match_name") else " new")
        mx, my = xy(c["ra_median"], c["dec_median"])
        ax.annotate(label, (float(mx), float(my)), xytext=(4, 4), textcoords="offset points",
                    fontsize=8, color="k", zorder=4)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    cb = fig.colorbar(sm, ax=ax, orientation="horizontal", fraction=0.04, pad=0.07)
    cb.set_label("survey significance (sigma, corrected for every patch searched)")
    ax.set_xticks(np.radians(np.arange(-150, 181, 30)))
    ax.set_xticklabels([f"{int(v)}" for v in np.mod(centre - np.arange(-150, 181, 30), 360)],
                       fontsize=7)
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.set_title(f"{title}\n{len(candidates)} survey candidate(s); RA (deg) increasing to "
                 "the left, Dec (deg)", fontsize=10)
    ax.legend(loc="lower right", fontsize=7, markerscale=6, framealpha=0.8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
