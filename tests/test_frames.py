"""Stream frames against astropy and against the published GD-1 coordinates in the data."""

import astropy.coordinates as coord
import astropy.units as u
import numpy as np
import pytest

from ray_app.core.frames import StreamFrame, fit_great_circle_pole, frame_to_icrs, icrs_to_frame
from ray_app.data.registry import GD1_KOPOSOV10, get_stream


def test_gd1_positions_match_published_phi(gd1_field):
    t, _ = gd1_field
    phi1, phi2 = icrs_to_frame(GD1_KOPOSOV10, t["ra"].to_numpy(), t["dec"].to_numpy())
    np.testing.assert_allclose(phi1, t["phi1"].to_numpy(), atol=1e-7)
    np.testing.assert_allclose(phi2, t["phi2"].to_numpy(), atol=1e-7)


class _MatrixFrame(coord.BaseCoordinateFrame):
    """An astropy frame defined only by our rotation matrix: astropy does the rest."""

    default_representation = coord.SphericalRepresentation
    default_differential = coord.SphericalCosLatDifferential


_TEST_FRAME = StreamFrame.from_pole(34.6, 29.7, 200.0, 58.0)


@coord.frame_transform_graph.transform(coord.StaticMatrixTransform, coord.ICRS, _MatrixFrame)
def _icrs_to_matrix_frame():
    return _TEST_FRAME.rotation


def test_proper_motions_match_astropy(rng):
    """Our rotation of positions and proper motions equals astropy's differential transform."""
    ra, dec = rng.uniform(0, 360, 200), np.degrees(np.arcsin(rng.uniform(-0.95, 0.95, 200)))
    pmra, pmdec = rng.normal(0, 5, 200), rng.normal(0, 5, 200)
    c = coord.SkyCoord(ra=ra * u.deg, dec=dec * u.deg, pm_ra_cosdec=pmra * u.mas / u.yr,
                       pm_dec=pmdec * u.mas / u.yr).transform_to(_MatrixFrame())
    phi1, phi2, pm1, pm2 = icrs_to_frame(_TEST_FRAME, ra, dec, pmra, pmdec)
    sph = c.represent_as(coord.SphericalRepresentation, coord.SphericalCosLatDifferential)
    dif = sph.differentials["s"]
    np.testing.assert_allclose(phi1, sph.lon.wrap_at(180 * u.deg).deg, atol=1e-8)
    np.testing.assert_allclose(phi2, sph.lat.deg, atol=1e-8)
    np.testing.assert_allclose(pm1, dif.d_lon_coslat.to_value(u.mas / u.yr), atol=1e-8)
    np.testing.assert_allclose(pm2, dif.d_lat.to_value(u.mas / u.yr), atol=1e-8)


def test_round_trip(rng):
    frame = get_stream("jhelum").frame
    ra, dec = rng.uniform(0, 360, 100), rng.uniform(-80, 80, 100)
    pmra, pmdec = rng.normal(0, 3, 100), rng.normal(0, 3, 100)
    back = frame_to_icrs(frame, *icrs_to_frame(frame, ra, dec, pmra, pmdec))
    np.testing.assert_allclose(back[0], ra, atol=1e-9)
    np.testing.assert_allclose(back[1], dec, atol=1e-9)
    np.testing.assert_allclose(back[2], pmra, atol=1e-9)
    np.testing.assert_allclose(back[3], pmdec, atol=1e-9)


def test_registry_frames_follow_their_tracks():
    legacy = ("gd-1", "palomar-5", "jhelum", "orphan-chenab", "atlas-aliqa-uma")
    for s in (get_stream(k) for k in legacy):
        _, phi2 = icrs_to_frame(s.frame, s.track.ra, s.track.dec)
        assert np.all(np.abs(phi2) < 6.0), s.key  # the whole track near the equator


def test_pole_fit_recovers_gd1(gd1_field):
    _, members = gd1_field
    pole = fit_great_circle_pole(members["ra"].to_numpy(), members["dec"].to_numpy())
    sep = coord.SkyCoord(*pole, unit="deg").separation(coord.SkyCoord(34.5987, 29.7331,
                                                                      unit="deg"))
    assert sep.deg < 1.0


def test_bad_frames_rejected():
    with pytest.raises(ValueError, match="rotation"):
        StreamFrame(((1, 0, 0), (0, 1, 0), (0, 0, -1)))
    with pytest.raises(ValueError, match="pole"):
        StreamFrame.from_pole(10, 20, 10, 20)


def test_unknown_key_suggests():
    with pytest.raises(ValueError, match="did you mean .*gd-1"):
        get_stream("gd-2")
    assert get_stream("GD1").key == get_stream("gd-1").key == get_stream("GD-1").key
    assert get_stream("Pal5").key == "palomar-5"
