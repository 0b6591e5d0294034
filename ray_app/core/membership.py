"""Membership probabilities of a candidate: a stream + field mixture seeded by its core.

The persistence core (``members.core_members``) is the densest lump of a stream. An astronomer
wants every star that is more likely the stream's than the field's, so each candidate gets a
two-component mixture model in (phi1, phi2, pm_phi1_cosphi2, pm_phi2, parallax), fitted by a
few EM iterations starting from the core:

**Stream** ``s(x) = rho(phi1) * prod_j N(x_j - t_j(phi1); 0, w_j^2 + e_ij^2)``
    ``t_j`` is the track (``tracks.fit_track``: weighted medians in ~3 deg phi1 bins, so a field
    star that a weighted fit still holds cannot drag it); ``w_j(phi1)`` the intrinsic width of
    feature j (a robust deconvolution: the width at which the weighted median of ``|r_i| /
    sqrt(w_j^2 + e_ij^2)`` is a unit normal's, floored at :data:`WIDTH_FLOOR` and capped at
    :data:`MAX_WIDTH_GROWTH` x the core's own spread about its own track, so the stream cannot
    swallow the field; fitted in phi1 bins of :data:`WIDTH_MIN_STARS` members or more and
    smoothed, so a widening tail is followed); ``e_ij`` the star's measurement error where the
    catalogue has error columns;
    ``rho`` the stream's density along phi1 (a smoothed weighted histogram, allowed to grow by
    :data:`GROW_DEG` beyond the current members per iteration, half of it spread evenly for
    the first :data:`RHO_UNIFORM_ITER` iterations so a long stream is followed out of its
    core, then its members' alone, so a stream that ends inside the footprint ends there).
**Field** ``b(x) = h(phi1, phi2) * q(pm_phi1, pm_phi2, parallax | phi1 slab, error)``
    learnt from *control* stars, farther than max(1 deg, 4 widths) from the track (at least
    a quarter of the stars: the phi2 width is capped so that they exist): never
    from the stars the model currently calls non-members (that circularity lets EM run away
    in either direction). ``h``: the control stars' surface density over the area they
    were counted on (inside the footprint, outside the track's band: a normalised
    convolution, so the band is filled in from both sides and neither a round survey patch's
    edge nor a curved track's slant across the bins under-counts the field), per field star
    of the model; ``q``: their kNN density in the kinematic space (k =
    :data:`FIELD_K`, each axis scaled by the field's own robust spread) within ~10 deg phi1
    slabs (the field's proper-motion gradients along a long footprint are followed) and
    conditional on what else is known of the star: its colour and magnitude where it has
    photometry (the field's motions depend on them: nearby disc dwarfs move fast, distant
    halo turnoff stars slowly, so a product of the field's kinematic and colour-magnitude
    densities would under-state the field exactly where it looks like an old, distant
    stream), else its error where errors are known (a faint star is compared with equally
    blurred field stars).
**Catalogue cuts** in the motions (a parallax limit; a proper-motion box the catalogue was
    selected with, found by :func:`ray_app.core.cuts.motion_cuts`): no star lies beyond one,
    so the field's kNN density is given back what its neighbourhoods lose past a cut (the
    control stars mirrored about it) and the stream's normal is normalised over the
    catalogue (:func:`_log_cut_mass`). Without them the field stars near a cut are
    over-stated as stream and the faint members there under-stated, and a box drawn around a
    stream's motion puts both at its edges.
**Measurement quality** (without photometry, where errors are known) multiplies both by a
    density of the star's log proper-motion error, a brightness proxy: the stream's learnt
    from its members, the field's from the control stars. A stream is one old population at
    one distance, so its stars have their own luminosity function, and the field's kinematic
    density is already conditional on the error: leaving this term out would assume the
    stream's error distribution is the field's. Not used with photometry (the magnitude
    carries the same information).
**Photometry** (optional) multiplies both by a colour-magnitude density learnt from the data:
    the stream's is a background-subtracted Hess diagram (Gaussian-smoothed histograms): the
    stars near the track weighted by their kinematic membership probability, less the
    control stars with the same weights scaled to the field's share of the band (plus 5 %
    of the field's density, so a member off the learnt locus is down-weighted, not
    excluded), learnt and evaluated in the stream's own magnitudes (each star's less the
    stream's distance modulus at its phi1 relative to its own, measured from the locus:
    :func:`_fit_cmd_shift`), so a stream whose distance changes along it has one sharp
    locus; the field's, of the control stars. While fitting, stars without photometry
    get a ratio of 1; at the end they get probability 0: a photometric filter a star cannot
    be put through is not passed (a member list that claims photometric vetting holds no
    unvetted star).

``p = f s / (f s + (1 - f) b)``, with the mixture fraction ``f`` re-estimated each iteration.
Every density is normalised over the job's stars, so the ratio is a likelihood ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.ndimage import binary_closing, gaussian_filter
from scipy.spatial import cKDTree
from scipy.special import digamma, expit, gammaln, log_ndtr

from .cuts import KinematicCut
from .tracks import (
    TRACK_FEATURES,
    Track,
    distinct_nodes,
    fit_track,
    phi1_bins,
    smooth_nodes,
    weighted_quantile,
)

#: Default ``memberProbability``: members are the stars more likely stream than field.
DEFAULT_MEMBER_PROBABILITY = 0.5
#: A fitted stream holding more than this share of the job's stars is the field: the fit is
#: declared failed and the seed kept.
MAX_STREAM_SHARE = 0.5
#: EM iterations (the fit settles in 4-6 on synthetic and real fields).
N_ITERATIONS = 8
#: Smallest intrinsic width per feature (deg, mas/yr, mas): a stream is never a line.
WIDTH_FLOOR = {"phi2": 0.05, "pm_phi1_cosphi2": 0.05, "pm_phi2": 0.05, "parallax": 0.02}
#: Widths vary along a stream (tails widen; the proper-motion dispersion of a stream at a
#: changing distance changes with it): each is fitted in phi1 bins of about this many
#: degrees holding at least WIDTH_MIN_STARS effective members (fewer: the bins widen, down
#: to one width for the whole stream), then smoothed over neighbouring bins. A robust width
#: from 50 stars is good to ~15 %.
WIDTH_SPACING_DEG = 10.0
WIDTH_MIN_STARS = 50.0
#: An intrinsic width may grow to at most this multiple of the core's spread (the core is
#: cut at its saddle density, so it under-states the width; the cap keeps the field out).
MAX_WIDTH_GROWTH = 2.5
#: The stream's density along phi1 is part uniform over its allowed range, part its members'
#: smoothed histogram: half uniform for the first RHO_UNIFORM_ITER iterations (a long stream
#: is followed out of its core's lump), then RHO_UNIFORM_FINAL (the members span the stream by
#: then; a stream that ends inside the footprint must not keep half its mean density beyond
#: its end, where the field stars that match its motion would be called members).
RHO_UNIFORM = 0.5
RHO_UNIFORM_ITER = 3
RHO_UNIFORM_FINAL = 0.02
#: ... and the histogram's Gaussian smoothing, in its 2 deg bins (4 deg: a stream's density
#: is followed over a few degrees; the near-end spill of the README's limitations).
RHO_SMOOTH_BINS = 2.0
#: Per iteration, the stream's phi1 extent may grow by this much beyond its members (deg).
GROW_DEG = 4.0
#: The field is learnt from control stars farther than max(CONTROL_MIN_DEG, CONTROL_WIDTHS x
#: the stream's phi2 width) from the track.
CONTROL_MIN_DEG = 1.0
CONTROL_WIDTHS = 4.0
#: ... and at least this share of the job's stars is control: the stream's phi2 width is
#: capped at the band that leaves them, over CONTROL_WIDTHS (a stream as wide as the
#: footprint cannot be told from the field by position, and a model without a field beside
#: it runs away).
CONTROL_MIN_SHARE = 0.25
#: Neighbours of the field's kinematic kNN density. Few, because the kNN box averages the
#: field over its width, and a stream sits where the field's distant halo stars peak in
#: proper motion and parallax: a wide box under-states the field exactly there, and every
#: membership near the stream is over-confident (benchmarks/membership_calibration.py: at
#: 24 neighbours the stars given 0.55 were 0.44 stream, at 8 0.50; at 4 the low bins turn
#: under-confident). The log density uses digamma(k), so its noise does not bias it.
FIELD_K = 8
#: Sky histogram of the field: bin sizes (deg) in phi1 and phi2.
SKY_BINS_DEG = (5.0, 0.5)
#: Colour-magnitude histograms: bin sizes and Gaussian smoothing (mag) in colour, magnitude.
CMD_BIN = (0.02, 0.1)
CMD_SMOOTH = (0.04, 0.25)
#: Share of the field's colour-magnitude (or quality) density mixed into the stream's.
CMD_FLOOR = 0.05
#: The stream's colour-magnitude density is learnt from the stars within this many phi2
#: widths of the track (less what the field puts there: :func:`_hess_weights`).
ON_TRACK_WIDTHS = 2.0
#: A stream's extent along phi1 ends at a gap wider than max(EXTENT_GAP_MIN_DEG,
#: EXTENT_GAP_SPACINGS x its members' median spacing) beyond which fewer than
#: max(3, EXTENT_MIN_SHARE x the members) lie: one stray member does not lengthen it.
EXTENT_GAP_MIN_DEG = 2.0
EXTENT_GAP_SPACINGS = 20.0
EXTENT_MIN_SHARE = 0.02
#: A stream's distance changes along it, and its colour-magnitude locus with it (GD-1: 1.4
#: mag over its length, Orphan-Chenab 4): the locus is learnt with each star's magnitude
#: shifted by the stream's distance modulus at its phi1 relative to the stream's own,
#: measured from the photometry in phi1 bins of ~CMD_SHIFT_SPACING_DEG holding
#: CMD_SHIFT_MIN_STARS members or more (:func:`_fit_cmd_shift`), over shifts of up to
#: CMD_SHIFT_RANGE from the last iteration's in steps of CMD_SHIFT_STEP (mag). A bin's
#: shift is kept only if it raises the bin's log-likelihood by CMD_SHIFT_MIN_GAIN (a
#: likelihood-ratio test of one parameter at ~2.5 sigma), else the last one stays.
CMD_SHIFT_SPACING_DEG = 10.0
CMD_SHIFT_MIN_STARS = 100.0
CMD_SHIFT_RANGE = 1.5
CMD_SHIFT_STEP = 0.05
CMD_SHIFT_MIN_GAIN = 3.0
CMD_SHIFT_ROUNDS = 2
#: Histogram of the measurement quality (natural log of the proper-motion error): bin size
#: and Gaussian smoothing (0.1 in log error ~ 0.2 mag in G).
QUALITY_BIN = 0.05
QUALITY_SMOOTH = 0.1


def validate_member_probability(value) -> float:
    """``memberProbability`` as a float in (0, 1], or ``ValueError`` naming what is allowed."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(
            value) or not 0 < value <= 1:
        raise ValueError(f"memberProbability must be a number in (0, 1], got {value!r}")
    return float(value)


