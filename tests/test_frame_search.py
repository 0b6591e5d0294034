"""Frame robustness: a stream whose true pole is 8 deg off the registry's is found by the
tilted frames, and every frame searched is paid for in the look-elsewhere correction."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_app.core.recovery import candidates, recover
from ray_app.data.registry import get_stream
from ray_app.data.synthetic import Injection, synthetic_sky
from ray_app.engine.engines import InProcessEngine
from ray_app.pipeline.params import DEFAULT_FRAME_TILTS, RecoverParams
from ray_app.pipeline.runner import run_recovery


def _tilted_sky(path, tilt, seed):
    gd1 = get_stream("gd-1")
    cols = synthetic_sky(gd1.footprint, 8000, [Injection(gd1, 250, tilt_deg=tilt)], seed=seed,
                         cuts=gd1.default_cuts)
    pq.write_table(pa.table({k: v for k, v in cols.items() if k != "distance_kpc"}), path)
    return cols


@pytest.mark.parametrize("seed", [1, 2])
def test_tilted_stream_needs_the_tilted_frames(tmp_path, seed):
    src = tmp_path / "sky.parquet"
    cols = _tilted_sky(src, 8.0, seed)
    found = {}
    for name, tilts in (("registry", (0.0,)), ("frames", DEFAULT_FRAME_TILTS)):
        params = RecoverParams(stream_key="gd-1", input_path=str(src), seed=seed,
                               out_dir=str(tmp_path / name), write_ecsv=False,
                               frame_tilts=tilts)
        summary = run_recovery(params, InProcessEngine())
        stars = pq.read_table(tmp_path / name / "stars.parquet",
                              columns=["is_stream", "candidate"])
        truth = stars["is_stream"].to_numpy()
        label = stars["candidate"].to_numpy()
        found[name] = [(c, np.sum(truth & (label == c["index"])) / max(c["n_members"], 1),
                        np.sum(truth & (label == c["index"])) / truth.sum())
                       for c in summary.candidates]
    assert not any(purity >= 0.5 for _, purity, _ in found["registry"])
    best = max(found["frames"], key=lambda x: x[2])
    cand, purity, completeness = best
    assert purity > 0.9 and completeness > 0.9
    assert cand["frame"]["track_tilt_deg"] in (4.0, 8.0)
    # its track leaves the registry's by up to 7 deg: named only where it coincides
    assert cand["match"] is None or cand["match"]["key"] == "gd-1"
    assert cols["is_stream"].sum() > 150


def test_each_frame_is_paid_for(rng):
    from ray_app.core.features import FeatureScales, stream_features

    gd1 = get_stream("gd-1")
    cols = synthetic_sky(gd1.footprint, 6000, [Injection(gd1, 300)], seed=3,
                         cuts=gd1.default_cuts)
    _, X = stream_features(gd1.frame, cols["ra"], cols["dec"], cols["pmra"], cols["pmdec"],
                           cols["parallax"], FeatureScales())
    # a low threshold: the same top candidate must be listed by both searches to compare
    rec = recover(X, cols["source_id"], 16, 3.0, seed=1)
    one = rec.cands
    five = candidates(rec.pers, rec.dens.log_density, 3.0, one.null, n_searches=5)
    assert five.n_tests == 5 * one.n_tests
    top1 = max(c.significance for c in one.candidates)
    top5 = max(c.significance for c in five.candidates)
    assert top5 < top1 - 0.1  # five searches cost significance
    assert np.all(five.pair_sigma <= one.pair_sigma + 1e-12)


def test_frame_tilts_validated(tmp_path):
    for bad in ((4.0,), (0.0, 0.0), (0.0, 45.0), tuple(float(x) for x in range(10))):
        with pytest.raises(ValueError, match="frame_tilts"):
            RecoverParams(stream_key="gd-1", frame_tilts=bad, out_dir=str(tmp_path / "o"))
