"""The `ray-app` command: outputs contract, bad input, and the local Ray path."""

import json

import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_app.cli import EXIT_BAD_INPUT, main

SMALL = ["--n-background", "6000", "--n-stream", "300", "--engine", "in-process"]


def _write(path, n=100, **overrides):
    rng = np.random.default_rng(3)
    cols = {"source_id": np.arange(n, dtype=np.int64) + 10**15,
            "ra": rng.uniform(150, 160, n), "dec": rng.uniform(30, 40, n),
            "pmra": rng.normal(-5, 2, n), "pmdec": rng.normal(-12, 2, n),
            "parallax": rng.normal(0.2, 0.3, n)}
    cols.update(overrides)
    cols = {k: v for k, v in cols.items() if v is not None}
    pq.write_table(pa.table(cols), path)
    return path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "demo"
    assert main(["recover", "GD-1", "--out", str(out), *SMALL]) == 0
    return out


def test_outputs_contract(demo_run):
    out = demo_run
    names = {p.name for p in out.iterdir()}
    assert {"persistence.npz", "candidates.json", "candidate_members.npz", "metadata.json",
            "stars.parquet", "gaia_table.ecsv", "summary.png", "manifest.json",
            "candidate_0.png"} <= names
    pz = np.load(out / "persistence.npz")
    assert pz["diagram_0"].ndim == 2 and pz["diagram_0"].shape[1] == 2
    assert len(pz["peak_source_id"]) == len(pz["saddle_source_id"]) == len(pz["diagram_0"])
    assert np.all(pz["diagram_0"][:, 0] >= pz["diagram_0"][:, 1])  # birth >= death
    assert np.all(np.isneginf(pz["essential_0"][:, 1]))
    cands = json.loads((out / "candidates.json").read_text())
    assert cands and cands[0]["significance"] >= 5
    for key in ("significance", "birth", "death", "persistence", "peak_source_id",
                "saddle_source_id", "n_members", "centroid", "spread", "n_core", "track",
                "length_deg", "width_deg", "match", "frame"):
        assert key in cands[0]
    assert cands[0]["match"]["key"] == "gd-1"  # the injected stream is named
    assert cands[0]["length_deg"] > 30 and 0.05 < cands[0]["width_deg"] < 0.6
    point = cands[0]["track"][0]
    assert {"phi1", "phi2", "pm_phi1_cosphi2", "pm_phi2", "parallax", "phi2_width",
            "distance_modulus_offset"} <= set(point)
    assert np.all(np.diff([p["phi1"] for p in cands[0]["track"]]) <= 2.0)
    assert set(cands[0]["centroid"]) == {"phi1", "phi2", "pm_phi1_cosphi2", "pm_phi2",
                                         "parallax"}
    members = np.load(out / "candidate_members.npz")
    assert len(members["candidate_0"]) == cands[0]["n_members"]
    assert len(members["core_0"]) == cands[0]["n_core"]
    assert len(members["probability_0"]) == cands[0]["n_members"]
    assert np.all(members["probability_0"] >= 0.5)
    stars = pq.read_table(out / "stars.parquet")
    for col in ("source_id", "ra", "pmra", "feat_phi1", "feat_parallax", "log_density",
                "candidate", "member_probability", "core_candidate", "phot_g_mean_mag",
                "bp_rp", "pmra_error", "is_stream", "ruwe"):  # input columns travel too
        assert col in stars.column_names
    prob = stars["member_probability"].to_numpy()
    assert np.all((stars["candidate"].to_numpy() >= 0) == (prob >= 0.5))
    cand_col = stars["candidate"].to_numpy()
    assert set(members["candidate_0"].tolist()) >= set(
        stars["source_id"].to_numpy()[cand_col == 0].tolist())
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["parameters"]["nNeighbors"] == 32
    assert meta["counts"]["input_rows"] == 6000 + meta["data"]["n_stream_kept"]
    assert 250 < meta["data"]["n_stream_kept"] <= 300
    assert meta["parameters"]["feature_scales"]["phi1"]["scale"] == 10.0
    assert meta["parameters"]["features_relative_to_track"]["features"] == [
        "phi2", "pm_phi1_cosphi2", "pm_phi2", "parallax"]
    assert meta["significance"]["frames_searched"] == 5
    assert meta["membership"]["photometry"]["colour"] == "bp_rp"
    # with photometry, candidate_<i>.png gains a fifth panel: the magnitude along phi1
    assert matplotlib.image.imread(out / "candidate_0.png").shape[0] == 5 * 2.5 * 80
    shift = meta["membership"]["candidates"][0]["distance_modulus_offset"]
    assert shift is None or len(shift["phi1_deg"]) == len(shift["mag"]) >= 2
    # a synthetic sky is not selected by proper motion: no cut in the motions is found
    assert meta["membership"]["candidates"][0]["motion_cuts"] == []
    assert meta["truth"][0]["precision"] > 0.9 and meta["truth"][0]["recall"] > 0.9
    assert {"density", "merge", "candidates", "write"} <= set(meta["timings_s"])
    assert "numpy" in meta["software"] and meta["data"]["kind"] == "synthetic"
    manifest = json.loads((out / "manifest.json").read_text())
    assert {f["name"] for f in manifest["files"]} == names - {"manifest.json"}