@dataclass
class Membership:
    """Result of :func:`membership_probabilities`.

    Attributes
    ----------
    probability : (n,) ndarray
        Stream membership probability of every star of the job.
    track : Track
        The fitted track (absolute frame values) with intrinsic widths.
    widths : dict
        Intrinsic width per feature (deg, mas/yr, mas): the members' median of its profile
        along phi1 (``track.widths`` holds the profile).
    fraction : float
        Fitted stream fraction of the job's stars.
    phi1_range : (float, float)
        phi1 extent of the stars with probability >= 0.5 (deg), stray ones beyond the
        stream's ends left out (:func:`member_extent`).
    iterations : int
    photometry : bool
        Whether a colour-magnitude term was used.
    quality : bool
        Whether the measurement-quality term was used (no photometry, errors known).
    cmd_shift : (nodes, shifts) or None
        The stream's distance modulus along phi1 relative to its own, measured from its
        colour-magnitude locus (:func:`_fit_cmd_shift`; phi1 in deg, mag): None without
        photometry or with too few members to measure it.
    failed : bool
        The mixture called more than :data:`MAX_STREAM_SHARE` of the stars stream: the seed
        is returned as the members (probability 1) and ``track`` is None.
    """

    probability: np.ndarray
    track: Track | None
    widths: dict = field(default_factory=dict)
    fraction: float = 0.0
    phi1_range: tuple = (np.nan, np.nan)
    iterations: int = 0
    photometry: bool = False
    failed: bool = False
    quality: bool = False
    cmd_shift: tuple | None = None


