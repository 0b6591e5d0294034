"""Stream registry: streamKey -> frame, extent, distance, proper motion, reference.

Two layers:

* the five keys the previous system accepted (``gd-1``, ``palomar-5``, ``jhelum``,
  ``orphan-chenab``, ``atlas-aliqa-uma``) with their aliases; they take precedence. GD-1 uses
  the published GD1Koposov10 rotation (Koposov et al. 2010, as in gala) so phi1/phi2 match the
  literature; the others use great-circle poles of galstreams tracks that agree with gala's
  frames (tests/test_registry.py);
* every default track of galstreams 1.2.1 (141 streams; ``galstreams_registry.json``, built by
  ``scripts/build_registry.py``), keyed by its name in lower case (``aau-atlas``,
  ``ngc5466``, ``willka-yaku``...). Their frames come from the track's fitted pole, with
  phi1 = 0 at the track midpoint.

Keys match case-insensitively, ignoring ``-``, ``_``, ``.`` and spaces; an unknown key gets
the closest matches.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from ..core.frames import StreamFrame, icrs_to_frame

GD1_KOPOSOV10 = StreamFrame(
    ((-0.4776303088, -0.1738432154, 0.8611897727),
     (0.510844589, -0.8524449229, 0.111245042),
     (0.7147776536, 0.4930681392, 0.4959603976)),
    name="GD1Koposov10",
)


@dataclass(frozen=True)
class StreamInfo:
    """One registry entry.

    Attributes
    ----------
    key : str
        Canonical key (as used in job messages).
    name : str
        Display name.
    frame : StreamFrame
        Stream-aligned frame.
    end_o, end_f : (ra, dec) in degrees
        Track end points.
    distance_kpc : float
        Heliocentric distance at the track midpoint.
    pm_mid : (pmra, pmdec) in mas/yr
        Track proper motion at the midpoint.
    width_deg : float
        Typical width (phi2 dispersion), degrees.
    reference : str
        Literature source of the track.
    aliases : tuple of str
    """

    key: str
    name: str
    frame: StreamFrame
    end_o: tuple[float, float]
    end_f: tuple[float, float]
    distance_kpc: float
    pm_mid: tuple[float, float]
    width_deg: float
    reference: str
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def phi2_half_width(self) -> float:
        """Half-width of the default query footprint across the stream, degrees:
        max(2, 5 x width), room for the track's curvature and for background."""
        return max(2.0, 5.0 * self.width_deg)

    @property
    def phi1_range(self) -> tuple[float, float]:
        p1, _ = icrs_to_frame(self.frame, np.array([self.end_o[0], self.end_f[0]]),
                              np.array([self.end_o[1], self.end_f[1]]))
        return float(min(p1)), float(max(p1))

    def to_dict(self) -> dict:
        lo, hi = self.phi1_range
        return {"key": self.key, "name": self.name, "frame": self.frame.to_dict(),
                "phi1_range_deg": [lo, hi], "length_deg": hi - lo,
                "distance_kpc": self.distance_kpc, "width_deg": self.width_deg,
                "footprint_deg2": (hi - lo) * 2 * self.phi2_half_width,
                "reference": self.reference, "aliases": list(self.aliases)}


def _entry(key, name, pole, mid, end_o, end_f, dist, pm_mid, width, ref, aliases, frame=None):
    frame = frame or StreamFrame.from_pole(pole[0], pole[1], mid[0], mid[1], name=f"{name} frame")
    return StreamInfo(key, name, frame, end_o, end_f, dist, pm_mid, width, ref, aliases)


_STREAMS = (
    _entry("gd-1", "GD-1", (34.5987, 29.7331), (200.4859, 58.3115), (124.0646, -7.9708),
           (219.5622, 58.2053), 10.0, (-8.41, -3.98), 0.2,
           "Price-Whelan & Bonaca 2018 (galstreams GD-1.pricewhelan2018); frame Koposov+2010",
           ("gd1",), frame=GD1_KOPOSOV10),
    _entry("palomar-5", "Pal 5", (319.2053, -56.4898), (229.0059, -0.1058), (242.0938, 6.8831),
           (224.6574, -4.8005), 20.5, (-2.76, -2.69), 0.2,
           "Price-Whelan et al. 2019 (galstreams Pal5.pricewhelan2019)", ("pal5", "pal-5")),
    _entry("jhelum", "Jhelum", (179.13081, -38.12553), (359.1292, -52.45747),
           (7.30419, -52.20137), (321.46969, -46.23994), 13.0, (7.35453, -3.58655), 0.5,
           "Bonaca et al. 2019 (galstreams Jhelum-a.bonaca2019; frame as gala's "
           "JhelumBonaca19)", ()),
    _entry("orphan-chenab", "Orphan-Chenab", (72.0, -14.0), (192.6716, -62.3979),
           (341.0157, -13.6516), (136.4365, 60.3418), 17.8, (-3.86, 2.39), 0.6,
           "Koposov et al. 2019 (galstreams Orphan-Chenab.koposov2019)",
           ("orphan", "ocs", "orphan-chenab-stream")),
    _entry("atlas-aliqa-uma", "ATLAS-Aliqa Uma", (74.2591, 47.9331), (19.8374, -26.8631),
           (8.9285, -20.2063), (40.8762, -38.4868), 21.5, (-0.10, -0.96), 0.25,
           "Li et al. 2021 (galstreams AAU-ATLAS.li2021 + AAU-AliqaUma.li2021)",
           ("aau", "atlas", "atlas-aliquauma")),
)


def _norm(key: str) -> str:
    return re.sub(r"[\s_\-.]", "", key.strip().lower())


def _slug(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def _galstreams() -> list[StreamInfo]:
    data = json.loads(resources.files(__package__).joinpath(
        "galstreams_registry.json").read_text())
    out = []
    for r in data["streams"]:
        try:
            out.append(_entry(_slug(r["name"]), r["name"], tuple(r["pole"]), tuple(r["mid"]),
                              tuple(r["end_o"]), tuple(r["end_f"]), r["distance_kpc"],
                              tuple(r["pm_mid"]), r["width_deg"] or DEFAULT_WIDTH_DEG,
                              f"galstreams track {r['track']} ({r['reference']}); "
                              f"{r['type']}", ()))
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
