"""Survey-level statistics and de-duplication (pure computation).

A survey runs one blind job per patch. Each job's significance is already corrected for its
own tests (pairs x frames); over the survey it is corrected once more for the number of
patches searched: ``p_survey = 1 - (1 - p_job)^N``. Overlapping patches are not independent,
so this is conservative.

Candidates of different patches (or of one patch's frames) that describe the same structure
are merged: they share stars (a patch's margin overlaps its neighbours), their tracks run
together on the sky with the same proper motion, or one continues the other along its great
circle with the proper motions it predicts (a long stream seen in pieces with a gap).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import log_ndtr, ndtri_exp

from .frames import _unit_vectors
from .significance import MAX_SIGMA

#: Two candidates sharing at least this fraction of the smaller one's members are the same.
SHARED_MEMBERS = 0.2
#: Two tracks are the same stream where at least MIN_CLOSE_POINTS of one's points lie within
#: CLOSE_DEG of the other's, with proper motions within CLOSE_PM there.
CLOSE_DEG = 0.75
CLOSE_PM = 1.5
MIN_CLOSE_POINTS = 3


def survey_sigma(job_sigma, n_patches: int) -> np.ndarray:
    """A per-job sigma corrected for ``n_patches`` jobs searched (look-elsewhere)."""
    z = np.asarray(job_sigma, dtype=np.float64)
    log_p = log_ndtr(-z)  # one-sided p of the job
    n = max(int(n_patches), 1)
    log1m = n * np.log1p(-np.minimum(np.exp(log_p), 1 - 1e-16))
    with np.errstate(divide="ignore"):
        log_ps = np.where(np.exp(log_p) * n < 1e-8, math.log(n) + log_p,
                          np.log(-np.expm1(log1m)))
    return np.clip(-ndtri_exp(np.minimum(log_ps, 0.0)), -MAX_SIGMA, MAX_SIGMA)


def job_sigma_for(survey_threshold: float, n_patches: int) -> float:
    """The per-job sigma whose survey-corrected value is ``survey_threshold`` (bisection):
    the threshold each patch's job runs at, so nothing that could pass is thrown away."""
    lo, hi = float(survey_threshold), float(MAX_SIGMA)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if survey_sigma(mid, n_patches) < survey_threshold:
            lo = mid
        else:
            hi = mid
    return hi


def _unit(ra, dec) -> np.ndarray:
    """(n, 3) unit vectors of ICRS positions (degrees)."""
    return _unit_vectors(np.asarray(ra, float), np.asarray(dec, float)).reshape(3, -1).T


def tracks_coincide(a: dict, b: dict) -> bool:
    """Whether two ICRS tracks (dicts of ra, dec, pmra, pmdec arrays) are one stream."""
    if len(a["ra"]) == 0 or len(b["ra"]) == 0:
        return False
    va, vb = _unit(a["ra"], a["dec"]), _unit(b["ra"], b["dec"])
    cos = np.clip(va @ vb.T, -1.0, 1.0)
    nearest = np.argmax(cos, axis=1)
    sep = np.degrees(np.arccos(cos[np.arange(len(va)), nearest]))
    close = sep <= CLOSE_DEG
    if close.sum() < min(MIN_CLOSE_POINTS, len(va)):
        return False
    dpm = np.hypot(np.asarray(a["pmra"])[close] - np.asarray(b["pmra"])[nearest[close]],
                   np.asarray(a["pmdec"])[close] - np.asarray(b["pmdec"])[nearest[close]])
    return bool(np.nanmedian(dpm) <= CLOSE_PM)


#: Two pieces of one stream with a gap between them: each lies on the other's great circle
#: (within CONTINUE_DEG), the gap is at most MAX_GAP_DEG, and the proper motions of one,
#: extrapolated linearly along that circle, predict the other's within CLOSE_PM.
CONTINUE_DEG = 1.0
MAX_GAP_DEG = 15.0


def tracks_continue(a: dict, b: dict) -> bool:
    """Whether track ``b`` continues track ``a`` (see :data:`CONTINUE_DEG`)."""
    from .frames import StreamFrame, fit_great_circle_pole, icrs_to_frame

    if len(a["ra"]) < 3 or len(b["ra"]) < 3:
        return False
    try:
        pole = fit_great_circle_pole(a["ra"], a["dec"])
        frame = StreamFrame.from_pole(*pole, float(np.median(a["ra"])),
                                      float(np.median(a["dec"])))
    except ValueError:
        return False
    pa1, pa2, ma1, ma2 = icrs_to_frame(frame, a["ra"], a["dec"], a["pmra"], a["pmdec"])
    pb1, pb2, mb1, mb2 = icrs_to_frame(frame, b["ra"], b["dec"], b["pmra"], b["pmdec"])
    if np.median(np.abs(pb2)) > CONTINUE_DEG or np.median(np.abs(pa2)) > CONTINUE_DEG:
        return False
    lo, hi = float(np.min(pa1)), float(np.max(pa1))
    gap = np.maximum(np.maximum(lo - pb1, pb1 - hi), 0.0)
    if gap.min() > MAX_GAP_DEG:
        return False
    for ma, mb in ((ma1, mb1), (ma2, mb2)):
        fit = np.polyfit(pa1, ma, 1) if hi - lo >= 3.0 else [0.0, float(np.median(ma))]
        if np.nanmedian(np.abs(mb - np.polyval(fit, pb1))) > CLOSE_PM:
            return False
    return True


def merge_groups(members: list[np.ndarray], tracks: list[dict]) -> list[list[int]]:
    """Groups of candidate indices that describe one structure (union-find over pairs that
    share members or whose tracks coincide), each group sorted, groups by first index."""
    n = len(members)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    sets = [np.unique(np.asarray(m, np.int64)) for m in members]
    for i in range(n):
        for j in range(i + 1, n):
            if find(i) == find(j):
                continue
            small = min(len(sets[i]), len(sets[j]))
            shared = len(np.intersect1d(sets[i], sets[j], assume_unique=True))
            if (small and shared >= SHARED_MEMBERS * small) or any(
                    test(tracks[x], tracks[y]) for test in (tracks_coincide, tracks_continue)
                    for x, y in ((i, j), (j, i))):
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def great_circle_extent(ra, dec) -> float:
    """Largest angular separation (deg) between two of the points (a track's length)."""
    v = _unit(ra, dec)
    if len(v) < 2:
        return 0.0
    return float(np.degrees(np.arccos(np.clip((v @ v.T).min(), -1.0, 1.0))))