def membership_probabilities(raw: dict, core: np.ndarray, errors: dict | None = None,
                             photometry: tuple | None = None, base_track: Track | None = None,
                             n_iter: int = N_ITERATIONS, cuts: list | None = None
                             ) -> Membership:
    """Membership probability of every star for the candidate whose core is ``core``.

    Parameters
    ----------
    raw : dict
        ``phi1`` and :data:`~ray_app.core.tracks.TRACK_FEATURES` arrays of the job's stars
        (deg, mas/yr, mas), in the job's frame.
    core : int array
        Indices of the candidate's persistence core (the seed).
    errors : dict, optional
        Per-star 1-sigma errors by feature name (missing features: 0).
    photometry : (magnitude, colour) arrays, optional
        NaN where a star has none.
    base_track : Track, optional
        A track the stream is expected to follow (the detection track of a named stream):
        the fit is made to the residuals about it, so the model follows a curved stream with
        few parameters. ``None``: fit the raw features. Beyond the members the residual
        track continues along the straight line through its nodes (flat when the base
        track is right).
    n_iter : int
        EM iterations.
    cuts : list of KinematicCut, optional
        The catalogue's cuts in the stars' motions (:func:`ray_app.core.cuts.motion_cuts`:
        a proper-motion box the catalogue was selected with). The largest parallax is
        always taken as one (Gaia queries cut at parallax < 1 mas; without a cut it is far
        out and changes nothing). Beyond a cut no star can be, so the field's density is
        corrected for what its neighbourhoods lose there (:func:`_mirrored_count`) and the
        stream's is normalised over the catalogue (:func:`_log_cut_mass`).

    Returns
    -------
    Membership
        A core of fewer than 8 stars cannot constrain a track: the core gets probability 1,
        every other star 0, and ``track`` is None.
    """
    phi1 = np.asarray(raw["phi1"], dtype=np.float64)
    n = len(phi1)
    core = np.asarray(core, dtype=np.int64)
    p = np.zeros(n)
    p[core] = 1.0
    if len(core) < 8:
        return Membership(p, None, iterations=0)
    resid_base = {name: np.asarray(raw[name], dtype=np.float64)
                  - (base_track.at(phi1, name) if base_track is not None else 0.0)
                  for name in TRACK_FEATURES}
    err2 = {name: np.square(np.nan_to_num(np.asarray(errors[name], dtype=np.float64)))
            if errors and name in errors else np.zeros(n) for name in TRACK_FEATURES}
    # the core's spread about its own track: a core found in a frame tilted from the stream
    # runs across it, and its spread about one median would be the tilt, not the width
    core_track = fit_track(phi1[core], {name: resid_base[name][core] for name in TRACK_FEATURES},
                           source="core")
    core_spread = {name: max(_spread(resid_base[name][core] - core_track.at(phi1[core], name)),
                             WIDTH_FLOOR[name]) for name in TRACK_FEATURES}
    field_kin = _field_scales(raw)
    # the field is compared at the star's measurement quality where errors are known
    e = errors.get("pm_phi1_cosphi2") if errors else None
    quality = np.log(np.clip(np.nan_to_num(np.asarray(e, dtype=np.float64), nan=1.0), 1e-3,
                             None)) if e is not None else None
    cmd = _cmd_arrays(photometry, n)
    # catalogues are cut at a largest parallax (Gaia queries: parallax < 1 mas), which
    # truncates a faint member's observed parallax; the field's kNN density sees the cut, so
    # the stream's Gaussian must too. Without a cut the largest parallax is far out: no change
    plx_top = float(np.nanmax(raw["parallax"]))
    cuts = [KinematicCut(np.array([0.0, 0.0, 1.0]), plx_top, "parallax", "max", plx_top)
            ] + list(cuts or [])
    kin_now = np.column_stack([np.asarray(raw[name], dtype=np.float64) for name in KIN])
    use_quality = cmd is None and quality is not None

    lo, hi = float(phi1[core].min()), float(phi1[core].max())
    if base_track is not None:  # a named stream is expected along its whole registry track
        lo, hi = min(lo, float(base_track.phi1[0])), max(hi, float(base_track.phi1[-1]))
    track = None
    profiles = {}
    cmd_shift = None
    iterations = 0
    for it in range(1, n_iter + 1):
        iterations = it
        w = p
        try:
            track = fit_track(phi1, resid_base, w, source="membership fit")
        except ValueError:  # the stream faded below a track's worth of stars: keep the last
            break
        resid = {name: resid_base[name] - _extended(track, phi1, name)
                 for name in TRACK_FEATURES}
        profiles = {}
        # the widest band that leaves CONTROL_MIN_SHARE of the stars beyond it
        band_max = float(np.quantile(np.abs(resid["phi2"]), 1 - CONTROL_MIN_SHARE))
        cap = {name: MAX_WIDTH_GROWTH * core_spread[name] for name in TRACK_FEATURES}
        cap["phi2"] = max(min(cap["phi2"], band_max / CONTROL_WIDTHS), WIDTH_FLOOR["phi2"])
        log_s = _log_rho(phi1, w, lo - GROW_DEG, hi + GROW_DEG,
                         RHO_UNIFORM if it <= RHO_UNIFORM_ITER else RHO_UNIFORM_FINAL)
        log_s_kin = 0.0
        star_width, var = {}, {}
        for name in TRACK_FEATURES:
            if it == 1:
                # start wide and let EM contract: started from the core's own (density-cut)
                # spread, EM settles on the core's lump instead of the stream
                profiles[name] = (np.array([0.0]), np.array([cap[name]]))
            else:
                profiles[name] = _fit_width_profile(phi1, resid[name], err2[name], w,
                                                    WIDTH_FLOOR[name], cap[name])
            star_width[name] = _profile_at(profiles[name], phi1)
            var[name] = star_width[name] ** 2 + err2[name]
            term = _log_normal(resid[name], var[name])
            log_s += term
            if name in KIN:
                log_s_kin = log_s_kin + term
        # the stream's motions are observed inside the catalogue's cuts only
        lost = _log_cut_mass(cuts, kin_now - np.column_stack([resid[name] for name in KIN]),
                             np.column_stack([var[name] for name in KIN]))
        log_s -= lost
        log_s_kin = log_s_kin - lost
        # the field is learnt off the track (a control region), never from the stars the
        # model currently calls non-members: that circularity lets EM run away either way
        band = np.minimum(np.maximum(CONTROL_WIDTHS * star_width["phi2"], CONTROL_MIN_DEG),
                          band_max)
        control = np.abs(resid["phi2"]) > band
        if control.sum() < 50:  # a footprint too narrow for a control region
            control = w < 0.5
        frac = float(np.clip(np.mean(w), 1.0 / n, 0.5))
        log_b_kin = _field_log_kinematics(raw, control, field_kin, quality, cmd, cuts)
        log_b = _log_sky(raw, resid["phi2"], band, control, n * (1 - frac)) + log_b_kin
        if cmd is not None:
            w_on, w_off = _hess_weights(resid["phi2"], star_width["phi2"], w, control,
                                        log_s_kin - log_b_kin)
            for _ in range(CMD_SHIFT_ROUNDS):
                cmd_shift = _fit_cmd_shift(cmd, phi1, w_on, w_off, w, control, cmd_shift)
            cs, cb = _log_cmd(cmd, w_on, control, w_off,
                              None if cmd_shift is None else _profile_at(cmd_shift, phi1))
            log_s += cs
            log_b += cb
        if use_quality:
            qs, qb = _log_quality(quality, w, control)
            log_s += qs
            log_b += qb
        logit = np.log(frac) + log_s - np.log1p(-frac) - log_b
        p_new = 1.0 / (1.0 + np.exp(-np.clip(logit, -700, 700)))
        members = p_new >= 0.5
        if members.any():
            lo = min(lo, float(phi1[members].min()))
            hi = max(hi, float(phi1[members].max()))
        # not before the stream's phi1 density has left its uniform start
        converged = it > RHO_UNIFORM_ITER and np.max(np.abs(p_new - p)) < 1e-3
        p = p_new
        if converged:
            break
    if cmd is not None:
        # a photometric filter that a star cannot be put through does not pass it: a member
        # list that claims photometric vetting holds no unvetted star
        p = np.where(cmd[2], p, 0.0)
    # one width per feature to quote: the members' median of the width along the stream
    widths = {name: float(weighted_quantile(_profile_at(prof, phi1), p, 0.5)) if p.sum() > 0
              else float(prof[1][0]) for name, prof in profiles.items()}
    if np.mean(p >= 0.5) > MAX_STREAM_SHARE:
        # a "stream" of most of the job's stars is the field: the model failed, keep the seed
        p = np.zeros(n)
        p[core] = 1.0
        return Membership(p, None, widths, float(np.mean(p)), (np.nan, np.nan), iterations,
                          cmd is not None, failed=True, quality=use_quality)
    sel = p >= 0.5
    extent = member_extent(phi1[sel] if sel.any() else phi1[core])
    final = _absolute_track(track, base_track, profiles, extent)
    rng = extent if sel.any() else (np.nan, np.nan)
    return Membership(p, final, widths, float(np.mean(p)), rng, iterations, cmd is not None,
                      quality=use_quality, cmd_shift=cmd_shift)


