"""Stream tracks as functions of phi1, and features measured relative to them.

A *track* gives, at nodes along phi1, the expected phi2, pm_phi1_cosphi2, pm_phi2 and parallax
of a stream's stars (and optionally their spread). Two uses:

* **detection** (DESIGN 2.2 with a named stream): the registry's 6-D track is subtracted from
  each star's features before scaling, so the kNN ball follows a curved stream whose proper
  motion and distance drift along it (:func:`relative_features`);
* **membership**: a track fitted to a candidate's stars (:func:`fit_track`) is the mean of
  the stream component of the membership mixture (``core/membership.py``).

Between nodes a track is linear; beyond its end nodes it is extended along the straight line
through its last ``EXTEND_DEG`` degrees, so a stream that leaves a tilted frame is followed,
without the wild swings of a polynomial (``Track.at(..., slope_span_deg=inf)``: the line
through all its nodes, for a track of residuals about another one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: The features a track describes (all but phi1).
TRACK_FEATURES = ("phi2", "pm_phi1_cosphi2", "pm_phi2", "parallax")

#: Beyond its ends a track continues along the line fitted to its outermost this-many degrees.
EXTEND_DEG = 6.0


@dataclass(frozen=True, eq=False)
class Track:
    """A stream track: per-feature values (and widths) at phi1 nodes.

    Attributes
    ----------
    phi1 : (m,) ndarray
        Node positions along the stream, degrees, strictly increasing.
    values : dict
        ``feature -> (m,) ndarray`` for the features of :data:`TRACK_FEATURES` it constrains
        (deg, mas/yr, mas). A feature it does not describe is absent (taken as 0 offset).
    widths : dict
        ``feature -> (m,) ndarray`` of spreads (same units), where known.
    source : str
        Where the track comes from (written into metadata.json).
    """

    phi1: np.ndarray
    values: dict
    widths: dict = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        p = np.asarray(self.phi1, dtype=np.float64)
        if p.ndim != 1 or len(p) < 1 or not np.all(np.isfinite(p)):
            raise ValueError("a track needs at least one finite phi1 node")
        if len(p) > 1 and not np.all(np.diff(p) > 0):
            raise ValueError("track phi1 nodes must be strictly increasing")
        for name in (*self.values, *self.widths):
            if name not in TRACK_FEATURES:
                raise ValueError(f"unknown track feature {name!r}; allowed: {TRACK_FEATURES}")

    def at(self, phi1, feature: str, slope_span_deg: float = EXTEND_DEG) -> np.ndarray:
        """The track's ``feature`` at ``phi1`` (0 where it does not describe the feature).

        Beyond an end node the track continues along the line fitted to its nodes within
        ``slope_span_deg`` of that end (at least two nodes; ``inf``: all of them, one slope
        for both ends).
        """
        return _evaluate(self.phi1, self.values.get(feature), phi1,
                         slope_span_deg=slope_span_deg)

    def width_at(self, phi1, feature: str) -> np.ndarray:
        """The track's spread of ``feature`` at ``phi1`` (NaN where unknown)."""
        w = self.widths.get(feature)
        if w is None:
            return np.full(np.shape(phi1), np.nan)
        return _evaluate(self.phi1, w, phi1, extend=False)

    def tilted(self, angle_deg: float) -> Track:
        """The track rotated by ``angle_deg`` about its midpoint in the (phi1, phi2) plane
        (phi2 gains tan(angle) x (phi1 - mid)): a frame whose pole is off by that angle."""
        if angle_deg == 0:
            return self
        mid = 0.5 * (self.phi1[0] + self.phi1[-1])
        values = dict(self.values)
        values["phi2"] = self.at(self.phi1, "phi2") + np.tan(np.radians(angle_deg)) * (
            self.phi1 - mid)
        return Track(self.phi1, values, self.widths,
                     source=f"{self.source}; tilted {angle_deg:+g} deg")

    def points(self, step_deg: float = 1.5) -> list[dict]:
        """The track sampled every ~``step_deg`` along phi1, for candidates.json."""
        lo, hi = float(self.phi1[0]), float(self.phi1[-1])
        n = max(int(np.ceil((hi - lo) / step_deg)) + 1, 2 if hi > lo else 1)
        grid = np.linspace(lo, hi, n)
        out = []
        for p in grid:
            row = {"phi1": round(float(p), 4)}
            for name in TRACK_FEATURES:
                if name in self.values:
                    row[name] = round(float(self.at(p, name)), 5)
                if name in self.widths:
                    row[f"{name}_width"] = round(float(self.width_at(p, name)), 5)
            out.append(row)
        return out

    def to_dict(self) -> dict:
        return {"source": self.source, "features": [n for n in TRACK_FEATURES
                                                     if n in self.values],
                "points": self.points()}


