"""Membership probabilities: a stream + field mixture grown from a persistence core."""

import numpy as np
import pytest

from ray_app.core.cuts import KinematicCut
from ray_app.core.features import stream_features
from ray_app.core.membership import (
    CMD_BIN,
    CMD_FLOOR,
    CMD_SHIFT_ROUNDS,
    CMD_SMOOTH,
    _conditional_log_density,
    _cut_geometry,
    _fit_cmd_shift,
    _fit_width,
    _fit_width_profile,
    _hess_weights,
    _knn_log_density,
    _learnt_log_densities,
    _log_cmd,
    _log_cut_mass,
    _log_quality,
    _log_sky,
    _profile_at,
    member_extent,
    membership_probabilities,
    validate_member_probability,
)
from ray_app.data.catalogue import CatalogueError, parse_photometry, photometry_columns
from ray_app.data.registry import get_stream
from ray_app.data.synthetic import Injection, synthetic_sky
from ray_app.io.outputs import merge_columns
from ray_app.pipeline.runner import feature_errors


@pytest.fixture(scope="module")
def sky():
    gd1 = get_stream("gd-1")
    cols = synthetic_sky(gd1.footprint, 12000, [Injection(gd1, 500)], seed=7,
                         cuts=gd1.default_cuts)
    raw, _ = stream_features(gd1.frame, cols["ra"], cols["dec"], cols["pmra"], cols["pmdec"],
                             cols["parallax"])
    return gd1, cols, raw


