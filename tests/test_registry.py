"""Stream registry: >= 100 streams offline, aliases, suggestions, agreement with gala frames."""

import astropy.coordinates as coord
import astropy.units as u
import numpy as np
import pytest

from ray_app.core.frames import frame_to_icrs, icrs_to_frame
from ray_app.data.registry import all_streams, get_stream

#: Documented tolerance between our frames' poles and gala's published frames (degrees).
POLE_TOLERANCE_DEG = 1.0


def test_at_least_100_streams_load_offline():
    streams = all_streams()
    assert len(streams) >= 100
    keys = [s.key for s in streams]
    assert len(keys) == len(set(keys))
    assert {"gd-1", "palomar-5", "jhelum", "orphan-chenab", "atlas-aliqa-uma"} <= set(keys)


@pytest.mark.parametrize("alias,key", [
    ("GD-1", "gd-1"), ("gd-1", "gd-1"), ("GD1", "gd-1"), ("gd_1", "gd-1"),
    ("Pal5", "palomar-5"), ("palomar-5", "palomar-5"), ("Pal 5", "palomar-5"),
    ("Jhelum", "jhelum"), ("orphan", "orphan-chenab"), ("Orphan-Chenab", "orphan-chenab"),
    ("ATLAS-Aliqa Uma", "atlas-aliqa-uma"), ("AAU-ATLAS", "aau-atlas"),
    ("NGC5466", "ngc5466"), ("Willka_Yaku", "willka-yaku"), ("M68-Fjorm", "m68-fjorm"),
])
def test_aliases(alias, key):
    assert get_stream(alias).key == key


@pytest.mark.parametrize("typo,suggested", [("gd-2", "gd-1"), ("palomar5x", "palomar-5"),
                                            ("ngc5446", "ngc5466")])
def test_unknown_keys_get_suggestions(typo, suggested):
    with pytest.raises(ValueError, match=f"did you mean .*{suggested}"):
        get_stream(typo)


def _pole(frame_to_icrs_fn):
    ra, dec = frame_to_icrs_fn()
    return coord.SkyCoord(ra, dec, unit="deg")


@pytest.mark.parametrize("key,gala_frame", [("gd-1", "GD1Koposov10"),
                                            ("palomar-5", "Pal5PriceWhelan18"),
                                            ("jhelum", "JhelumBonaca19"),
                                            ("orphan-chenab", "OrphanKoposov19")])
def test_frames_agree_with_gala(key, gala_frame):
    gc = pytest.importorskip("gala.coordinates")
    frame = get_stream(key).frame
    ra, dec = frame_to_icrs(frame, np.array([0.0]), np.array([90.0]))
    ours = coord.SkyCoord(ra[0], dec[0], unit="deg")
    theirs = coord.SkyCoord(phi1=0 * u.deg, phi2=90 * u.deg,
                            frame=getattr(gc, gala_frame)()).transform_to(coord.ICRS())
    sep = ours.separation(theirs).deg
    assert min(sep, 180 - sep) < POLE_TOLERANCE_DEG, f"{key}: pole {sep:.2f} deg from gala"
    # and the same stars get nearly the same phi2 (up to the frame's orientation)
    rng = np.random.default_rng(0)
    phi1, phi2 = rng.uniform(-20, 20, 50), rng.uniform(-3, 3, 50)
    c = coord.SkyCoord(phi1=phi1 * u.deg, phi2=phi2 * u.deg,
                       frame=getattr(gc, gala_frame)()).transform_to(coord.ICRS())
    _, our_phi2 = icrs_to_frame(frame, c.ra.deg, c.dec.deg)
    assert np.max(np.abs(np.abs(our_phi2) - np.abs(phi2))) < 2 * POLE_TOLERANCE_DEG


def test_galstreams_tracks_lie_on_their_frames():
    off = []
    for s in all_streams():
        _, phi2 = icrs_to_frame(s.frame, np.array([s.end_o[0], s.end_f[0]]),
                                np.array([s.end_o[1], s.end_f[1]]))
        off.append(np.max(np.abs(phi2)))
    off = np.array(off)
    assert np.mean(off < 10) > 0.95, f"{np.sum(off >= 10)} tracks far from their equator"