def test_rerun_is_deterministic(demo_run, tmp_path):
    out = tmp_path / "again"
    assert main(["recover", "gd-1", "--out", str(out), *SMALL]) == 0
    a = np.load(demo_run / "persistence.npz")
    b = np.load(out / "persistence.npz")
    assert np.array_equal(a["diagram_0"], b["diagram_0"])
    assert json.loads((out / "candidates.json").read_text()) == json.loads(
        (demo_run / "candidates.json").read_text())


def test_integer_sigma_accepted(tmp_path):
    out = tmp_path / "s3"
    assert main(["recover", "gd-1", "--out", str(out), "--sigma-threshold", "3", *SMALL]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["parameters"]["sigmaThreshold"] == 3.0


@pytest.mark.parametrize("args,needle", [
    (["--n-neighbors", "0"], "nNeighbors"),
    (["--n-neighbors", "1025"], "nNeighbors"),
    (["--n-neighbors", "3.5"], "nNeighbors"),
    (["--sigma-threshold", "0"], "sigmaThreshold"),
    (["--sigma-threshold", "-2"], "sigmaThreshold"),
    (["--sigma-threshold", "abc"], "sigmaThreshold"),
])
def test_bad_parameters(tmp_path, capsys, args, needle):
    out = tmp_path / "o"
    assert main(["recover", "gd-1", "--out", str(out), *args, *SMALL]) == EXIT_BAD_INPUT
    assert needle in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".o.partial*"))


def test_unknown_stream(tmp_path, capsys):
    assert main(["recover", "gd-one", "--out", str(tmp_path / "o")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "gd-one" in err and "gd-1" in err


@pytest.mark.parametrize("case,needle", [
    ("missing_column", "missing required column(s) parallax"),
    ("nan_only", "no star has finite"),
    ("too_few", "needs at least k+1=33"),
    ("unreadable", "not a readable Parquet file"),
    ("absent", "does not exist"),
    ("wrong_units", "does not look like mas/yr"),
    ("duplicate_ids", "source_id values must be unique"),
])
def test_bad_catalogues(tmp_path, capsys, case, needle):
    src = tmp_path / "in.parquet"
    if case == "missing_column":
        _write(src, parallax=None)
    elif case == "nan_only":
        _write(src, pmra=np.full(100, np.nan))
    elif case == "too_few":
        _write(src, n=20)
    elif case == "unreadable":
        src.write_bytes(b"this is not parquet")
    elif case == "wrong_units":
        _write(src, pmra=np.full(100, 3.0e6))
    elif case == "duplicate_ids":
        _write(src, source_id=np.zeros(100, dtype=np.int64))
    out = tmp_path / "o"
    rc = main(["recover", "gd-1", "--input", str(src), "--out", str(out), "--engine",
               "in-process"])
    assert rc == EXIT_BAD_INPUT
    assert needle in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".o.partial*"))


def test_nan_rows_dropped_and_counted(tmp_path):
    src = _write(tmp_path / "in.parquet", n=200,
                 parallax=np.where(np.arange(200) < 15, np.nan, 0.1))
    out = tmp_path / "o"
    assert main(["recover", "gd-1", "--input", str(src), "--out", str(out), "--engine",
                 "in-process", "--n-neighbors", "8"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["counts"]["dropped_nan"] == 15 and meta["counts"]["stars"] == 185


def test_catalog_lists_legacy_keys(capsys):
    assert main(["catalog", "--json"]) == 0
    keys = {row["key"] for row in json.loads(capsys.readouterr().out)}
    assert {"gd-1", "palomar-5", "jhelum", "orphan-chenab", "atlas-aliqa-uma"} <= keys


def test_recover_through_local_ray(local_ray, demo_run, tmp_path):
    """The default engine: a named DensityActor on a real local Ray; same results."""
    out = tmp_path / "ray"
    args = [a for a in SMALL if a not in ("--engine", "in-process")]
    assert main(["recover", "gd-1", "--out", str(out), *args]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["engine"]["name"] == "ray" and meta["engine"]["backend"]["name"] == "cpu"
    assert meta["engine"]["shard_actors"] == ["density-actor-0"]
    assert json.loads((out / "candidates.json").read_text()) == json.loads(
        (demo_run / "candidates.json").read_text())


def test_columns_mapping(tmp_path, capsys):
    rng = np.random.default_rng(4)
    n = 400
    table = pa.table({"SOURCE_ID": np.arange(n, dtype=np.int64) + 7, "RA_ICRS": rng.uniform(
        150, 160, n), "DE_ICRS": rng.uniform(30, 40, n), "pmRA": rng.normal(-5, 2, n),
        "pmDE": rng.normal(-12, 2, n), "Plx": rng.normal(0.2, 0.3, n)})
    src = tmp_path / "vizier.parquet"
    pq.write_table(table, src)
    mapping = "SOURCE_ID=source_id,RA_ICRS=ra,DE_ICRS=dec,pmRA=pmra,pmDE=pmdec,Plx=parallax"
    out = tmp_path / "o"
    assert main(["recover", "gd-1", "--input", str(src), "--columns", mapping, "--out",
                 str(out), "--engine", "in-process", "--n-neighbors", "8"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["counts"]["stars"] == n and meta["data"]["columns_renamed"]["Plx"] == "parallax"
    for bad, needle in (("RA_ICRS=right_ascension", "unknown name(s) right_ascension"),
                        ("NOPE=ra", "does not have"), ("RA_ICRS", "FILE_NAME=our_name")):
        assert main(["recover", "gd-1", "--input", str(src), "--columns", bad, "--out",
                     str(tmp_path / "x"), "--engine", "in-process"]) == EXIT_BAD_INPUT
        assert needle in capsys.readouterr().err