def member_extent(member_phi1) -> tuple[float, float]:
    """phi1 extent (deg) of a stream's members, without stray members beyond its ends.

    The members are split at gaps wider than max(:data:`EXTENT_GAP_MIN_DEG`,
    :data:`EXTENT_GAP_SPACINGS` x their median spacing in phi1) (in a stream of even density
    a gap that wide has odds ~1e-6); the extent runs from the first to the last run holding
    at least max(3, :data:`EXTENT_MIN_SHARE` x the members). A field star that the model
    holds just above 0.5 ten degrees beyond a stream's end would otherwise set its length,
    and the track reported over it would run on through empty field (and out of reach of
    the registry track it matches). Runs between kept ones are kept: a stream has gaps.

    Parameters
    ----------
    member_phi1 : array
        phi1 of the members (deg); at least one.

    Returns
    -------
    (lo, hi) : floats
        Fewer than 3 members, or no run large enough: their min and max.
    """
    x = np.sort(np.asarray(member_phi1, dtype=np.float64))
    if len(x) < 3:
        return float(x[0]), float(x[-1])
    gaps = np.diff(x)
    wide = gaps > max(EXTENT_GAP_MIN_DEG, EXTENT_GAP_SPACINGS * float(np.median(gaps)))
    starts = np.concatenate([[0], np.flatnonzero(wide) + 1])
    stops = np.concatenate([np.flatnonzero(wide) + 1, [len(x)]])
    big = np.flatnonzero(stops - starts >= max(3, EXTENT_MIN_SHARE * len(x)))
    if not len(big):
        return float(x[0]), float(x[-1])
    return float(x[starts[big[0]]]), float(x[stops[big[-1]] - 1])


# ----------------------------------------------------------------------------- pieces
def _log_normal(x, var) -> np.ndarray:
    """log density at ``x`` of a zero-mean normal of variance ``var``."""
    x, var = np.asarray(x, dtype=np.float64), np.asarray(var, dtype=np.float64)
    return -0.5 * x ** 2 / var - 0.5 * np.log(2 * np.pi * var)


