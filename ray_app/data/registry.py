"""Stream registry: streamKey -> frame, extent, distance, proper motion, reference.

Each entry has a frame, the galstreams 6-D track (positions, distance, proper motions, radial
velocity), a footprint (the track +- a half-width, :class:`~ray_app.data.regions.TrackFootprint`)
and default Gaia query cuts. Two layers:

* the five keys the previous system accepted (``gd-1``, ``palomar-5``, ``jhelum``,
  ``orphan-chenab``, ``atlas-aliqa-uma``) with their aliases; they take precedence. GD-1 uses
  the published GD1Koposov10 rotation (Koposov et al. 2010, as in gala) so phi1/phi2 match the
  literature; the others use great-circle poles of galstreams tracks that agree with gala's
  frames (tests/test_registry.py);
* every default track of galstreams 1.2.1 (141 streams; ``galstreams_registry.json``, built by
  ``scripts/build_registry.py``), keyed by its name in lower case (``aau-atlas``,
  ``ngc5466``, ``willka-yaku``...). Their frames come from a great-circle fit to the track
  (:func:`~ray_app.core.frames.fit_great_circle_pole`), phi1 = 0 at the track midpoint and
  increasing along the track.

Keys match case-insensitively, ignoring ``-``, ``_``, ``.`` and spaces; an unknown key gets
the closest matches.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources

import numpy as np

from ..core.features import FeatureScales
from ..core.frames import StreamFrame, fit_great_circle_pole, icrs_to_frame
from ..core.tracks import Track
from .gaia import QueryCuts
from .regions import TrackFootprint

GD1_KOPOSOV10 = StreamFrame(
    ((-0.4776303088, -0.1738432154, 0.8611897727),
     (0.510844589, -0.8524449229, 0.111245042),
     (0.7147776536, 0.4930681392, 0.4959603976)),
    name="GD1Koposov10",
)


@dataclass(frozen=True, eq=False)
class StreamTrack:
    """A stream's 6-D track (galstreams), nodes ~1.5 deg apart along the stream.

    Attributes
    ----------
    ra, dec : ndarray
        ICRS, degrees.
    distance_kpc : ndarray
        Heliocentric distance, kpc (NaN where the track has none).
    pmra, pmdec : ndarray
        Proper motion (pmra includes cos dec), mas/yr (NaN where unknown; galstreams fills
        0 when the stream has no measured proper motion, see ``StreamInfo.info_flags``).
    rv : ndarray
        Radial velocity, km/s (NaN where unknown).
    """

    ra: np.ndarray
    dec: np.ndarray
    distance_kpc: np.ndarray
    pmra: np.ndarray
    pmdec: np.ndarray
    rv: np.ndarray

    @classmethod
    def from_json(cls, pts: dict) -> StreamTrack:
        def arr(k):
            return np.array([np.nan if v is None else v for v in pts[k]], dtype=float)

        return cls(arr("ra"), arr("dec"), arr("distance_kpc"), arr("pmra"), arr("pmdec"),
                   arr("rv"))

    @classmethod
    def concatenate(cls, tracks: list[StreamTrack]) -> StreamTrack:
        return cls(*(np.concatenate([getattr(t, f) for t in tracks]) for f in
                     ("ra", "dec", "distance_kpc", "pmra", "pmdec", "rv")))

    def __len__(self) -> int:
        return len(self.ra)


@dataclass(frozen=True, eq=False)
class StreamInfo:
    """One registry entry.

    Attributes
    ----------
    key : str
        Canonical key (as used in job messages).
    name : str
        Display name.
    frame : StreamFrame
        Stream-aligned frame (phi1 along the track).
    track : StreamTrack
        The 6-D track.
    distance_kpc : float
        Heliocentric distance at the track midpoint.
    pm_mid : (pmra, pmdec) in mas/yr
        Track proper motion at the midpoint.
    width_deg : float
        Typical width (phi2 dispersion), degrees.
    reference : str
        Literature source of the track.
    aliases : tuple of str
    width_pm : (float or None, float or None)
        Proper-motion widths along/across the stream, mas/yr, where published.
    info_flags : str
        galstreams' InfoFlags: measured (track, distance, pm, rv) as four 0/1 digits.
    """

    key: str
    name: str
    frame: StreamFrame
    track: StreamTrack
    distance_kpc: float
    pm_mid: tuple[float, float]
    width_deg: float
    reference: str
    aliases: tuple[str, ...] = field(default_factory=tuple)
    width_pm: tuple = (None, None)
    info_flags: str = ""

    @property
    def has_pm(self) -> bool:
        """Whether the track's proper motions are measured (galstreams InfoFlags digit 3)."""
        return len(self.info_flags) < 3 or self.info_flags[2] == "1"

    @property
    def phi2_half_width(self) -> float:
        """Half-width of the default query footprint across the track, degrees:
        max(5, 5 x width): room for the stream's wings, spurs and off-track features, and
        enough background on both sides for the density contrast and the null model."""
        return max(5.0, 5.0 * self.width_deg)

    @cached_property
    def track_frame(self) -> dict:
        """Track nodes in the stream frame, sorted by phi1: phi1, phi2, pm1, pm2, distance."""
        p1, p2, m1, m2 = icrs_to_frame(self.frame, self.track.ra, self.track.dec,
                                       np.nan_to_num(self.track.pmra),
                                       np.nan_to_num(self.track.pmdec))
        o = np.argsort(p1, kind="stable")
        return {"phi1": p1[o], "phi2": p2[o], "pm_phi1_cosphi2": m1[o], "pm_phi2": m2[o],
                "distance_kpc": self.track.distance_kpc[o]}

    @cached_property
    def detection_track(self) -> Track:
        """The registry track as a function of phi1 (phi2; the proper motions where measured;
        parallax = 1 / distance where known), subtracted from the features of a named-stream
        job so its kNN ball follows the stream (``core/tracks.py``)."""
        t = self.track_frame
        phi1, first = np.unique(np.round(t["phi1"], 6), return_index=True)
        values = {"phi2": t["phi2"][first]}
        if self.has_pm:
            values["pm_phi1_cosphi2"] = t["pm_phi1_cosphi2"][first]
            values["pm_phi2"] = t["pm_phi2"][first]
        d = t["distance_kpc"][first]
        if np.any(np.isfinite(d) & (d > 0)):
            values["parallax"] = np.where(np.isfinite(d) & (d > 0), 1.0 / np.where(d > 0, d, 1),
                                          np.nan)
        return Track(phi1, values, source=f"registry: {self.reference}")

    def _phi1_scale(self, default: float) -> float:
        lo, hi = self.phi1_range
        return round(float(np.clip((hi - lo) / 10.0, default, 2.5 * default)), 3)

    def feature_scales(self) -> FeatureScales:
        """Detection scales of this stream (the rule, not fitted to any data set):

        * across the track, phi2: 1.5 x the registry width, within [0.3, 1.5] deg (0.3 deg,
          the default, for a GD-1-like 0.2 deg stream; streams differ 5x in width);
        * proper motions: the default 0.3 mas/yr (Gaia errors of faint members) added in
          quadrature to 1.5 x the published proper-motion dispersion, where known;
        * along the track, phi1: a tenth of the stream's length within [10, 25] deg (10 deg,
          the default, up to a 100 deg stream; a 230 deg stream such as Orphan-Chenab spreads
          its stars thinner, and a longer kNN ball along it gathers as many of them);
        * parallax: the default 0.5 mas (distance is set by the cuts, not by the kNN scale).
        """
        base = FeatureScales()
        phi2 = round(float(np.clip(1.5 * self.width_deg, base.phi2, 1.5)), 4) if self.width_deg \
            else base.phi2

        def pm(default, width):
            return round(float(np.hypot(default, 1.5 * width)), 4) if width else default

        return FeatureScales(phi1=self._phi1_scale(base.phi1), phi2=phi2,
                             pm_phi1_cosphi2=pm(base.pm_phi1_cosphi2, self.width_pm[0]),
                             pm_phi2=pm(base.pm_phi2, self.width_pm[1]),
                             parallax=base.parallax)

    @property
    def phi1_range(self) -> tuple[float, float]:
        p1 = self.track_frame["phi1"]
        return float(p1[0]), float(p1[-1])

    @cached_property
    def footprint(self) -> TrackFootprint:
        """The default query region: the track +- :attr:`phi2_half_width`."""
        t = self.track_frame
        return TrackFootprint(self.frame, t["phi1"], t["phi2"], self.phi2_half_width)

    @property
    def default_cuts(self) -> QueryCuts:
        """Gaia cuts for this stream: parallax below max(1, 2 / nearest distance) mas (drops
        foreground disc stars, keeps every member within the errors), G < 20.5 and
        -0.5 < BP-RP < 2.5 (the old metal-poor populations streams are made of, with room for
        reddening and errors). No parallax_over_error cut (it would remove distant members)."""
        d = self.track.distance_kpc
        d = d[np.isfinite(d) & (d > 0)]
        nearest = float(d.min()) if len(d) else self.distance_kpc
        return QueryCuts(parallax_max=round(max(1.0, 2.0 / max(nearest, 1e-3)), 3))

    def to_dict(self) -> dict:
        lo, hi = self.phi1_range
        return {"key": self.key, "name": self.name, "frame": self.frame.to_dict(),
               "phi1_range_deg": [lo, hi], "length_deg": hi - lo,
               "distance_kpc": self.distance_kpc, "width_deg": self.width_deg,
               "width_pm_mas_yr": list(self.width_pm),
               "footprint_half_width_deg": self.phi2_half_width,
               "footprint_deg2": round(self.footprint.area_deg2, 2),
               "default_cuts": self.default_cuts.to_dict(),
               "reference": self.reference, "aliases": list(self.aliases),
               "info_flags": self.info_flags}