def _lump_core(raw, truth, rng):
    """A core like persistence gives: the stream's densest stretch plus some field."""
    lump = np.flatnonzero(truth & (raw["phi1"] > -45) & (raw["phi1"] < -30))
    near = np.flatnonzero(~truth & (raw["phi1"] > -45) & (raw["phi1"] < -30)
                          & (np.abs(raw["phi2"]) < 0.5))
    return np.union1d(lump, rng.choice(near, size=min(len(near), len(lump) // 5),
                                       replace=False))


def _scores(p, truth, threshold=0.5):
    sel = p >= threshold
    tp = np.sum(sel & truth)
    return tp / max(sel.sum(), 1), tp / truth.sum()


@pytest.mark.parametrize("use_photometry", [False, True])
def test_members_grow_from_a_lump_to_the_stream(sky, rng, use_photometry):
    gd1, cols, raw = sky
    truth = cols["is_stream"]
    core = _lump_core(raw, truth, rng)
    core_precision, core_recall = _scores(np.isin(np.arange(len(truth)), core), truth)
    phot = (cols["phot_g_mean_mag"], cols["bp_rp"]) if use_photometry else None
    m = membership_probabilities(raw, core, feature_errors(cols), phot,
                                 base_track=gd1.detection_track)
    precision, recall = _scores(m.probability, truth)
    assert core_recall < 0.5  # the seed is a lump...
    assert recall > 0.85 and precision > 0.85, (precision, recall)  # ...the members a stream
    assert m.photometry is use_photometry
    assert m.phi1_range[1] - m.phi1_range[0] > 60
    assert 0.1 < m.widths["phi2"] < 0.4  # injected at the registry width, 0.2 deg
    assert m.track.points()[0]["phi1"] == pytest.approx(m.phi1_range[0], abs=1e-3)


def test_a_core_found_in_a_tilted_frame_grows_to_the_stream_not_the_field(sky, rng):
    # the core of a frame 8 deg off the stream runs across that frame (2 deg of phi2 over
    # its 15 deg): its width is its spread about its own track, not about one median
    gd1, cols, raw = sky
    truth = cols["is_stream"]
    m = membership_probabilities(raw, _lump_core(raw, truth, rng), feature_errors(cols),
                                 base_track=gd1.detection_track.tilted(8.0))
    precision, recall = _scores(m.probability, truth)
    assert recall > 0.85 and precision > 0.85, (precision, recall)
    assert 0.1 < m.widths["phi2"] < 0.4


def test_a_distant_streams_core_from_a_tilted_frame_does_not_swallow_the_field(rng):
    # ATLAS-Aliqa Uma at 21.5 kpc: proper motions barely tell it from the field, so the sky
    # position must; its core from a frame 8 deg off, a fifth of it field stars, once gave
    # widths of ~3 deg (the tilt taken for width) and a "stream" of most of the job
    aau = get_stream("atlas-aliqa-uma")
    cols = synthetic_sky(aau.footprint, 12000, [Injection(aau, 800)], seed=1,
                         cuts=aau.default_cuts)
    raw, _ = stream_features(aau.frame, cols["ra"], cols["dec"], cols["pmra"], cols["pmdec"],
                             cols["parallax"])
    truth = cols["is_stream"]
    stretch = (raw["phi1"] > -5) & (raw["phi1"] < 15)
    lump = np.flatnonzero(truth & stretch)
    field = rng.choice(np.flatnonzero(~truth & stretch & (np.abs(raw["phi2"]) < 3)),
                       size=len(lump) // 4, replace=False)
    m = membership_probabilities(raw, np.union1d(lump, field), feature_errors(cols),
                                 base_track=aau.detection_track.tilted(-8.0))
    precision, recall = _scores(m.probability, truth)
    assert not m.failed and 0.15 < m.widths["phi2"] < 0.4  # injected 0.25 deg wide
    assert precision > 0.7 and recall > 0.8, (precision, recall)


def test_a_core_spread_over_the_footprint_leaves_the_field_a_control_region(sky, rng):
    # a core half of it field stars from all over the +-5 deg footprint: 2.5 x its spread
    # would let the stream be as wide as the footprint, with no field beside it to learn from
    gd1, cols, raw = sky
    truth = cols["is_stream"]
    stretch = (raw["phi1"] > -45) & (raw["phi1"] < -30)
    lump = np.flatnonzero(truth & stretch)
    field = rng.choice(np.flatnonzero(~truth & stretch), size=len(lump), replace=False)
    m = membership_probabilities(raw, np.union1d(lump, field), feature_errors(cols),
                                 base_track=gd1.detection_track)
    precision, recall = _scores(m.probability, truth)
    assert not m.failed and m.widths["phi2"] < 1.0
    assert precision > 0.5 and recall > 0.8, (precision, recall)


def test_stars_without_photometry_are_not_members(sky, rng):
    gd1, cols, raw = sky
    truth = cols["is_stream"]
    g = cols["phot_g_mean_mag"].copy()
    g[::3] = np.nan
    m = membership_probabilities(raw, _lump_core(raw, truth, rng), feature_errors(cols),
                                 (g, cols["bp_rp"]), base_track=gd1.detection_track)
    assert np.all(m.probability[np.isnan(g)] == 0)
    assert np.sum(m.probability[truth & np.isfinite(g)] >= 0.5) > 0.8 * np.sum(
        truth & np.isfinite(g))


@pytest.mark.parametrize("use_photometry", [False, True])
def test_the_quality_term_is_used_only_without_photometry(sky, rng, use_photometry):
    gd1, cols, raw = sky
    truth = cols["is_stream"]
    phot = (cols["phot_g_mean_mag"], cols["bp_rp"]) if use_photometry else None
    core = _lump_core(raw, truth, rng)
    m = membership_probabilities(raw, core, feature_errors(cols), phot,
                                 base_track=gd1.detection_track)
    assert m.quality is not use_photometry
    # no error columns: no quality to learn from
    assert not membership_probabilities(raw, core, None, None,
                                        base_track=gd1.detection_track).quality


def test_the_quality_density_follows_the_streams_own_errors(rng):
    # field errors spread over two decades, the stream's bunched (one population, one
    # distance): the learnt ratio favours the stream's range and disfavours the rest
    field = rng.uniform(np.log(0.03), np.log(3.0), 20000)
    stream = rng.normal(np.log(0.4), 0.15, 500)
    q = np.concatenate([field, stream])
    w = np.r_[np.zeros(len(field)), np.ones(len(stream))]
    control = w == 0
    ls, lb = _log_quality(q, w, control)
    ratio = ls - lb
    at = np.abs(q - np.log(0.4)) < 0.1
    far = (q < np.log(0.08)) | (q > np.log(1.5))
    assert np.median(ratio[at]) > np.log(5)
    assert np.all(ratio[far] < np.log(0.2))
    # the field's density mixed into the stream's: far from its locus a star is
    # down-weighted, never excluded
    assert np.all(np.isfinite(ratio)) and ratio.min() > np.log(0.05) - 0.1


@pytest.mark.parametrize("width", [0.0, 0.1, 0.3])
def test_fit_width_deconvolves_star_by_star(rng, width):
    # errors from 0.05 to 2: removing one typical error from the spread leaves a width
    # far off; the star-by-star deconvolution recovers it
    n = 3000
    e = np.exp(rng.uniform(np.log(0.05), np.log(2.0), n))
    r = rng.normal(0, np.sqrt(width ** 2 + e ** 2))
    w = np.ones(n)
    got = _fit_width(r, e ** 2, w, 0.02, 2.0)
    assert got == pytest.approx(max(width, 0.02), abs=0.04)
    # 10 % field stars with full weight far out do not set it
    r_out = np.r_[r, rng.uniform(-20, 20, n // 10)]
    e_out = np.r_[e, np.full(n // 10, 0.1)]
    assert _fit_width(r_out, e_out ** 2, np.ones(len(r_out)), 0.02, 2.0) == pytest.approx(
        max(width, 0.02), abs=0.08)
    # the cap holds
    assert _fit_width(r * 100, e ** 2, w, 0.02, 2.0) == 2.0


def test_a_width_profile_follows_a_widening_stream_and_a_sparse_one_gets_one_width(rng):
    # 0.1 deg at phi1 -50 to 0.5 at +50, errors 0.05-0.3: each 10 deg bin gets its own width
    n = 4000
    phi1 = rng.uniform(-50, 50, n)
    true = 0.1 + 0.4 * (phi1 + 50) / 100
    e = rng.uniform(0.05, 0.3, n)
    r = rng.normal(0, np.hypot(true, e))
    profile = _fit_width_profile(phi1, r, e ** 2, np.ones(n), 0.02, 2.0)
    at = np.array([-45.0, -25.0, 0.0, 25.0, 45.0])
    assert len(profile[0]) >= 8
    np.testing.assert_allclose(_profile_at(profile, at), 0.1 + 0.4 * (at + 50) / 100, rtol=0.2)
    # field stars at ~0 weight neither set a bin nor move a width
    far = rng.uniform(-50, 50, 20000)
    profile_f = _fit_width_profile(np.r_[phi1, far], np.r_[r, rng.uniform(-5, 5, 20000)],
                                   np.r_[e ** 2, np.full(20000, 0.01)],
                                   np.r_[np.ones(n), np.full(20000, 1e-4)], 0.02, 2.0)
    np.testing.assert_allclose(_profile_at(profile_f, at), _profile_at(profile, at), rtol=0.05)
    # fewer stars than two bins' worth: one width for the whole stream, within the limits
    few = rng.choice(n, 60, replace=False)
    nodes, widths = _fit_width_profile(phi1[few], r[few], e[few] ** 2, np.ones(60), 0.02, 0.2)
    assert len(widths) == 1 and widths[0] == 0.2  # the cap holds


def test_members_follow_a_stream_whose_width_grows_fivefold(rng):
    # GD-1 injected 0.1 deg wide at its low-phi1 end and 0.5 at its high one: one width for
    # the whole stream (~0.25 deg) loses the wide end's outer members (0.94-0.95 of those
    # beyond phi1 -30 kept over three seeds, against 0.975-0.99 with a width along phi1)
    gd1 = get_stream("gd-1")
    cols = synthetic_sky(gd1.footprint, 12000, [Injection(gd1, 800, width_deg=0.1,
                                                          width_end_deg=0.5)],
                         seed=11, cuts=gd1.default_cuts)
    raw, _ = stream_features(gd1.frame, cols["ra"], cols["dec"], cols["pmra"], cols["pmdec"],
                             cols["parallax"])
    truth = cols["is_stream"]
    m = membership_probabilities(raw, _lump_core(raw, truth, rng), feature_errors(cols),
                                 base_track=gd1.detection_track)
    precision, recall = _scores(m.probability, truth)
    assert recall > 0.85 and precision > 0.85, (precision, recall)
    narrow, wide = m.track.width_at(np.array([-75.0, -5.0]), "phi2")
    assert 0.07 < narrow < 0.2 and 0.3 < wide < 0.7, (narrow, wide)  # 0.16 and 0.44 there
    far = truth & (raw["phi1"] > -30)
    assert np.mean(m.probability[far] >= 0.5) > 0.97


def test_a_stream_that_ends_inside_its_footprint_lends_no_density_beyond_its_end(rng):
    # Orphan-Chenab injected over the first 60 % of its registry track, astrometry only: a
    # stream density held at half its mean over the whole track made 18-37 field stars
    # beyond the end members (seeds 1-3); the members' own histogram, each star's weight
    # left out, gives 2-6
    info = get_stream("orphan-chenab")
    lo, hi = info.phi1_range
    end = lo + 0.6 * (hi - lo)
    cols = synthetic_sky(info.footprint, 20000, [Injection(info, 600, phi1_range_deg=(lo, end))],
                         seed=2, cuts=info.default_cuts)
    raw, _ = stream_features(info.frame, cols["ra"], cols["dec"], cols["pmra"], cols["pmdec"],
                             cols["parallax"])
    truth = cols["is_stream"]
    a, b = np.quantile(raw["phi1"][truth], [0.4, 0.6])
    lump = np.flatnonzero(truth & (raw["phi1"] > a) & (raw["phi1"] < b))
    beside = np.flatnonzero(~truth & (raw["phi1"] > a) & (raw["phi1"] < b)
                            & (np.abs(raw["phi2"] - np.median(raw["phi2"][lump])) < 0.5))
    core = np.union1d(lump, rng.choice(beside, size=len(lump) // 5, replace=False))
    m = membership_probabilities(raw, core, feature_errors(cols),
                                 base_track=info.detection_track)
    precision, recall = _scores(m.probability, truth)
    assert recall > 0.8 and precision > 0.85, (precision, recall)
    assert np.sum((m.probability >= 0.5) & (raw["phi1"] > end + 2)) <= 12


def test_a_tiny_core_is_kept_as_it_is(sky):
    _, _, raw = sky
    m = membership_probabilities(raw, np.array([3, 5, 8]))
    assert m.track is None and set(np.flatnonzero(m.probability)) == {3, 5, 8}


@pytest.mark.parametrize("value", [0, -0.1, 1.01, float("nan"), "0.5", True])
def test_member_probability_validation(value):
    with pytest.raises(ValueError, match=r"memberProbability must be a number in \(0, 1\]"):
        validate_member_probability(value)


def test_photometry_spec_and_columns():
    cols = {"g": np.array([19.0, 20.0]), "i": np.array([18.5, 19.2]),
            "phot_g_mean_mag": np.array([18.0, 19.0]), "bp_rp": np.array([0.6, 0.8])}
    spec = parse_photometry("g,g-i")
    mag, colour, desc = photometry_columns(cols, spec)
    assert np.allclose(colour, [0.5, 0.8]) and desc == {"magnitude": "g", "colour": "g-i"}
    mag, colour, desc = photometry_columns(cols, None)  # Gaia's G and BP-RP by default
    assert desc["colour"] == "bp_rp"
    assert photometry_columns(cols, parse_photometry("none")) is None
    assert photometry_columns({"g": cols["g"]}, None) is None
    assert parse_photometry({"magnitude": "g", "colour": "bp_rp"})["colour"] == "bp_rp"
    for bad in ("g", "g,", "g,a-b-c", {"magnitude": "g"}, 5):
        with pytest.raises(ValueError, match="photometry"):
            parse_photometry(bad)
    with pytest.raises(CatalogueError, match="'r'"):
        photometry_columns(cols, parse_photometry("r,g-i"))


def test_input_columns_are_never_overwritten():
    merged, renamed = merge_columns({"phi1": [1], "ra": [2], "input_phi1": [3]},
                                    {"phi1": [9], "candidate": [0]})
    assert merged["phi1"] == [9] and merged["input_input_phi1"] == [1]
    assert merged["input_phi1"] == [3] and merged["ra"] == [2]
    assert renamed == {"phi1": "input_input_phi1"}


def test_the_fields_conditional_density_follows_a_sharp_sequence(rng):
    # half the field on a sharp sequence in the conditioning column (a colour-magnitude
    # sequence) moving slowly, half broad and fast: at the sequence the field's motions are
    # the slow ones. A ratio of two kNN densities (4-d over 1-d) smooths the joint more
    # widely than the marginal and under-states the field there by ~0.3 in log.
    n = 6000
    on = rng.uniform(size=n) < 0.5
    c = np.where(on, rng.normal(0, 0.05, n), rng.normal(0, 1.0, n))
    kin = np.where(on[:, None], rng.normal(0, 0.3, (n, 3)), rng.normal(0, 3.0, (n, 3)))
    query = np.column_stack([rng.normal(0, 0.3, (400, 3)), rng.normal(0, 0.05, 400)])

    def log_normal3(x, sd):
        return -0.5 * np.sum(x ** 2, axis=1) / sd ** 2 - 1.5 * np.log(2 * np.pi * sd ** 2)

    w_on = 0.5 * np.exp(-0.5 * (query[:, 3] / 0.05) ** 2) / 0.05
    w_off = 0.5 * np.exp(-0.5 * query[:, 3] ** 2)
    truth = np.log((w_on * np.exp(log_normal3(query[:, :3], 0.3))
                    + w_off * np.exp(log_normal3(query[:, :3], 3.0))) / (w_on + w_off))
    est = _conditional_log_density(np.column_stack([kin, c]), query,
                                   np.zeros(len(query), bool), 1)
    assert abs(np.median(est - truth)) < 0.1
    # a reference star does not count itself
    ref = np.column_stack([kin, c])
    self_est = _conditional_log_density(ref[:400], ref[:400], np.ones(400, bool), 1)
    assert np.all(np.isfinite(self_est))


def test_a_learnt_density_leaves_the_star_itself_out(rng):
    # 300 stream stars on a tight locus, one full-weight star far off it among the field:
    # the stream's density there is the field's floor share, not the star's own weight
    field = rng.uniform([-1.0, 14.0], [3.0, 21.0], (20000, 2))
    stream = np.column_stack([rng.normal(0.6, 0.03, 300), rng.uniform(17, 20, 300)])
    pts = np.vstack([field, stream, [[2.5, 15.0]]])
    w = np.r_[np.zeros(len(field)), np.ones(len(stream)), 1.0]
    control = w == 0
    c_edges = np.arange(-1.1, 3.1 + CMD_BIN[0], CMD_BIN[0])
    m_edges = np.arange(13.5, 21.5 + CMD_BIN[1], CMD_BIN[1])
    ls, lb = _learnt_log_densities(pts, (c_edges, m_edges),
                                   (CMD_SMOOTH[0] / CMD_BIN[0], CMD_SMOOTH[1] / CMD_BIN[1]),
                                   w, control, np.ones(len(pts), bool))
    assert ls[-1] - lb[-1] == pytest.approx(np.log(CMD_FLOOR), abs=0.1)
    # the stream's stars still see each other
    assert np.median(ls[len(field):-1] - lb[len(field):-1]) > np.log(10)


def test_the_streams_colour_magnitude_density_is_the_field_subtracted_excess(rng):
    # a field with a dense sequence of its own (colour 0.9) beside a stream's (0.6), and a
    # model that holds the field's in-band stars of that sequence at probability 0.5 (where
    # EM settles when they feed the stream's histogram): the stream's density learnt from
    # those probabilities sits on the field's sequence; the background-subtracted one, from
    # kinematic weights that do not know the colours, does not
    n_f, n_s = 30000, 300
    seq = rng.random(n_f) < 0.5
    colour = np.where(seq, rng.normal(0.9, 0.03, n_f), rng.uniform(0.3, 1.5, n_f))
    field = np.column_stack([colour, rng.uniform(16, 21, n_f)])
    stream = np.column_stack([rng.normal(0.6, 0.03, n_s), rng.uniform(18, 20, n_s)])
    pts = np.vstack([field, stream])
    phi2 = np.r_[rng.uniform(-5, 5, n_f), rng.normal(0, 0.2, n_s)]
    is_stream = np.r_[np.zeros(n_f, bool), np.ones(n_s, bool)]
    in_band_seq = np.r_[seq, np.zeros(n_s, bool)] & (np.abs(phi2) < 0.4)
    w = np.where(is_stream, 0.9, np.where(in_band_seq, 0.5, 0.0))
    control = np.abs(phi2) > 1.0
    # kinematics: the stream's stars match the track, the field's scatter (whatever colour)
    log_kin = np.where(is_stream, 3.0, rng.normal(-2.0, 1.5, len(pts)))
    cmd = (pts[:, 1], pts[:, 0], np.ones(len(pts), bool))
    w_on, w_off = _hess_weights(phi2, 0.2, w, control, log_kin)
    ls, lb = _log_cmd(cmd, w_on, control, w_off)
    ls_em, lb_em = _log_cmd(cmd, w, control)
    field_seq = in_band_seq & (pts[:, 1] > 18) & (pts[:, 1] < 20)
    assert np.median(ls_em[field_seq] - lb_em[field_seq]) > 0  # what EM does
    assert np.median(ls[field_seq] - lb[field_seq]) < np.log(0.5)
    assert np.median(ls[is_stream] - lb[is_stream]) > np.log(10)


@pytest.mark.parametrize("gradient", [0.0, 2.0])
def test_the_streams_distance_gradient_is_measured_from_its_locus(rng, gradient):
    # an old population's locus (a turnoff at M 4, the main sequence redder below it, the
    # subgiants redder above) whose distance modulus grows by `gradient` mag over 100 deg of
    # phi1, in a field spread over the colour-magnitude plane, both cut at G 21: the fitted
    # shifts follow the distance modulus; without a gradient they stay at 0
    n_f, n_s = 20000, 1500
    phi1_s = rng.uniform(0, 100, n_s)
    abs_mag = rng.uniform(2.0, 7.0, n_s)
    mu = 15.0 + gradient * phi1_s / 100
    colour = np.where(abs_mag > 4, 0.55 + 0.15 * (abs_mag - 4), 0.55 + 0.3 * (4 - abs_mag))
    stream = np.column_stack([colour + rng.normal(0, 0.02, n_s), abs_mag + mu])
    field = np.column_stack([rng.uniform(0.2, 1.6, n_f), rng.uniform(14, 21, n_f)])
    pts = np.vstack([field, stream])
    phi1 = np.r_[rng.uniform(0, 100, n_f), phi1_s]
    phi2 = np.r_[rng.uniform(-5, 5, n_f), rng.normal(0, 0.2, n_s)]
    is_stream = np.r_[np.zeros(n_f, bool), np.ones(n_s, bool)]
    kept = pts[:, 1] < 21
    pts, phi1, phi2, is_stream = pts[kept], phi1[kept], phi2[kept], is_stream[kept]
    w = np.where(is_stream, 0.9, 0.0)
    control = np.abs(phi2) > 1.0
    log_kin = np.where(is_stream, 3.0, rng.normal(-2.0, 1.5, len(pts)))
    w_on, w_off = _hess_weights(phi2, 0.2, w, control, log_kin)
    cmd = (pts[:, 1], pts[:, 0], np.ones(len(pts), bool))
    profile = None
    for _ in range(CMD_SHIFT_ROUNDS * 3):  # as in three EM iterations
        profile = _fit_cmd_shift(cmd, phi1, w_on, w_off, w, control, profile)
    nodes, shifts = profile
    assert len(nodes) >= 5
    off = shifts - gradient * nodes / 100  # the shifts are relative: up to a constant
    assert np.max(np.abs(off - off.mean())) < 0.15
    # too few members for two bins: no profile to measure
    sparse = np.where(is_stream & (rng.random(len(pts)) < 0.1), 0.9, 0.0)
    assert _fit_cmd_shift(cmd, phi1, w_on, w_off, sparse, control) is None


def test_the_fields_density_is_not_smoothed_away_where_a_stream_sits(rng):
    # a field whose stars of one narrow colour range (5 %: distant halo turnoff stars) sit in a
    # proper-motion clump 10x narrower than the rest, where a halo stream would: a wide kNN
    # box averages the clump with the rest and under-states it (1.2 in log at 24
    # neighbours), so every membership there is over-confident; at FIELD_K it is 0.8
    n = 10000
    cond = rng.uniform(0, 1, (n, 2))
    halo = cond[:, 0] < 0.05
    kin = np.where(halo[:, None], rng.normal(0, 0.1, (n, 3)), rng.normal(0, 1, (n, 3)))
    q_kin = rng.normal(0, 0.1, (500, 3))
    query = np.column_stack([q_kin, rng.uniform(0, 0.05, 500), rng.uniform(0, 1, 500)])
    true = -0.5 * np.sum((q_kin / 0.1) ** 2, axis=1) - 3 * np.log(np.sqrt(2 * np.pi) * 0.1)
    est = _conditional_log_density(np.column_stack([kin, cond]), query, np.zeros(500, bool), 2)
    assert np.mean(est - true) > -1.0


@pytest.mark.parametrize("estimator", ["knn", "conditional"])
@pytest.mark.parametrize("normal", [(0.0, 0.0, 1.0), (0.6, 0.8, 0.0)],
                         ids=["parallax limit", "proper-motion box edge"])
def test_the_fields_density_is_not_thinned_at_a_catalogue_cut(rng, estimator, normal):
    # a field uniform in (pm1, pm2, parallax, colour), cut at normal . kin < 1 (a parallax
    # limit, or the edge of a box drawn in pmra, which the frame's proper motions see at a
    # slant): a kNN box that reaches past the cut holds fewer stars than the density there;
    # without the mirrored stars the field is under-stated by ~0.15-0.5 in log at the cut
    # (faint stars pile up there in a real catalogue, and a member's odds against them grow
    # by as much). ~180 stars in the near-cut box: with fewer, their own Poisson scatter
    # (~15 %) is the test's noise
    normal = np.asarray(normal)
    # a rotation taking the parallax axis to the cut's normal (the identity for the first)
    e3 = np.array([0.0, 0.0, 1.0])
    v, c = np.cross(e3, normal), float(e3 @ normal)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    rot = np.eye(3) + vx + vx @ vx / (1 + c)

    def placed(u):  # a unit cube's points, turned so that its top face is the cut
        return np.column_stack([(u[:, :3] - 0.5) @ rot.T + 0.5 * normal, u[:, 3]])

    ref = placed(rng.uniform(0, 1, (100000, 4)))
    near_cut = placed(np.column_stack([rng.uniform(0.3, 0.7, (400, 2)),
                                       rng.uniform(0.97, 1.0, 400), rng.uniform(0.3, 0.7, 400)]))
    inside = placed(np.column_stack([rng.uniform(0.3, 0.7, (400, 2)), rng.uniform(0.4, 0.6, 400),
                                     rng.uniform(0.3, 0.7, 400)]))
    depth = (ref[:, :3] - 0.5 * normal) @ normal + 0.5  # where a star is in the cube's height
    centred = ref[:, :3] - 0.5 * normal - np.outer(depth - 0.5, normal)
    own = (depth > 0.97) & (np.linalg.norm(centred, axis=1) < 0.15) & (np.abs(ref[:, 3] - 0.5)
                                                                        < 0.2)
    cut = KinematicCut(normal, 1.0, "test", "max", 1.0)

    def est(query, is_ref, cuts):
        mirrors = [(nr, gr, nq, gq) for (nr, gr), (nq, gq) in
                   zip(_cut_geometry(cuts, ref[:, :3], np.ones(3)),
                       _cut_geometry(cuts, query[:, :3], np.ones(3)), strict=True)]
        if estimator == "knn":
            return _knn_log_density(ref[:, :3], query[:, :3], is_ref, mirrors)
        return _conditional_log_density(ref, query, is_ref, 1, mirrors)

    none = np.zeros(400, bool)
    assert np.mean(est(near_cut, none, [])) < -0.1  # the bias being corrected
    for query, is_ref in ((near_cut, none), (inside, none), (ref[own], np.ones(own.sum(), bool))):
        # the true density is 1 (log 0); digamma(k) makes the mean log density unbiased
        assert abs(np.mean(est(query, is_ref, [cut]))) < 0.12
    # far from the cut the mirrored stars change nothing
    deep = (inside[:, :3] - 0.5 * normal) @ normal + 0.5 < 0.5
    assert np.array_equal(est(inside, none, [cut])[deep], est(inside, none, [])[deep])


@pytest.mark.parametrize("normal, offset", [((0.0, 0.0, 1.0), 0.3), ((0.0, 0.0, 1.0), -0.5),
                                            ((0.6, -0.8, 0.0), 0.2), ((-1.0, 0.0, 0.0), 2.0)])
def test_a_members_density_integrates_to_one_within_a_cut(rng, normal, offset):
    # the stream's normal in (pm1, pm2, parallax), with the share beyond the cut taken out:
    # its mass inside the cut, the complement of what _log_cut_mass says is lost, is one
    mean, var = np.array([[0.1, -0.2, 0.0]]), np.array([[0.25, 1.0, 0.5]])
    x = mean + np.sqrt(var) * rng.standard_normal((400000, 3))
    inside = np.mean(x @ np.asarray(normal) <= offset)
    cut = KinematicCut(np.asarray(normal), offset, "test", "max", offset)
    assert np.exp(_log_cut_mass([cut], mean, var)[0]) \
        == pytest.approx(inside, abs=3e-3)
    # no cut: nothing lost
    assert _log_cut_mass([], mean, var)[0] == 0.0


@pytest.mark.parametrize("footprint", ["strip", "round patch"])
@pytest.mark.parametrize("band", [0.6, 3.0])
def test_the_fields_sky_density_is_right_in_and_beside_a_curved_band(rng, footprint, band):
    # a uniform field; the track curves across the 5 deg phi1 rows and, in a round survey
    # patch, the footprint's edge cuts the bins: the band is filled in and no bin is
    # under-counted (the binary-mask fill was 5 % low in the band beside a curved track,
    # and 12-25 % low in and beside it in a round patch, 58 % in a 6 deg band, 30-45 % at
    # the patch's edge)
    n = 100000
    if footprint == "strip":
        phi1, phi2 = rng.uniform(-60, -20, n), rng.uniform(-5, 5, n)
        area, centre, inner = 400.0, -40.0, 15.0
    else:
        r, a = 8 * np.sqrt(rng.uniform(0, 1, n)), rng.uniform(0, 2 * np.pi, n)
        phi1, phi2 = r * np.cos(a), r * np.sin(a)
        area, centre, inner = np.pi * 64, 0.0, 5.0
    resid = phi2 - (0.004 * (phi1 - centre) ** 2 - 0.8)
    n_field = 0.8 * n  # the model's field count: the density is per field star
    log_b = _log_sky({"phi1": phi1, "phi2": phi2}, resid, band, np.abs(resid) > band, n_field)
    error = log_b - np.log(1 / area) + np.log(n_field / n)
    sel = (np.abs(phi1 - centre) < inner) & (np.abs(phi2) < 4)
    for where in (np.abs(resid) < band, (np.abs(resid) > band) & (np.abs(resid) < band + 1)):
        assert abs(np.median(error[sel & where])) < 0.03
    # the footprint's own edge
    assert abs(np.median(error[~sel])) < 0.05


def test_a_stray_member_does_not_lengthen_the_stream(rng):
    body = rng.uniform(-10, 10, 200)
    assert member_extent(np.append(body, 21.0)) == (body.min(), body.max())
    assert member_extent(np.append(body, [-25.0, 24.0, 24.5])) == (body.min(), body.max())
    # ... but a stream's own gap (3 deg in 200 members over 20 deg) is kept, and so is a
    # clump of members beyond it
    gapped = np.concatenate([rng.uniform(-10, -1.5, 100), rng.uniform(1.5, 10, 100)])
    assert member_extent(gapped) == (gapped.min(), gapped.max())
    clump = np.append(body, rng.uniform(20, 21, 10))
    assert member_extent(clump) == (clump.min(), clump.max())
    # a sparse long stream's natural gaps are its spacing's, not strays
    sparse = rng.uniform(-100, 100, 150)
    assert member_extent(sparse) == (sparse.min(), sparse.max())
    assert member_extent(np.array([3.0, -40.0])) == (-40.0, 3.0)