def _log_cut_mass(cuts, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """log of the share of each star's stream density (a normal in the kinematic features
    :data:`KIN`, ``mean`` and diagonal ``var`` per star) inside the catalogue's cuts, one
    half-space at a time (a box's corners, where two cuts both bite, are rare).

    A cut removes the part of a faint member's error distribution beyond it; the rest must
    still integrate to one, or the faint members near the cut (whose errors reach it) are
    under-stated against the field, whose density sees the cut."""
    out = np.zeros(len(mean))
    for cut in cuts:
        a = np.broadcast_to(np.asarray(cut.normal, dtype=np.float64), mean.shape)
        spread = np.sqrt(np.sum(a ** 2 * var, axis=1))
        out += log_ndtr((cut.offset - np.sum(a * mean, axis=1)) / spread)
    return out


def _spread(v, w=None) -> float:
    """Weighted 1.4826 x MAD about the weighted median."""
    v = np.asarray(v, dtype=np.float64)
    w = np.ones_like(v) if w is None else np.asarray(w, dtype=np.float64)
    ok = np.isfinite(v) & (w > 0)
    if not ok.any():
        return 0.0
    v, w = v[ok], w[ok]
    med = weighted_quantile(v, w, 0.5)
    return 1.4826 * weighted_quantile(np.abs(v - med), w, 0.5)


def _fit_width(r, e2, w, floor: float, cap: float) -> float:
    """Robust intrinsic width of residuals ``r`` with per-star error variances ``e2``.

    The width at which the weighted median of the normalised residuals
    ``|r_i| / sqrt(width^2 + e2_i)`` is that of a unit normal (0.6745), clipped to
    [floor, cap]: a MAD that deconvolves star by star. Subtracting one typical error from
    the spread understates the width when the errors range over a factor of ten; a
    likelihood fit is pulled wide by the field stars that still carry some weight.
    """
    ok = (w >= 1e-3) & np.isfinite(r)  # the field's millions of ~0 weights move no median
    if ok.sum() < 8:
        return float(floor)
    r, e2, w = r[ok], e2[ok], w[ok]
    r = np.abs(r - weighted_quantile(r, w, 0.5))

    def median_z(width):
        return weighted_quantile(r / np.sqrt(width ** 2 + e2), w, 0.5)

    if median_z(floor) <= 0.6745:
        return float(floor)
    if median_z(cap) >= 0.6745:
        return float(cap)
    lo, hi = floor, cap
    for _ in range(30):  # median_z falls as the width grows: bisect
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if median_z(mid) > 0.6745 else (lo, mid)
    return float(0.5 * (lo + hi))


def _fit_width_profile(phi1, r, e2, w, floor: float, cap: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsic width of residuals ``r`` as a function of phi1: :func:`_fit_width` in
    bins of ~:data:`WIDTH_SPACING_DEG` holding at least :data:`WIDTH_MIN_STARS` of weight
    ``w`` (a stream too sparse for two such bins gets one width), smoothed over
    neighbouring bins in log width (a 1-2-1 kernel).

    Returns
    -------
    nodes, widths : arrays
        Weighted mean phi1 of each bin (deg) and its width; :func:`_profile_at` interpolates
        between the nodes and holds the end widths beyond them.
    """
    order = np.argsort(phi1, kind="stable")
    ws = np.where(w >= 1e-3, w, 0.0)[order]  # the field's ~0 weights set no bin's edge
    edges = phi1_bins(phi1[order], ws, WIDTH_SPACING_DEG, WIDTH_MIN_STARS)
    nodes, widths = [], []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        rows = order[a:b]
        if ws[a:b].sum() <= 0:
            continue
        nodes.append(float(np.average(phi1[rows], weights=ws[a:b])))
        widths.append(_fit_width(r[rows], e2[rows], w[rows], floor, cap))
    if not nodes:
        return np.array([0.0]), np.array([float(cap)])
    nodes, widths = np.array(nodes), smooth_nodes(np.log(widths))
    keep = distinct_nodes(nodes)
    return nodes[keep], np.clip(np.exp(widths[keep]), floor, cap)


def _profile_at(profile, phi1) -> np.ndarray:
    """A profile along phi1 (``(nodes, values)``: a width, :func:`_fit_width_profile`, or a
    distance-modulus offset, :func:`_fit_cmd_shift`) at ``phi1``: linear between the nodes,
    the end values held beyond them."""
    nodes, values = profile
    return np.interp(np.asarray(phi1, dtype=np.float64), nodes, values)


def _bin_of(x, edges, n_bins: int) -> np.ndarray:
    """Index of the histogram bin (of ``edges``) holding each ``x``, clipped to the range."""
    return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)


def _extended(track: Track, phi1, name) -> np.ndarray:
    """The residual track, continued beyond its end nodes along the straight line through all
    its nodes: a base track off by a tilt (a core found in a tilted frame) is followed along
    the stream, while a right one (residuals without trend) is held flat; the end nodes'
    own slope, from a few stars, would swing."""
    return track.at(phi1, name, slope_span_deg=np.inf)


def _log_rho(phi1, w, lo, hi, uniform: float = RHO_UNIFORM, bin_deg: float = 2.0) -> np.ndarray:
    """log density along phi1 of the stream (per deg): a share ``uniform`` spread evenly over
    [lo, hi], the rest the members' smoothed histogram (weights ``w``), zero outside. The
    uniform part lets a long stream be followed beyond its core's lump; the histogram
    follows its gaps and ends. Each star's histogram density leaves its own weight out: a
    field star beyond a stream's end would otherwise hold itself in (EM keeps it at the
    probability it had)."""
    lo, hi = max(lo, float(phi1.min())), min(hi, float(phi1.max()))
    edges = np.arange(np.floor(phi1.min()), np.ceil(phi1.max()) + bin_deg, bin_deg)
    if len(edges) < 2:
        edges = np.array([phi1.min() - 1, phi1.max() + 1])
    hist, _ = np.histogram(phi1, bins=edges, weights=w)
    hist = gaussian_filter(hist.astype(float), RHO_SMOOTH_BINS, mode="constant")
    centres = 0.5 * (edges[:-1] + edges[1:])
    inside = (centres >= lo - 0.5 * bin_deg) & (centres <= hi + 0.5 * bin_deg)
    hist = np.where(inside, hist, 0.0)
    idx = _bin_of(phi1, edges, len(hist))
    own = np.asarray(w, dtype=np.float64) * _central_tap(RHO_SMOOTH_BINS)
    h_at = np.maximum(hist[idx] - own, 0.0)  # 0 outside [lo, hi]: hist is cut there
    dens = (1 - uniform) * h_at / max(hist.sum() * bin_deg, 1e-300) + uniform * inside[idx] / max(
        inside.sum() * bin_deg, 1e-300)
    with np.errstate(divide="ignore"):
        return np.log(dens)


def _log_sky(raw, resid_phi2, band, control, n_field: float) -> np.ndarray:
    """log field density on the sky at each star (per deg^2, per field star): the control
    stars' surface density, ``n_field`` the model's number of field stars.

    On a phi1 x phi2 grid (:data:`SKY_BINS_DEG`), each bin's *exposure* is its share of
    fine cells inside the footprint and outside the track's band (:func:`_sky_exposure`). A
    bin at least half exposed gets its control count over its exposed area; the rest (the
    band) a normalised convolution, the counts around it over the exposed area they fell on
    (a four times wider kernel, then the footprint's mean, where none lies within reach: a
    band wider than the footprint's row). The map is then smoothed over the footprint alone.
    So bins the band or the footprint's edge cut through are not under-counted (a curved
    track crosses a 5 deg row at a slant, a survey patch is round) and nothing is lost to
    smoothing beyond the footprint.
    """
    phi1, phi2 = np.asarray(raw["phi1"], dtype=np.float64), np.asarray(raw["phi2"],
                                                                       dtype=np.float64)
    b1 = np.arange(np.floor(phi1.min()), np.ceil(phi1.max()) + SKY_BINS_DEG[0],
                   SKY_BINS_DEG[0])
    b2 = np.arange(np.floor(phi2.min()), np.ceil(phi2.max()) + SKY_BINS_DEG[1],
                   SKY_BINS_DEG[1])
    if len(b1) < 2:
        b1 = np.array([phi1.min() - 1, phi1.max() + 1])
    if len(b2) < 2:
        b2 = np.array([phi2.min() - 1, phi2.max() + 1])
    h, _, _ = np.histogram2d(phi1[control], phi2[control], bins=(b1, b2))
    exposure, coverage = _sky_exposure(phi1, phi2, phi2 - resid_phi2, band, b1, b2)
    area = np.diff(b1)[:, None] * np.diff(b2)[None, :]
    smooth = np.array([1.0, 2.0])
    # a bin mostly outside the band: its own count over its exposed area
    dens = np.where(exposure >= 0.5, h / np.maximum(exposure * area, 1e-300), np.nan)
    for scale in (1.0, 4.0):  # the rest: the counts around it over the area they fell on
        num = gaussian_filter(h, smooth * scale, mode="constant")
        den = gaussian_filter(exposure * area, smooth * scale, mode="constant")
        # any exposure within the kernel (truncated at 4 sigma): the nearest counts fill in
        ok = np.isnan(dens) & (den > 1e-3 * area * _central_tap(smooth[0] * scale)
                               * _central_tap(smooth[1] * scale))
        dens[ok] = num[ok] / den[ok]
    total = float(np.sum(exposure * area))
    dens = np.where(np.isnan(dens), h.sum() / total if total > 0 else 0.0, dens)
    # smoothed over the footprint alone (weighted by the area each bin has in it)
    weight = coverage * area
    dens = gaussian_filter(dens * weight, smooth, mode="constant") / np.maximum(
        gaussian_filter(weight, smooth, mode="constant"), 1e-300)
    i, j = _bin_of(phi1, b1, h.shape[0]), _bin_of(phi2, b2, h.shape[1])
    floor = 0.01 * max(len(phi1), 1) / ((b1[-1] - b1[0]) * (b2[-1] - b2[0]))
    return np.log(np.maximum(dens[i, j], floor)) - np.log(max(n_field, 1.0))


def _sky_exposure(phi1, phi2, track_phi2, band, b1, b2, stars_per_cell: float = 8.0):
    """Share of each sky bin that is inside the footprint and outside the track's band, and
    share inside the footprint.

    Each bin is cut into fine cells sized to hold ``stars_per_cell`` stars on average over
    the footprint's bounding box; a cell is inside the footprint when it holds a star or
    is closed in by ones that do (a morphological closing: where the field thins, a cell
    inside the footprint can be empty by chance), and outside the band when its centre is
    farther than ``band`` from the track (``track_phi2`` and ``band``: the track's phi2 and
    the band's half-width at each star, interpolated in phi1; ``band`` may be one number).
    """
    target = stars_per_cell * (b1[-1] - b1[0]) * (b2[-1] - b2[0]) / max(len(phi1), 1)
    n2 = max(int((b2[1] - b2[0]) / np.sqrt(target)), 1)
    n1 = max(int((b1[1] - b1[0]) * (b2[1] - b2[0]) / n2 / target), 1)
    f1 = np.linspace(b1[0], b1[-1], (len(b1) - 1) * n1 + 1)
    f2 = np.linspace(b2[0], b2[-1], (len(b2) - 1) * n2 + 1)
    held, _, _ = np.histogram2d(phi1, phi2, bins=(f1, f2))
    # padded, so the closing does not erode cells on the grid's own edge
    inside = binary_closing(np.pad(held > 0, 1), np.ones((3, 3), bool))[1:-1, 1:-1]
    c1, c2 = 0.5 * (f1[:-1] + f1[1:]), 0.5 * (f2[:-1] + f2[1:])
    order = np.argsort(phi1, kind="stable")
    track = np.interp(c1, phi1[order], track_phi2[order])
    half = np.interp(c1, phi1[order], np.broadcast_to(band, phi1.shape)[order])
    outside = np.abs(c2[None, :] - track[:, None]) > half[:, None]

    def share(cells):
        return cells.astype(float).reshape(len(b1) - 1, n1, len(b2) - 1, n2).mean(axis=(1, 3))

    return share(inside & outside), share(inside)


KIN = ("pm_phi1_cosphi2", "pm_phi2", "parallax")


def _field_scales(raw) -> np.ndarray:
    return np.array([max(_spread(raw[name]), 1e-3) for name in KIN])


def _field_log_kinematics(raw, control, scales, quality, cmd, cuts=()) -> np.ndarray:
    """log field density of each star's motion, conditional on what else is known of it:
    colour and magnitude where it has photometry, else its log error (``quality``; None:
    unconditional). The colour-magnitude term multiplies in the field's density of those, so
    the product is the field's joint density, not a product of its marginals. ``cuts``: the
    catalogue's (see :func:`_log_kinematics`)."""
    if cmd is None:
        return _log_kinematics(raw, control, scales, quality, cuts=cuts)
    mag, colour, ok = cmd
    # stars without photometry (if any) are compared with the whole field at their error
    out = _log_kinematics(raw, control, scales, quality, wanted=~ok, cuts=cuts)
    sub = {name: np.asarray(raw[name], dtype=np.float64)[ok] for name in ("phi1",) + KIN}
    out[ok] = _log_kinematics(sub, control[ok], scales, np.column_stack([colour[ok], mag[ok]]),
                              cuts=[_cut_rows(cut, ok) for cut in cuts])
    return out


def _cut_rows(cut: KinematicCut, rows) -> KinematicCut:
    """The cut for a subset of the stars (its per-star normal and offset, if any, indexed)."""
    normal, offset = np.asarray(cut.normal), np.asarray(cut.offset)
    return replace(cut, normal=normal[rows] if normal.ndim == 2 else normal,
                   offset=offset[rows] if offset.ndim == 1 else offset)


def _log_kinematics(raw, reference: np.ndarray, scales: np.ndarray, cond=None,
                    slab_deg: float = 10.0, min_stars: int = 200,
                    wanted: np.ndarray | None = None, cuts=()) -> np.ndarray:
    """log density of the reference (field) stars in (pm1, pm2, parallax), per phi1 slab.

    ``cond`` (optional; per star, one or more columns): what else is known of a star (its
    log error, or its colour and magnitude). The density is then conditional on it,
    ``q(kin | cond)`` (:func:`_conditional_log_density`; each column scaled by its robust
    spread): a faint star's observed motion is compared with faint field stars, whose
    observed motions are as blurred as its own, and a blue turnoff star's with the field's
    distant turnoff stars, not with the whole field's mix. ``wanted`` (optional, boolean per
    star): only those stars are evaluated (the rest are NaN); the slabs stay the same.

    ``cuts`` (KinematicCut list): the catalogue's cuts in the motions (a parallax limit, a
    proper-motion box). No field star lies beyond one, so a kNN box that reaches past it
    holds fewer stars than the field's density there would put in it (up to half as many
    at the cut, where a box-selected catalogue or the faint stars at a parallax limit pile
    up); the stars mirrored about the cut fill in what the box loses (the reflection
    boundary correction, :func:`_mirrored_count`).
    """
    phi1 = raw["phi1"]
    kin = np.column_stack([np.asarray(raw[name], dtype=np.float64) for name in KIN])
    Y = kin / scales
    geometry = _cut_geometry(cuts, kin, scales)
    m = 0
    if cond is not None:
        c = np.asarray(cond, dtype=np.float64).reshape(len(phi1), -1)
        m = c.shape[1]
        c = (c - np.median(c, axis=0)) / np.array([max(_spread(col), 1e-6) for col in c.T])
        Y = np.column_stack([Y, c])
    out = np.full(len(phi1), np.nan)
    order = np.argsort(phi1, kind="stable")
    # slabs of ~slab_deg with at least min_stars reference stars (merged when sparse)
    edges = phi1_bins(phi1[order], reference[order], slab_deg, min_stars)
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        rows = order[a:b]
        is_ref = reference[rows]
        if is_ref.sum() < 2:  # a slab without field of its own: its stars stand for it
            is_ref = np.ones(len(rows), bool)
        ref = rows[is_ref]
        keep = np.ones(len(rows), bool) if wanted is None else wanted[rows]
        if not keep.any():
            continue
        q = rows[keep]
        slab = [(normal[ref], gap[ref], normal[q], gap[q]) for normal, gap in geometry]
        out[q] = (_conditional_log_density(Y[ref], Y[q], is_ref[keep], m, slab) if m
                  else _knn_log_density(Y[ref], Y[q], is_ref[keep], slab))
    return out - np.sum(np.log(scales))


def _cut_geometry(cuts, kin: np.ndarray, scales: np.ndarray) -> list:
    """Each cut (KinematicCut) in the scaled kinematic space (``kin / scales``): its unit
    normal and each star's distance inside it, per star ((n, 3) and (n,) arrays)."""
    out = []
    for cut in cuts:
        a = np.broadcast_to(np.asarray(cut.normal, dtype=np.float64), kin.shape)
        length = np.linalg.norm(a * scales, axis=1)
        out.append((a * scales / length[:, None],
                    (cut.offset - np.sum(a * kin, axis=1)) / length))
    return out


def _conditional_log_density(ref: np.ndarray, query: np.ndarray, query_is_ref: np.ndarray,
                             m: int, mirrors=()) -> np.ndarray:
    """log density of ``ref`` in its leading columns, conditional on its last ``m``, at
    ``query`` (a reference star does not count itself).

    The k-th neighbour in the joint space under the max-norm sets a half-width ``r``; of
    the ``n_c`` reference stars within ``r`` in the conditioning columns alone, ``k`` are
    within ``r`` in the leading ones too: ``q = k / (n_c (2 r)^d)``, its log with
    ``digamma(k)`` for ``log k`` (the box's size is random: ``log k`` over-states the mean
    log density by ~1 / 2k, digamma does not; n_c is large). The joint and the
    marginal counts share one box in the conditioning columns, so the smoothing there
    cancels; a ratio of two kNN densities smooths the joint (more dimensions) more widely
    than the marginal and under-states the field wherever its conditioning distribution is
    sharp (a colour-magnitude sequence), which over-states every membership there.
    ``mirrors``: see :func:`_mirrored_count` (the marginal count needs none: the cuts are in
    the leading columns).
    """
    d = ref.shape[1] - m
    k = min(FIELD_K, len(ref) - 1)
    dist, _ = cKDTree(ref).query(query, k=k + 1, p=np.inf)
    dist = dist.reshape(len(query), k + 1)
    r = np.maximum(np.where(query_is_ref, dist[:, k], dist[:, k - 1]), 1e-6)
    n_c = cKDTree(ref[:, d:]).query_ball_point(query[:, d:], r, p=np.inf, return_length=True)
    n_c = np.maximum(n_c - query_is_ref, k)
    count = k + _mirrored_count(ref, query, query_is_ref, r, mirrors, np.inf)
    return digamma(count) - np.log(n_c) - d * np.log(2 * r)


def _knn_log_density(ref: np.ndarray, query: np.ndarray, query_is_ref: np.ndarray,
                     mirrors=()) -> np.ndarray:
    """log kNN density of ``ref`` at ``query`` (a reference star does not count itself;
    ``mirrors``: see :func:`_mirrored_count`), with ``digamma(k)`` for ``log k`` (an
    unbiased log density: :func:`_conditional_log_density`)."""
    d = ref.shape[1]
    k = min(FIELD_K, len(ref) - 1)
    dist, _ = cKDTree(ref).query(query, k=k + 1)
    dist = dist.reshape(len(query), k + 1)
    rk = np.maximum(np.where(query_is_ref, dist[:, k], dist[:, k - 1]), 1e-6)
    log_vd = 0.5 * d * np.log(np.pi) - gammaln(0.5 * d + 1)
    count = k + _mirrored_count(ref, query, query_is_ref, rk, mirrors, 2.0)
    return digamma(count) - np.log(len(ref)) - log_vd - d * np.log(rk)


def _mirrored_count(ref, query, query_is_ref, r, mirrors, norm: float) -> np.ndarray:
    """Reference stars mirrored about each catalogue cut (no star lies beyond one) within
    ``r`` of each query (Minkowski ``norm``), a reference star's own mirror left out: what a
    kNN ball reaching past a cut lost of the field's density (the reflection boundary
    correction; two cuts that both bite, a box's corner, are counted one at a time).

    ``mirrors``: per cut, ``(normal_ref, gap_ref, normal_query, gap_query)``: the cut's unit
    normal in the leading (kinematic) columns of the scaled space and each star's distance
    inside it. 0 for every query when no ball reaches a cut.
    """
    out = np.zeros(len(query))
    for n_ref, g_ref, n_q, g_q in mirrors:
        # how far beyond the cut the ball reaches (a max-norm box: its support along n)
        reach = r * (np.sum(np.abs(n_q), axis=1) if norm == np.inf else 1.0) - g_q
        near = reach > 0
        if not near.any():
            continue
        close = g_ref <= float(np.max(reach[near]))  # a mirror lies g_ref beyond the cut
        if not close.any():
            continue
        mirrored = ref[close].copy()
        mirrored[:, :n_ref.shape[1]] += 2.0 * g_ref[close, None] * n_ref[close]
        found = cKDTree(mirrored).query_ball_point(query[near], r[near], p=norm,
                                                   return_length=True)
        # the query's own mirror, 2 g_q away along its normal
        own_dist = 2.0 * g_q[near] * (np.max(np.abs(n_q[near]), axis=1) if norm == np.inf
                                      else 1.0)
        own = query_is_ref[near] & (own_dist <= r[near])
        out[near] += np.maximum(found - own, 0.0)
    return out


def _cmd_arrays(photometry, n):
    if photometry is None:
        return None
    mag, colour = (np.asarray(a, dtype=np.float64) for a in photometry)
    ok = np.isfinite(mag) & np.isfinite(colour)
    if ok.sum() < 50:
        return None
    return mag, colour, ok


def _hess_weights(resid_phi2, width_phi2: float, w, control, log_kin_ratio
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Weights that learn the stream's colour-magnitude density as an on-track minus
    off-track difference (a background-subtracted Hess diagram).

    Stars within :data:`ON_TRACK_WIDTHS` phi2 widths of the track are weighted by their
    kinematic membership probability alone (``log_kin_ratio``: the stream's over the
    field's density of their proper motions and parallax, at the band's stream-to-field
    odds); the control stars get the same weight, scaled so that they stand for the field
    stars in the band. Their colour-magnitude histogram is what the field puts into the
    band's: subtracted, the rest is the stream's.

    Weighting by the model's own probabilities instead (the EM estimate) lets the field
    stars it holds at moderate probability build stream density where they cluster in
    colour and magnitude, which raises their probabilities in turn: probabilities 0.1-0.2
    too high. A one-sequence locus fitted to the members avoids that but follows a faint
    stream's seed core, mostly field, onto the field's sequence.

    Returns
    -------
    w_on, w_off : (n,) arrays
        Per-star weights of the on-track and the (scaled) control histograms.
    """
    on = np.abs(resid_phi2) <= ON_TRACK_WIDTHS * width_phi2
    stream_on = float(np.sum(w[on]))
    field_on = max(float(on.sum()) - stream_on, 1.0)
    g = expit(log_kin_ratio + np.log(max(stream_on, 1.0) / field_on))
    return (np.where(on, g, 0.0),
            np.where(control, g, 0.0) * field_on / max(int(control.sum()), 1))


def _log_cmd(cmd, w, control, w_off=None, shift=None) -> tuple[np.ndarray, np.ndarray]:
    """log colour-magnitude densities of the stream (weights ``w``, less ``w_off``'s
    histogram where given: :func:`_hess_weights`) and the field (the control stars).

    ``shift`` (optional, mag per star): the stream's distance modulus at the star's phi1
    relative to the stream's own (:func:`_fit_cmd_shift`). The stream's density is learnt
    and evaluated at ``mag - shift``, so a stream whose distance changes along it has one
    sharp locus, not one smeared over its distance range; the field's stays in the observed
    magnitudes (a per-star shift has unit Jacobian: the ratio is still a likelihood ratio).
    """
    mag, colour, ok = cmd
    shifted = mag if shift is None else mag - np.asarray(shift, dtype=np.float64)
    c_edges, m_edges, smooth = _cmd_grid(
        colour[ok], min(np.min(mag[ok]), np.min(shifted[ok])) - 0.5,
        max(np.max(mag[ok]), np.max(shifted[ok])) + 0.5)
    return _learnt_log_densities(np.column_stack([colour, mag]), (c_edges, m_edges), smooth,
                                 w, control, ok, w_off, np.column_stack([colour, shifted]))


def _cmd_grid(colour, mag_lo: float, mag_hi: float):
    """Colour and magnitude bin edges (:data:`CMD_BIN`) over ``colour``'s range (0.1 mag
    beyond it) and [mag_lo, mag_hi], and the smoothing (:data:`CMD_SMOOTH`) in bins."""
    c_edges = np.arange(np.min(colour) - 0.1, np.max(colour) + 0.1 + CMD_BIN[0], CMD_BIN[0])
    m_edges = np.arange(mag_lo, mag_hi + CMD_BIN[1], CMD_BIN[1])
    return c_edges, m_edges, (CMD_SMOOTH[0] / CMD_BIN[0], CMD_SMOOTH[1] / CMD_BIN[1])


def _fit_cmd_shift(cmd, phi1, w_on, w_off, weight, control, previous=None):
    """The stream's distance modulus along phi1 relative to its own (mag), from its
    colour-magnitude locus.

    The stars are binned in phi1 (~:data:`CMD_SHIFT_SPACING_DEG`, at least
    :data:`CMD_SHIFT_MIN_STARS` of ``weight``: the model's probabilities). For each bin, the
    stream's background-subtracted Hess diagram (:func:`_hess_weights`' ``w_on - w_off``) is
    learnt from the *other* bins at their current shifts, and the bin's shift is the one
    under which its own stars, weighted the same way, are most likely (the field's part of
    the weights cancels in expectation, so the field does not pull the shift; the stream
    density is mixed with the field's at :data:`CMD_FLOOR`, as in the model). Bin shifts
    are referred to their weighted mean.

    Parameters
    ----------
    cmd : (mag, colour, ok)
    phi1 : array (deg)
    w_on, w_off : arrays
        :func:`_hess_weights`.
    weight : array
        The model's membership probabilities (they set the bins).
    control : bool array
        The control stars (the field's colour-magnitude density).
    previous : (nodes, shifts), optional
        The last iteration's profile (None: no shift).

    Returns
    -------
    (nodes, shifts) or None
        None when the stream has too few members for two bins (its distance gradient cannot
        be measured) and there is no previous profile.
    """
    mag, colour, ok = cmd
    prev = np.zeros(len(mag)) if previous is None else _profile_at(previous, phi1)
    net = np.where(ok, w_on - w_off, 0.0)
    rows_ok = np.flatnonzero(ok)
    order = rows_ok[np.argsort(phi1[rows_ok], kind="stable")]
    edges = phi1_bins(phi1[order], np.where(weight[order] >= 1e-3, weight[order], 0.0),
                      CMD_SHIFT_SPACING_DEG, CMD_SHIFT_MIN_STARS)
    if len(edges) < 3:
        return previous
    pad = CMD_SHIFT_RANGE + float(np.max(np.abs(prev[ok]))) + 0.5
    c_edges, m_edges, smooth = _cmd_grid(colour[ok], np.min(mag[ok]) - pad,
                                         np.max(mag[ok]) + pad)
    ci = _bin_of(colour, c_edges, len(c_edges) - 1)

    def hist(rows, shift, weights):
        h, _, _ = np.histogram2d(colour[rows], mag[rows] - shift[rows], bins=(c_edges, m_edges),
                                 weights=weights[rows])
        return h

    unit = np.ones(len(mag))
    field = gaussian_filter(hist(np.flatnonzero(control & ok), 0.0 * unit, unit), smooth,
                            mode="constant")
    field_at = field[ci, _bin_of(mag, m_edges, len(m_edges) - 1)] / max(field.sum(), 1e-300)
    total = hist(rows_ok, prev, net)
    steps = np.arange(-CMD_SHIFT_RANGE, CMD_SHIFT_RANGE + 0.5 * CMD_SHIFT_STEP, CMD_SHIFT_STEP)
    nodes, shifts, masses = [], [], []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        rows = order[a:b]
        others = np.maximum(gaussian_filter(total - hist(rows, prev, net), smooth,
                                            mode="constant"), 0.0)
        others /= max(others.sum(), 1e-300)

        def score(step, rows=rows, others=others):
            mi = _bin_of(mag[rows] - prev[rows] - step, m_edges, len(m_edges) - 1)
            dens = (1 - CMD_FLOOR) * others[ci[rows], mi] + CMD_FLOOR * field_at[rows]
            return float(np.sum(net[rows] * np.log(np.maximum(dens, 1e-12))))

        # coarse to fine: the score is smooth on the locus' 0.25 mag smoothing
        coarse = steps[::3]
        best = float(coarse[int(np.argmax([score(x) for x in coarse]))])
        fine = steps[np.abs(steps - best) <= 3 * CMD_SHIFT_STEP]
        scores = np.array([score(x) for x in fine])
        best = int(np.argmax(scores))
        step = fine[best] if scores[best] - score(0.0) >= CMD_SHIFT_MIN_GAIN else 0.0
        wb = np.maximum(weight[rows], 1e-12)
        nodes.append(float(np.average(phi1[rows], weights=wb)))
        shifts.append(float(np.average(prev[rows], weights=wb)) + step)
        masses.append(float(np.sum(weight[rows])))
    # not smoothed over bins: a shift from a hundred members is good to a few hundredths of
    # a magnitude, and smoothing would flatten the stream's far ends
    nodes, shifts = np.array(nodes), np.array(shifts)
    shifts -= np.average(shifts, weights=masses)
    keep = distinct_nodes(nodes)
    return nodes[keep], shifts[keep]


def _log_quality(quality, w, control) -> tuple[np.ndarray, np.ndarray]:
    """log densities of the measurement quality (log proper-motion error, a brightness
    proxy) of the stream (weights w) and of the field (the control stars).

    A stream's stars have their own luminosity function (an old population at one distance),
    unlike the field's mix: without photometry its error distribution is what astrometry
    knows of it. Learnt like the colour-magnitude term; not used with photometry, whose
    magnitude already carries this information.
    """
    edges = np.arange(quality.min() - 0.2, quality.max() + 0.2 + QUALITY_BIN, QUALITY_BIN)
    return _learnt_log_densities(quality[:, None], (edges,), (QUALITY_SMOOTH / QUALITY_BIN,),
                                 w, control, np.ones(len(quality), bool))


def _learnt_log_densities(points, edges, smooth, w, control, ok, w_off=None,
                          stream_points=None) -> tuple[np.ndarray, np.ndarray]:
    """log densities at each star of the stream (weights w) and the field (the control
    stars) in a few observables (``points``, one column each): Gaussian-smoothed histograms
    on ``edges`` (``smooth`` in bins), the field's mixed into the stream's at
    :data:`CMD_FLOOR` so a star off the stream's locus is down-weighted, not excluded.
    Stars outside ``ok`` (no such observable) get 0 in both. ``w_off`` (optional): weights
    of a histogram subtracted from the stream's (what the field puts into it; negative
    differences count as 0). ``stream_points`` (optional): where the stars are in the
    stream's own coordinates (the observables with the stream's distance gradient taken
    out), if not ``points``.

    Each star's densities leave the star itself out: with a few hundred members and a
    smoothing kernel narrower than the stream's locus, a field star's own weight can
    outweigh the stream's density where it sits, and EM then keeps every such star at the
    probability it started with (over-confident probabilities).
    """
    stream_points = points if stream_points is None else stream_points
    # a unit weight's share of its own bin after the smoothing
    self_share = float(np.prod([_central_tap(s) for s in smooth]))

    def density(weights, off=None, at=points):
        idx = tuple(_bin_of(at[:, d], e, len(e) - 1) for d, e in enumerate(edges))
        net = np.where(ok, np.asarray(weights, dtype=np.float64)
                       - (0.0 if off is None else np.asarray(off, dtype=np.float64)), 0.0)
        h, _ = np.histogramdd(at[ok], bins=edges, weights=net[ok])
        h = gaussian_filter(h, smooth, mode="constant")
        # a difference's negative parts count as none
        total = h.sum() - net if off is None else float(np.maximum(h, 0.0).sum())
        return np.maximum(h[idx] - net * self_share, 0.0) / np.maximum(total, 1e-300)

    field_at = density(control.astype(float))
    stream_at = density(w, w_off, stream_points)
    stream_at = (1 - CMD_FLOOR) * stream_at + CMD_FLOOR * field_at
    tiny = 1e-12
    return (np.where(ok, np.log(np.maximum(stream_at, tiny)), 0.0),
            np.where(ok, np.log(np.maximum(field_at, tiny)), 0.0))


def _central_tap(sigma: float) -> float:
    """Value at the centre of a unit impulse after ``gaussian_filter`` with ``sigma`` (bins)."""
    r = int(4.0 * sigma + 0.5) + 1
    delta = np.zeros(2 * r + 1)
    delta[r] = 1.0
    return float(gaussian_filter(delta, sigma, mode="constant")[r])


def _absolute_track(resid: Track, base: Track | None, profiles: dict, extent,
                    step_deg: float = 1.5) -> Track:
    """The fitted track in absolute frame values, with its widths (``profiles``:
    :func:`_fit_width_profile`), sampled over ``extent`` (the members' phi1 extent,
    :func:`member_extent`)."""
    lo, hi = extent
    grid = np.linspace(lo, hi, max(int(np.ceil((hi - lo) / step_deg)) + 1, 2)) if hi > lo \
        else np.array([lo])
    values, wid = {}, {}
    for name in TRACK_FEATURES:
        values[name] = _extended(resid, grid, name) + (base.at(grid, name) if base is not None
                                                       else 0.0)
        wid[name] = (_profile_at(profiles[name], grid) if name in profiles
                     else np.full(len(grid), np.nan))
    return Track(grid, values, wid, source="membership fit" + (
        f" about {base.source}" if base is not None else ""))