def _entry(key, name, track, pole, mid, dist, pm_mid, width, ref, aliases, frame=None,
           width_pm=(None, None), info_flags=""):
    if frame is None:
        if pole is None:  # fit the track's great circle; phi1 increases along the track
            pole = fit_great_circle_pole(track.ra, track.dec)
        frame = StreamFrame.from_pole(pole[0], pole[1], mid[0], mid[1], name=f"{name} frame")
        p1, _ = icrs_to_frame(frame, track.ra[[0, -1]], track.dec[[0, -1]])
        if p1[1] < p1[0]:
            frame = StreamFrame.from_pole(np.mod(pole[0] + 180, 360), -pole[1], mid[0], mid[1],
                                          name=f"{name} frame")
    return StreamInfo(key, name, frame, track, dist, pm_mid, width, ref, aliases,
                      tuple(width_pm), info_flags)


def _data() -> dict:
    return json.loads(resources.files(__package__).joinpath(
        "galstreams_registry.json").read_text())


_DATA = _data()


def _legacy_track(key: str) -> StreamTrack:
    return StreamTrack.concatenate([StreamTrack.from_json(t["points"])
                                    for t in _DATA["legacy"][key]])


_STREAMS = (
    _entry("gd-1", "GD-1", _legacy_track("gd-1"), None, (200.4859, 58.3115), 10.0,
           (-8.41, -3.98), 0.2,
           "Price-Whelan & Bonaca 2018 (galstreams GD-1.pricewhelan2018); frame Koposov+2010",
           ("gd1",), frame=GD1_KOPOSOV10, info_flags="1110"),
    _entry("palomar-5", "Pal 5", _legacy_track("palomar-5"), (319.2053, -56.4898),
           (229.0059, -0.1058), 20.5, (-2.76, -2.69), 0.2,
           "Price-Whelan et al. 2019 (galstreams Pal5.pricewhelan2019)", ("pal5", "pal-5"),
           info_flags="1110"),
    _entry("jhelum", "Jhelum", _legacy_track("jhelum"), (179.13081, -38.12553),
           (359.1292, -52.45747), 13.0, (7.35453, -3.58655), 0.5,
           "Bonaca et al. 2019 (galstreams Jhelum-a.bonaca2019; frame as gala's "
           "JhelumBonaca19)", (), info_flags="1110"),
    _entry("orphan-chenab", "Orphan-Chenab", _legacy_track("orphan-chenab"), (72.0, -14.0),
           (192.6716, -62.3979), 17.8, (-3.86, 2.39), 0.6,
           "Koposov et al. 2019 (galstreams Orphan-Chenab.koposov2019)",
           ("orphan", "ocs", "orphan-chenab-stream"), width_pm=(0.25, 0.21), info_flags="1110"),
    _entry("atlas-aliqa-uma", "ATLAS-Aliqa Uma", _legacy_track("atlas-aliqa-uma"),
           (74.2591, 47.9331), (19.8374, -26.8631), 21.5, (-0.10, -0.96), 0.25,
           "Li et al. 2021 (galstreams AAU-ATLAS.li2021 + AAU-AliqaUma.li2021)",
           ("aau", "atlas", "atlas-aliquauma"), width_pm=(0.15, 0.11), info_flags="1110"),
)


