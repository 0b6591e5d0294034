"""Calibration of sigma: false candidates on stream-free catalogues, detection of streams."""

import numpy as np
import pytest

from ray_app.core.features import FeatureScales, stream_features
from ray_app.core.recovery import null_shuffle_cell, recover
from ray_app.core.significance import (
    DEFAULT_SIGMA_THRESHOLD,
    expected_false_candidates,
    fit_null,
    job_sigma,
    validate_sigma,
)
from ray_app.data.registry import get_stream
from ray_app.data.synthetic import shuffle_kinematics, synthetic_catalogue

N_NULL_CATALOGUES = 24


#: the null the runner uses for jobs with the default feature scales
JOB_CELL = null_shuffle_cell(FeatureScales())


def _features(cols, key="gd-1"):
    _, X = stream_features(get_stream(key).frame, cols["ra"], cols["dec"], cols["pmra"],
                           cols["pmdec"], cols["parallax"])
    return X, np.asarray(cols["source_id"])


def test_false_candidate_rate_on_stream_free_catalogues(gd1_field):
    """>= 20 stream-free catalogues (synthetic backgrounds and the real field with its
    kinematics shuffled); no false candidate at the default threshold."""
    t, _ = gd1_field
    real = {c: t[c].to_numpy() for c in ("source_id", "ra", "dec", "pmra", "pmdec", "parallax")}
    rng = np.random.default_rng(7)
    max_sigma, false = [], 0
    for i in range(N_NULL_CATALOGUES):
        if i % 3 == 2:
            cols = shuffle_kinematics(real, rng)
            key = "gd-1"
        else:
            key = ("gd-1", "palomar-5", "jhelum")[i % 3]
            cols = synthetic_catalogue(key, n_background=8000, n_stream=0, seed=1000 + i)
        X, sid = _features(cols, key)
        r = recover(X, sid, 32, DEFAULT_SIGMA_THRESHOLD, seed=i, shuffle_cell=JOB_CELL)
        sig = np.concatenate([r.cands.pair_sigma, r.cands.essential_sigma])
        max_sigma.append(float(np.nanmax(sig)))
        false += len(r.cands.candidates)
    rate = false / N_NULL_CATALOGUES
    print(f"\nfalse candidates: {false} in {N_NULL_CATALOGUES} stream-free catalogues "
          f"({rate:.3f}/job) at sigma >= {DEFAULT_SIGMA_THRESHOLD}; nominal "
          f"{expected_false_candidates(DEFAULT_SIGMA_THRESHOLD):.1e}/job; max sigma per job: "
          f"median {np.median(max_sigma):.2f}, max {np.max(max_sigma):.2f}")
    assert false == 0
    # calibration, not just a high bar: the largest noise sigma of a job is not ~0 or ~inf
    assert -3.0 < np.median(max_sigma) < 3.0


@pytest.mark.parametrize("key,seed", [("gd-1", 1), ("palomar-5", 2), ("jhelum", 3)])
def test_injected_stream_is_detected_with_members(key, seed):
    cols = synthetic_catalogue(key, n_background=15000, n_stream=400, seed=seed)
    X, sid = _features(cols, key)
    r = recover(X, sid, 32, DEFAULT_SIGMA_THRESHOLD, shuffle_cell=JOB_CELL)
    assert r.cands.candidates, "stream not detected"
    best = r.cands.candidates[0]
    truth = np.asarray(cols["is_stream"])
    tp = truth[best.members].sum()
    print(f"\n{key}: sigma={best.significance:.1f} completeness={tp / truth.sum():.2f} "
          f"purity={tp / len(best.members):.2f}")
    assert tp / truth.sum() > 0.5 and tp / len(best.members) > 0.4


def test_sigma_is_monotonic_and_look_elsewhere_corrected():
    null = fit_null(np.random.default_rng(0).exponential(0.1, 500))
    pers = np.linspace(0.05, 2.0, 40)
    s10 = job_sigma(null.log_survival(pers), 10)
    s1000 = job_sigma(null.log_survival(pers), 1000)
    assert np.all(np.diff(s10) >= 0)
    assert np.all(s1000 <= s10)  # more peaks searched: less significant
    assert np.isfinite(job_sigma(null.log_survival([50.0]), 100)).all()


@pytest.mark.parametrize("value,expected", [(3, 3.0), (4.5, 4.5), (np.float32(2.5), 2.5)])
def test_integer_sigma_is_kept(value, expected):
    assert validate_sigma(value) == expected


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "3", None, True])
def test_bad_sigma_rejected(bad):
    with pytest.raises(ValueError, match="sigmaThreshold"):
        validate_sigma(bad)


def _chain(densities):
    """Persistence of stars on a line (each linked to the next), with these densities."""
    from ray_app.core.persistence import persistence_from_edges

    f = np.asarray(densities, dtype=float)
    n = len(f)
    return f, persistence_from_edges(f, np.arange(n), np.arange(n - 1), np.arange(1, n))


def test_a_split_field_dying_into_a_stream_is_the_field_not_a_candidate():
    from ray_app.core.recovery import field_pairs

    # a dense stream (3 stars), a saddle, the field's denser half (6 stars), then 8 sparse
    # field stars below the saddle: at its death the field holds 6 of the 10 stars present
    # but only 6 of all 18
    f, pers = _chain([10, 9, 9, 2, 5, 4, 4, 4, 4, 4] + [1] * 8)
    (i,) = np.flatnonzero(pers.younger_size == 6)
    assert pers.younger_size[i] * 2 < len(f)
    assert field_pairs(pers, f, background_ceiling=6.0)[i]
    # a peak denser than the background reaches is an overdensity, not the field
    assert not field_pairs(pers, f, background_ceiling=4.5)[i]
    # a small stream dying into the field is never the field
    f, pers = _chain([6, 5, 5, 5, 5, 5, 2, 4.5, 4, 4] + [1] * 8)
    (j,) = np.flatnonzero(pers.younger_size == 3)
    assert not field_pairs(pers, f, background_ceiling=9.0)[j]
