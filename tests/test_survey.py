"""Sky survey: planning, merging across patches, resume, failures, HATS partitions."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_app.cli import EXIT_BAD_INPUT, main
from ray_app.core.survey import job_sigma_for, merge_groups, survey_sigma
from ray_app.data.regions import healpix_index
from ray_app.data.survey_sky import SyntheticSurveySky, read_hats, write_hats
from ray_app.engine.engines import InProcessEngine
from ray_app.survey.plan import FINE_LEVEL, area_pixels, owner_of, plan_patches
from ray_app.survey.run import SurveyParams, run_survey

GD1_AREA = {"cone": {"center": [150, 35], "radius": 7}}
# 2000 stream members of an old population (mostly stars near the turnoff, G 19-20.5): enough
# for GD-1 to be seen by several patches at this field density
FAST = {"density_scale": 0.006, "n_neighbors": 16, "concurrency": 2, "stream_members": 2000}


@pytest.mark.parametrize("area,level", [({"region": GD1_AREA}, 3),
                                        ({"healpix": "1:4,5"}, 2),
                                        ({"min_abs_b": 75.0}, 3)])
def test_patches_partition_the_area(area, level):
    fine = area_pixels(**area)
    patches = plan_patches(fine, level, 2.0)
    owned = np.concatenate([np.asarray(p.owned) for p in patches])
    assert len(owned) == len(np.unique(owned)) == len(fine)  # no overlap, no gap
    assert set(owned.tolist()) == set(fine.tolist())
    # every owned pixel is inside its patch's search cone, with the overlap to spare
    from astropy_healpix import HEALPix

    hp = HEALPix(nside=2**FINE_LEVEL, order="nested")
    for p in patches:
        lon, lat = hp.healpix_to_lonlat(np.asarray(p.owned))
        ra, dec = lon.to_value("deg"), lat.to_value("deg")
        v = np.stack([np.cos(np.radians(dec)) * np.cos(np.radians(ra)),
                      np.cos(np.radians(dec)) * np.sin(np.radians(ra)),
                      np.sin(np.radians(dec))], axis=1)
        c = np.array([np.cos(np.radians(p.dec)) * np.cos(np.radians(p.ra)),
                      np.cos(np.radians(p.dec)) * np.sin(np.radians(p.ra)),
                      np.sin(np.radians(p.dec))])
        assert np.degrees(np.arccos(np.clip(v @ c, -1, 1))).max() <= p.radius - 2.0
        assert (owner_of(ra, dec, patches) == patches.index(p)).all()


def test_area_and_patch_arguments_are_checked():
    with pytest.raises(ValueError, match="no survey area"):
        area_pixels()
    with pytest.raises(ValueError, match="give one of --region, --healpix and --all-sky"):
        area_pixels(region=GD1_AREA, all_sky=True)
    with pytest.raises(ValueError, match=r"--healpix must be LEVEL:PIX"):
        area_pixels(healpix="4-5")
    with pytest.raises(ValueError, match=r"pixels must be integers in \[0, 48\)"):
        area_pixels(healpix="1:48")
    with pytest.raises(ValueError, match=r"--min-abs-b must be in \[0, 90\)"):
        area_pixels(min_abs_b=95)
    with pytest.raises(ValueError, match=r"--patch-level must be an integer in \[1, 6\]"):
        plan_patches(area_pixels(region=GD1_AREA), 0)


def test_survey_sigma_is_a_look_elsewhere_correction():
    assert survey_sigma(5.0, 1) == pytest.approx(5.0)
    assert survey_sigma(5.0, 100) < survey_sigma(5.0, 10) < 5.0
    for n in (1, 7, 60, 500):
        assert survey_sigma(job_sigma_for(5.0, n), n) == pytest.approx(5.0, abs=1e-6)


def test_merge_groups_by_shared_members_and_by_tracks():
    line = {"ra": np.linspace(140, 150, 11), "dec": np.full(11, 30.0),
            "pmra": np.full(11, -5.0), "pmdec": np.full(11, -10.0)}
    shifted = {**line, "ra": line["ra"] + 8}         # continues the same track
    other_pm = {**shifted, "pmra": np.full(11, 3.0)}  # same sky, other proper motion
    far = {**line, "dec": line["dec"] + 20}
    groups = merge_groups([np.arange(0, 50), np.arange(40, 90), np.arange(200, 250),
                           np.arange(300, 350), np.arange(400, 450)],
                          [line, far, shifted, other_pm, far])
    # 0-1 share 10 of 50 members; 0-2 coincide on the sky; 3 differs in proper motion;
    # 4 shares the far track with 1
    assert groups == [[0, 1, 2, 4], [3]]


def test_synthetic_sky_is_the_same_whoever_asks():
    from ray_app.data.regions import parse_region

    sky = SyntheticSurveySky(seed=3, density_scale=0.005, inject=("gd-1",))
    a = sky.stars_in(parse_region({"cone": {"center": [150, 35], "radius": 5}}))
    b = sky.stars_in(parse_region({"cone": {"center": [153, 36], "radius": 5}}))
    common, ia, ib = np.intersect1d(a["source_id"], b["source_id"], return_indices=True)
    assert len(common) > 100 and a["is_stream"].sum() > 0
    for k in ("ra", "dec", "pmra", "pmdec", "parallax"):
        assert np.array_equal(a[k][ia], b[k][ib])


@pytest.fixture(scope="module")
def gd1_survey(tmp_path_factory):
    out = tmp_path_factory.mktemp("survey") / "gd1"
    params = SurveyParams(out=str(out), region=GD1_AREA, inject=("gd-1",), **FAST)
    state = run_survey(params, InProcessEngine("cpu"))
    return out, params, state


def test_a_stream_crossing_patches_is_one_named_candidate(gd1_survey):
    out, params, state = gd1_survey
    assert state["status"] == "completed" and state["totals"]["failed"] == 0
    cands = pq.read_table(out / "candidates.parquet").to_pylist()
    gd1 = [c for c in cands if c["match_key"] == "gd-1"]
    assert len(gd1) == 1, cands  # one survey candidate, however many patches saw it
    assert len(gd1[0]["patches"]) >= 3 and gd1[0]["significance"] >= 5
    members = pq.read_table(out / "members.parquet").to_pydict()
    mine = np.asarray(members["candidate"]) == gd1[0]["id"]
    assert len(np.unique(np.asarray(members["source_id"])[mine])) == mine.sum()  # no repeats
    truth = np.asarray(members["truth_stream_label"])[mine]
    assert (truth == 0).mean() > 0.5  # mostly the injected stars
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == ["candidates.parquet", "members.parquet",
                                                      "map.png", "survey.json"]
    survey = json.loads((out / "survey.json").read_text())
    assert set(survey["patches"]) == {p.id for p in params.patches}
    assert all(r["status"] == "done" and r["seconds"] > 0 for r in survey["patches"].values())
    assert survey["not_searched"] == {"patches": [], "area_deg2": 0}


def test_a_rerun_resumes_and_skips_finished_patches(gd1_survey, tmp_path):
    out, params, _ = gd1_survey
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    redo = params.patches[0].id
    shutil.rmtree(copy / "patches" / redo)
    again = SurveyParams(out=str(copy), region=GD1_AREA, inject=("gd-1",), **FAST)
    state = run_survey(again, InProcessEngine("cpu"))
    resumed = {pid for pid, r in state["patches"].items() if r.get("resumed")}
    assert resumed == {p.id for p in params.patches} - {redo}
    assert state["patches"][redo]["status"] == "done" and not state["patches"][redo].get(
        "resumed")
    before = pq.read_table(out / "candidates.parquet").to_pylist()
    after = pq.read_table(copy / "candidates.parquet").to_pylist()
    assert [(c["match_key"], c["n_members"]) for c in before] == \
        [(c["match_key"], c["n_members"]) for c in after]
    # another survey into the same folder is refused, nothing touched
    with pytest.raises(ValueError, match="holds a survey of other parameters"):
        run_survey(SurveyParams(out=str(copy), region=GD1_AREA, inject=("gd-1",),
                                **{**FAST, "n_neighbors": 12}), InProcessEngine("cpu"))


def test_a_folder_that_is_not_a_survey_is_refused(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    rc = main(["survey", "--region", json.dumps(GD1_AREA), "--out", str(tmp_path),
               "--engine", "in-process"])
    assert rc == EXIT_BAD_INPUT
    assert "not a ray-app survey" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_hats_source_reads_only_the_partitions_a_patch_needs_and_failures_are_reported(
        tmp_path, capsys):
    """A HATS catalogue with one corrupt partition: the patches that need it fail (after a
    retry) and are reported with the area left unsearched; the others complete."""
    from ray_app.data.regions import parse_region

    sky = SyntheticSurveySky(seed=5, density_scale=0.006)
    area = {"cone": {"center": [200, 50], "radius": 14}}
    cols = sky.stars_in(parse_region({"cone": {"center": [200, 50], "radius": 28}}))
    table = pa.table({k: v for k, v in cols.items() if k not in ("is_stream",)})
    root = tmp_path / "hats"
    write_hats(table, root, order=5)
    region = parse_region({"cone": {"center": [200, 50], "radius": 4}})
    got, opened, total = read_hats(root, region)
    inside = region.contains(cols["ra"], cols["dec"])
    assert sorted(got["source_id"].to_pylist()) == sorted(cols["source_id"][inside].tolist())
    assert 0 < opened < total  # only the partitions near the cone
    # corrupt one partition near the area's edge (12 deg north of its centre)
    bad = int(np.atleast_1d(healpix_index(200.0, 62.0, 5))[0])
    victim = next(root.glob(f"Norder=5/Dir=*/Npix={bad}/part0.parquet"))
    victim.write_bytes(b"not parquet")
    out = tmp_path / "survey"
    rc = main(["survey", "--region", json.dumps(area), "--source", str(root), "--out",
               str(out), "--engine", "in-process", "--n-neighbors", "16", "--retries", "1"])
    assert rc == 1  # completed, but not everything was searched
    text = capsys.readouterr().out
    assert "NOT searched" in text
    survey = json.loads((out / "survey.json").read_text())
    failed = survey["not_searched"]["patches"]
    assert failed and survey["not_searched"]["area_deg2"] > 0
    for pid in failed:
        rec = survey["patches"][pid]
        assert rec["status"] == "failed" and rec["attempts"] == 2 and rec["error"]
    assert any(r["status"] == "done" for r in survey["patches"].values())
    assert (out / "manifest.json").exists() and (out / "map.png").exists()


def test_a_survey_through_the_job_queue_equals_the_pool_run(gd1_survey, tmp_path):
    """--via queue: each patch is a job message with surveyId, run by a real driver of the
    local mode's queue; the merged result equals the survey run on the pool."""
    import threading

    from ray_app.service import service_from_env
    from ray_app.service.driver import Driver, DriverConfig

    out_pool, _, _ = gd1_survey
    svc = service_from_env()
    assert svc.mode == "local"
    driver = Driver(svc.queue, svc.status, svc.results, InProcessEngine("cpu"),
                    DriverConfig(capacity=2, wait_s=1, visibility_s=30, heartbeat_s=2,
                                 lease_s=30, sweep_s=5))
    t = threading.Thread(target=driver.run)
    t.start()
    try:
        params = SurveyParams(out=str(tmp_path / "q"), region=GD1_AREA, inject=("gd-1",),
                              **FAST)
        state = run_survey(params, None, service=svc, poll_s=0.3)
    finally:
        driver.stop()
        t.join(120)
    assert state["via"]["mode"] == "queue" and state["totals"]["failed"] == 0
    sid = state["via"]["survey_id"]
    for p in params.patches:
        rec = svc.status.get(f"{sid}-{p.id}")
        assert rec["status"] == "COMPLETED" and rec["params"]["surveyId"] == sid
    key = lambda c: (c["match_key"], c["n_members"], round(c["significance"], 6))  # noqa: E731
    assert [key(c) for c in pq.read_table(tmp_path / "q" / "candidates.parquet").to_pylist()] \
        == [key(c) for c in pq.read_table(out_pool / "candidates.parquet").to_pylist()]
    # submitting again (a re-run) finds every patch done: nothing is queued twice
    again = run_survey(SurveyParams(out=str(tmp_path / "q"), region=GD1_AREA,
                                    inject=("gd-1",), **FAST), None, service=svc)
    assert again["totals"]["resumed"] == len(params.patches)
    assert svc.queue.receive(10, wait_s=1) == []