def _norm(key: str) -> str:
    return re.sub(r"[\s_\-.]", "", key.strip().lower())


def _slug(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def _galstreams() -> list[StreamInfo]:
    out = []
    for r in _DATA["streams"]:
        try:
            track = StreamTrack.from_json(r["points"])
            out.append(_entry(_slug(r["name"]), r["name"], track, None, tuple(r["mid"]),
                              r["distance_kpc"], tuple(r["pm_mid"]),
                              r["width_deg"] or DEFAULT_WIDTH_DEG,
                              f"galstreams track {r['track']} ({r['reference']}); "
                              f"{r['type']}", (), width_pm=tuple(r["width_pm_mas_yr"]),
                              info_flags=r["info_flags"]))
        except ValueError:  # a degenerate track (pole at its midpoint): not usable
            continue
    return out


DEFAULT_WIDTH_DEG = 0.5
_INDEX: dict[str, StreamInfo] = {}
_ALL: list[StreamInfo] = []
for _s in (*_STREAMS, *_galstreams()):
    names = [_norm(n) for n in (_s.key, _s.name, *_s.aliases)]
    if any(n in _INDEX for n in names[:1]):
        continue  # a legacy key (or alias) already covers this stream
    _ALL.append(_s)
    for _n in names:
        _INDEX.setdefault(_n, _s)


def all_streams() -> list[StreamInfo]:
    return list(_ALL)


def get_stream(key) -> StreamInfo:
    """Look up a stream by key or alias.

    Raises
    ------
    ValueError
        For a non-string or unknown key; the message lists the closest known keys.
    """
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"streamKey must be a non-empty string, got {key!r}")
    hit = _INDEX.get(_norm(key))
    if hit is not None:
        return hit
    close = difflib.get_close_matches(_norm(key), list(_INDEX), n=3, cutoff=0.5)
    suggestions = sorted({_INDEX[c].key for c in close})
    hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
    raise ValueError(
        f"streamKey {key!r} is not a known stream{hint} ({len(_ALL)} known; list them with "
        "`ray-app catalog`)"
    )


