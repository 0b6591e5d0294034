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
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources

import numpy as np

from ..core.frames import StreamFrame, fit_great_circle_pole, icrs_to_frame
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
