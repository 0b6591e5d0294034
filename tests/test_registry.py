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
        _, phi2 = icrs_to_frame(s.frame, s.track.ra, s.track.dec)
        off.append(np.max(np.abs(phi2)))
    off = np.array(off)
    assert np.mean(off < 10) > 0.95, f"{np.sum(off >= 10)} tracks far from their equator"


def test_every_stream_has_a_6d_track_footprint_and_cuts():
    for s in all_streams():
        t = s.track
        assert len(t) >= 3 and np.all(np.isfinite(t.ra)) and np.all(np.isfinite(t.dec)), s.key
        lo, hi = s.phi1_range
        assert hi > lo, s.key
        fp = s.footprint
        # the footprint holds its own track, and not the sky 10 deg off it
        assert fp.contains(t.ra, t.dec).all(), s.key
        assert 0 < fp.area_deg2 < 4 * (hi - lo + 1) * s.phi2_half_width, s.key
        assert s.default_cuts.parallax_max >= 1.0
    gd1 = get_stream("gd-1")
    assert np.all(np.isfinite(gd1.track.distance_kpc)) and np.all(np.isfinite(gd1.track.pmra))


def test_footprint_contains_the_real_gd1_members(gd1_field):
    _, members = gd1_field
    inside = get_stream("gd-1").footprint.contains(members["ra"].to_numpy(),
                                                   members["dec"].to_numpy())
    assert inside.mean() > 0.97
    # the track's (observed) proper motion follows the members' along the stream
    s = get_stream("gd-1")
    p1, _, pm1, pm2 = icrs_to_frame(s.frame, members["ra"].to_numpy(), members["dec"].to_numpy(),
                                    members["pmra"].to_numpy(), members["pmdec"].to_numpy())
    t = s.track_frame
    assert np.median(np.abs(pm1 - np.interp(p1, t["phi1"], t["pm_phi1_cosphi2"]))) < 1.0
    assert np.median(np.abs(pm2 - np.interp(p1, t["phi1"], t["pm_phi2"]))) < 1.0


def test_tracks_pass_through_real_starstream_members(real_data):
    """StarStream's Pal 5 members (DR3) lie on our Pal 5 track, within its footprint."""
    import pyarrow.parquet as pq

    t = pq.read_table(real_data / "starstream_dr3_gc_members.parquet")
    pal5 = (t.column("gc").to_numpy(zero_copy_only=False) == "Pal_5")
    ra, dec = t.column("ra").to_numpy()[pal5], t.column("dec").to_numpy()[pal5]
    s = get_stream("pal5")
    phi1, phi2 = icrs_to_frame(s.frame, ra, dec)
    track = np.interp(phi1, s.track_frame["phi1"], s.track_frame["phi2"])
    assert pal5.sum() > 100 and np.median(np.abs(phi2 - track)) < 0.5
