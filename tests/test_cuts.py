"""Catalogue cuts in the stars' motions, found from the data."""

import numpy as np
import pytest

from ray_app.core.cuts import EDGE_MIN_STARS, hard_edges, motion_cuts
from ray_app.core.features import stream_features
from ray_app.data.registry import get_stream
from ray_app.data.synthetic import synthetic_sky


@pytest.mark.parametrize("n", [2000, 50000])
def test_a_box_cut_is_found_on_both_sides_and_natural_tails_are_not(rng, n):
    # a cut through a distribution's bulk, at its peak, and (with enough stars that its
    # last 200 lie close to it) out in its tail; with 2000 stars a cut at 2 sigma has the
    # density rising four-fold over them, which reads as a thinning tail (few stars to
    # correct there)
    x = rng.normal(0.0, 1.0, 20 * n)
    for lo, hi in ((-0.5, 0.7), (-1.5, 0.0)) + (((-2.0, 2.0),) if n > 2000 else ()):
        cut = x[(x > lo) & (x < hi)][:n]
        low, high = hard_edges(cut)
        assert low == pytest.approx(lo, abs=0.02) and high == pytest.approx(hi, abs=0.02)
    # tails that thin out: normal, heavy (Student t), and the linear taper of a box's
    # corner seen along a rotated axis
    u = rng.uniform(0, 1, (n, 2))
    for tail in (rng.normal(0, 1, n), rng.standard_t(3, n),
                 u @ np.array([np.cos(0.5), np.sin(0.5)])):
        assert hard_edges(tail) == (None, None)
    # an exponential thins out above; at 0, where its density peaks, it is cut
    assert hard_edges(rng.exponential(1.0, n)) == (pytest.approx(0.0, abs=0.01), None)
    # one side only
    assert hard_edges(x[x < 1.0][:n]) == (None, pytest.approx(1.0, abs=0.01))


def test_too_few_stars_cannot_show_a_cut(rng):
    x = rng.uniform(0, 1, EDGE_MIN_STARS - 1)
    assert hard_edges(x) == (None, None)
    assert hard_edges(np.append(x, [np.nan] * 10)) == (None, None)
    assert hard_edges(rng.uniform(0, 1, EDGE_MIN_STARS)) != (None, None)


def test_a_proper_motion_box_is_found_and_turned_into_the_frame_star_by_star():
    gd1 = get_stream("gd-1")
    cols = synthetic_sky(gd1.footprint, 20000, [], seed=3, cuts=gd1.default_cuts)
    box = ((cols["pmra"] > -4) & (cols["pmra"] < 1) & (cols["pmdec"] > -4)
           & (cols["pmdec"] < 0))
    cols = {name: np.asarray(v)[box] for name, v in cols.items()}
    raw, _ = stream_features(gd1.frame, cols["ra"], cols["dec"], cols["pmra"], cols["pmdec"],
                             cols["parallax"])
    cuts = motion_cuts(gd1.frame, cols["ra"], cols["dec"], cols["pmra"], cols["pmdec"], raw)
    found = {(c.column, c.side): c.value for c in cuts}
    assert found == pytest.approx({("pmra", "max"): 1, ("pmra", "min"): -4,
                                   ("pmdec", "max"): 0, ("pmdec", "min"): -4}, abs=0.02)
    kin = np.column_stack([raw["pm_phi1_cosphi2"], raw["pm_phi2"], raw["parallax"]])
    for c in cuts:
        normal = np.broadcast_to(c.normal, kin.shape)
        assert np.allclose(np.linalg.norm(normal, axis=1), 1.0)
        # the cut in the frame is the cut in the sky: normal . kin is the column, signed
        column = cols[c.column] if c.side == "max" else -cols[c.column]
        assert np.allclose(np.sum(normal * kin, axis=1), column, atol=1e-9)
        assert np.all(np.sum(normal * kin, axis=1) <= c.offset + 1e-9)
    # an unselected sky has natural tails: no cut (the parallax limit is the model's own)
    cols = synthetic_sky(gd1.footprint, 20000, [], seed=3, cuts=gd1.default_cuts)
    raw, _ = stream_features(gd1.frame, cols["ra"], cols["dec"], cols["pmra"], cols["pmdec"],
                             cols["parallax"])
    assert motion_cuts(gd1.frame, cols["ra"], cols["dec"], cols["pmra"], cols["pmdec"],
                       raw) == []