#: A candidate's track matches a registry stream when its points lie on average within
#: max(MATCH_MIN_DEG, MATCH_WIDTHS x the stream's width) of the registry track, and (where
#: the registry has proper motions) within MATCH_PM mas/yr of its proper motion.
MATCH_MIN_DEG = 1.5
MATCH_WIDTHS = 3.0
MATCH_PM = 2.0
#: ... over at least this many of its points (track points are 1-2 deg apart).
MATCH_MIN_POINTS = 3
#: Spacing (deg of the registry's phi1) of the densified registry tracks.
_MATCH_STEP_DEG = 0.2


@functools.cache
def _match_index():
    """Every registry track densified to ~0.2 deg, as unit vectors in one KD-tree."""
    from scipy.spatial import cKDTree

    from ..core.frames import frame_to_icrs

    xyz, owner, pms = [], [], []
    for i, s in enumerate(_ALL):
        t = s.track_frame
        p1 = t["phi1"]
        grid = (np.arange(p1[0], p1[-1] + _MATCH_STEP_DEG, _MATCH_STEP_DEG)
                if p1[-1] > p1[0] else p1[:1])
        ra, dec, pmra, pmdec = frame_to_icrs(
            s.frame, grid, np.interp(grid, p1, t["phi2"]),
            np.interp(grid, p1, t["pm_phi1_cosphi2"]), np.interp(grid, p1, t["pm_phi2"]))
        xyz.append(_unit(ra, dec))
        owner.append(np.full(len(grid), i))
        pms.append(np.column_stack([pmra, pmdec]) if s.has_pm else np.full((len(grid), 2),
                                                                            np.nan))
    return cKDTree(np.concatenate(xyz)), np.concatenate(owner), np.concatenate(pms)


def _runs_along(q, close, nearest) -> bool:
    """Whether the candidate's points that lie close to a registry track follow it: the
    registry points nearest to them span at least half the largest distance between them (a
    track crossing the registry's at a steep angle is close to it over a few points that all
    share nearly one nearest registry point). Distances, not path lengths: a survey's
    candidate is the concatenation of its patches' tracks, in no order along the sky."""
    pts = q[close]
    chord = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=2).max()
    own = float(np.degrees(2 * np.arcsin(min(chord / 2, 1.0))))
    theirs = float(np.ptp(nearest[close])) * _MATCH_STEP_DEG
    return theirs >= 0.5 * own