def _evaluate(nodes, values, x, extend: bool = True,
              slope_span_deg: float = EXTEND_DEG) -> np.ndarray:
    shape = np.shape(x)
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    return _evaluate_1d(nodes, values, x, extend, slope_span_deg).reshape(shape)


def _evaluate_1d(nodes, values, x, extend, slope_span_deg: float = EXTEND_DEG) -> np.ndarray:
    if values is None:
        return np.zeros_like(x)
    nodes = np.asarray(nodes, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    if not ok.any():
        return np.zeros_like(x)
    nodes, values = nodes[ok], values[ok]
    y = np.interp(x, nodes, values)
    if not extend or len(nodes) < 2:
        return y
    for side in (0, 1):
        edge = nodes[0] if side == 0 else nodes[-1]
        near = (nodes <= nodes[0] + slope_span_deg) if side == 0 else (
            nodes >= nodes[-1] - slope_span_deg)
        if near.sum() < 2:
            near = np.zeros(len(nodes), bool)
            near[[0, 1] if side == 0 else [-2, -1]] = True
        slope = np.polyfit(nodes[near], values[near], 1)[0]
        outside = x < edge if side == 0 else x > edge
        y[outside] = (values[0] if side == 0 else values[-1]) + slope * (x[outside] - edge)
    return y


def relative_features(raw: dict, track: Track | None) -> dict:
    """Features with the track subtracted (phi1 unchanged); ``track=None`` returns ``raw``."""
    if track is None:
        return dict(raw)
    out = dict(raw)
    for name in TRACK_FEATURES:
        if name in track.values:
            out[name] = np.asarray(raw[name], dtype=np.float64) - track.at(raw["phi1"], name)
    return out


def fit_track(phi1, features: dict, weights=None, knot_spacing_deg: float = 3.0,
              min_stars: int = 8, source: str = "fit") -> Track:
    """Robust smooth track of weighted stars: weighted medians and spreads in phi1 bins.

    Parameters
    ----------
    phi1 : (n,) array
        Along-stream coordinate, degrees.
    features : dict
        ``feature -> (n,) array`` for some of :data:`TRACK_FEATURES`.
    weights : (n,) array, optional
        Per-star weights in [0, 1] (membership probabilities); default 1.
    knot_spacing_deg : float
        Target spacing of the nodes; bins are widened until each holds an effective
        ``min_stars`` stars, so a sparse stream gets fewer nodes instead of noisy ones.
    min_stars : int
        Effective stars (sum of weights) per node.

    Returns
    -------
    Track
        Nodes at the weighted mean phi1 of each bin; values = weighted medians; widths =
        1.4826 x weighted MAD (robust to the field stars that a weighted fit still holds),
        smoothed over neighbouring nodes by a 1-2-1 kernel.

    Raises
    ------
    ValueError
        Fewer than ``min_stars`` effective stars in all.
    """
    phi1 = np.asarray(phi1, dtype=np.float64)
    w = np.ones_like(phi1) if weights is None else np.clip(np.asarray(weights, float), 0, 1)
    if w.sum() < min_stars:
        raise ValueError(f"a track needs at least {min_stars} effective stars, got "
                         f"{w.sum():.1f}")
    order = np.argsort(phi1, kind="stable")
    p, ww = phi1[order], w[order]
    edges = phi1_bins(p, ww, knot_spacing_deg, min_stars)
    nodes, values, widths = [], {n: [] for n in features}, {n: [] for n in features}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sl = slice(lo, hi)
        nodes.append(float(np.average(p[sl], weights=ww[sl])))
        for name, col in features.items():
            v = np.asarray(col, dtype=np.float64)[order][sl]
            good = np.isfinite(v)
            med = weighted_quantile(v[good], ww[sl][good], 0.5)
            mad = weighted_quantile(np.abs(v[good] - med), ww[sl][good], 0.5)
            values[name].append(med)
            widths[name].append(1.4826 * mad)
    nodes = np.array(nodes)
    keep = distinct_nodes(nodes)
    smooth = {n: smooth_nodes(np.array(v)[keep]) for n, v in widths.items()}
    return Track(nodes[keep], {n: np.array(v)[keep] for n, v in values.items()}, smooth,
                 source=source)


def phi1_bins(p, w, spacing, min_stars) -> list[int]:
    """Index edges of consecutive bins of the sorted ``p``, each ~``spacing`` wide and holding
    at least ``min_stars`` of weight ``w`` (widened until it does; a too-light remainder joins
    the last bin)."""
    edges, start = [0], 0
    cum = np.concatenate([[0.0], np.cumsum(w)])
    n = len(p)
    while start < n:
        end = int(np.searchsorted(p, p[start] + spacing, side="left"))
        end = max(end, start + 1)
        while end < n and cum[end] - cum[start] < min_stars:
            end += 1
        if n - end > 0 and cum[n] - cum[end] < min_stars:
            end = n  # the remainder is too light for a bin of its own
        edges.append(end)
        start = end
    return edges


def weighted_quantile(v, w, q) -> float:
    """The ``q`` quantile of ``v`` with weights ``w`` (NaN when empty or weightless)."""
    if len(v) == 0 or w.sum() <= 0:
        return float("nan")
    o = np.argsort(v, kind="stable")
    c = np.cumsum(w[o])
    return float(v[o][min(int(np.searchsorted(c, q * c[-1])), len(v) - 1)])


def distinct_nodes(nodes) -> np.ndarray:
    """Mask of the nodes (ascending phi1) to keep so they rise strictly, as interpolation
    needs: a node within 1e-9 deg of the one before it (two bins of the same stars' phi1)
    is dropped."""
    return np.concatenate([[True], np.diff(np.asarray(nodes, dtype=np.float64)) > 1e-9])


def smooth_nodes(a: np.ndarray) -> np.ndarray:
    """Values at consecutive nodes smoothed by a 1-2-1 kernel (the end nodes repeated);
    fewer than three nodes are returned as they are."""
    a = np.asarray(a, dtype=np.float64)
    if len(a) < 3:
        return a
    padded = np.concatenate([a[:1], a, a[-1:]])
    return 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]


@dataclass(frozen=True)
class Polyline:
    """A track re-expressed in another frame, for drawing: points along the stream
    (``phi1``, ``phi2``, the phi2 half-width ``width``), in the order of the original track.
    In another frame a track need not be a function of phi1 (it may even run across it)."""

    phi1: np.ndarray
    phi2: np.ndarray
    width: np.ndarray


def track_polyline(track: Track | None, frame, to_frame, step_deg: float = 0.5):
    """``track`` (fitted in ``frame``) as a :class:`Polyline` of sky positions in
    ``to_frame``."""
    from .frames import frame_to_icrs, icrs_to_frame

    if track is None:
        return None
    lo, hi = float(track.phi1[0]), float(track.phi1[-1])
    p = np.linspace(lo, hi, max(int(np.ceil((hi - lo) / step_deg)) + 1, 2))
    ra, dec = frame_to_icrs(frame, p, track.at(p, "phi2"))
    x, y = icrs_to_frame(to_frame, ra, dec)
    w = track.width_at(p, "phi2") if "phi2" in track.widths else np.zeros_like(p)
    return Polyline(np.asarray(x), np.asarray(y), np.asarray(w))