def test_a_survey_can_end_in_s3(aws, capsys):
    """--out s3://bucket/prefix: computed in a staging folder under RAY_APP_HOME (a re-run
    resumes there), then uploaded, patches included, manifest.json last."""
    import boto3

    uri = f"s3://{aws['bucket']}/surveys/tiny"
    rc = main(["survey", "--region", '{"cone": {"center": [150, 35], "radius": 3}}',
               "--inject", "gd-1", "--density-scale", "0.004", "--n-neighbors", "8",
               "--out", uri, "--engine", "in-process"])
    assert rc == 0, capsys.readouterr()
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket=aws["bucket"], Prefix="surveys/tiny/")["Contents"]]
    names = {k.split("/", 2)[2] for k in keys}
    assert {"candidates.parquet", "members.parquet", "map.png", "survey.json",
            "manifest.json"} <= names
    assert any(n.startswith("patches/") and n.endswith("/manifest.json") for n in names)


def test_cuts_apply_to_every_patch_and_are_recorded(tmp_path, capsys):
    out = tmp_path / "cut"
    rc = main(["survey", "--region", '{"cone": {"center": [150, 35], "radius": 3}}',
               "--density-scale", "0.004", "--n-neighbors", "8", "--g-max", "19",
               "--parallax-max", "0.5", "--out", str(out), "--engine", "in-process"])
    assert rc == 0, capsys.readouterr()
    survey = json.loads((out / "survey.json").read_text())
    assert survey["parameters"]["cuts"]["g_max"] == 19
    for pdir in (out / "patches").iterdir():
        stars = pq.read_table(pdir / "stars.parquet",
                              columns=["phot_g_mean_mag", "parallax"]).to_pydict()
        assert max(stars["phot_g_mean_mag"]) < 19 and max(stars["parallax"]) < 0.5
    assert main(["survey", "--region", '{"cone": {"center": [150, 35], "radius": 3}}',
                 "--bp-rp-min", "2", "--bp-rp-max", "1", "--out", str(tmp_path / "x"),
                 "--engine", "in-process"]) == EXIT_BAD_INPUT
    assert "bp_rp_min (2) must be < bp_rp_max (1)" in capsys.readouterr().err


def test_a_patch_with_no_star_is_empty_not_failed(real_data, tmp_path, capsys):
    """A real catalogue covering only part of the area (the GD-1 field is a band): patches
    with no star in it are empty, the others are searched, nothing is reported failed."""
    out = tmp_path / "band"
    rc = main(["survey", "--region", '{"cone": {"center": [146.4, 33.2], "radius": 10}}',
               "--source", str(real_data / "gd1_dr2_widefield.parquet"), "--out", str(out),
               "--engine", "in-process"])
    assert rc == 0, capsys.readouterr()
    survey = json.loads((out / "survey.json").read_text())
    statuses = [r["status"] for r in survey["patches"].values()]
    assert "failed" not in statuses and "empty" in statuses and "done" in statuses
    cands = pq.read_table(out / "candidates.parquet").to_pylist()
    assert [c["match_key"] for c in cands] == ["gd-1"]