def _unit(ra, dec) -> np.ndarray:
    r, d = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)])


def match_track(ra, dec, pmra=None, pmdec=None) -> dict | None:
    """The registry stream a candidate's track (points in ICRS) coincides with, or None.

    For each registry stream, the mean angular distance from the candidate's points to its
    nearest track point is compared with max(:data:`MATCH_MIN_DEG`, :data:`MATCH_WIDTHS` x
    its width), and the median proper-motion difference at those points (where the registry
    has proper motions) with :data:`MATCH_PM`; the closest stream that passes both is named,
    a stream whose proper motions were compared before one known only by its positions.

    Where the registry has proper motions, the tracks are compared where both exist: a
    candidate's point whose nearest registry point is an end of the registry's track lies
    beyond the known stream (streams are often found longer than first mapped) and is
    neither for nor against it. At least half of the other points (of all points, for a
    stream known only by its positions: its coincidence with part of a longer track is
    not confirmed by anything), and at least :data:`MATCH_MIN_POINTS`, must lie within that
    distance, and they must run along the registry track (their nearest registry points
    span at least half the largest distance between them), not across it.

    Returns
    -------
    dict or None
        ``key``, ``name``, ``separation_deg`` (mean), ``pm_separation_mas_yr`` (None where
        the registry has no proper motion), ``overlap_fraction`` (share of the candidate's
        points on the registry track; below 0.5 when it runs beyond the track's ends),
        ``beyond_fraction`` (share beyond the registry track's ends), and ``also``: the other
        registry streams that pass the same tests, best first, each with ``key``, ``name``,
        ``separation_deg`` and ``pm_separation_mas_yr`` (streams overlap on the sky: a
        cluster's stream may lie along a wider stream known in proper motion too).
    """
    ra, dec = np.atleast_1d(ra).astype(float), np.atleast_1d(dec).astype(float)
    tree, owner, pms = _match_index()
    q = _unit(ra, dec)
    reach = 2 * np.sin(np.radians(max(MATCH_MIN_DEG, MATCH_WIDTHS * 1.5)) / 2)
    hits = tree.query_ball_point(q, reach)
    found = []
    for i in {int(owner[j]) for row in hits for j in row}:
        s = _ALL[i]
        mine = np.flatnonzero(owner == i)
        sub = tree.data[mine]
        chord = np.linalg.norm(q[:, None, :] - sub[None, :, :], axis=2)
        nearest = np.argmin(chord, axis=1)
        sep = np.degrees(2 * np.arcsin(np.clip(chord[np.arange(len(q)), nearest] / 2, 0, 1)))
        limit = max(MATCH_MIN_DEG, MATCH_WIDTHS * s.width_deg)
        beyond = ((nearest == 0) | (nearest == len(mine) - 1) if len(mine) >= 3
                  else np.zeros(len(q), bool))
        close = (sep <= limit) & ~beyond
        compared_in_pm = pmra is not None and s.has_pm
        # a candidate running beyond a stream known only by its positions is not confirmed
        # by the part that lies along it (a short stream beside a long one's path): half of
        # all its points then
        if close.sum() < max(MATCH_MIN_POINTS, 0.5 * ((~beyond).sum() if compared_in_pm
                                                      else len(q))):
            continue
        if not _runs_along(q, close, nearest):
            continue
        pm_sep = None
        if compared_in_pm:
            d = np.hypot(np.asarray(pmra)[close] - pms[mine[nearest[close]], 0],
                         np.asarray(pmdec)[close] - pms[mine[nearest[close]], 1])
            pm_sep = float(np.median(d))
            if pm_sep > MATCH_PM:
                continue
        cand = {"key": s.key, "name": s.name, "separation_deg": round(float(sep[close].mean()),
                                                                        3),
                "pm_separation_mas_yr": None if pm_sep is None else round(pm_sep, 3),
                "overlap_fraction": round(float(close.mean()), 3),
                "beyond_fraction": round(float(beyond.mean()), 3)}
        found.append(cand)
    if not found:
        return None
    # a match confirmed in proper motion beats one that could only be checked on the sky
    # (a registry stream without proper motions crossing the candidate's track)
    found.sort(key=lambda c: (c["pm_separation_mas_yr"] is None, c["separation_deg"], c["key"]))
    best = found[0]
    best["also"] = [{k: c[k] for k in ("key", "name", "separation_deg", "pm_separation_mas_yr")}
                    for c in found[1:]]
    return best
