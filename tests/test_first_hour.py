"""A newcomer's first hour: nothing of theirs is lost, bad options are refused before any work
and before a job is recorded, and each refusal is one line with exit 2."""

import json
import sqlite3

import pytest

from ray_app.cli import EXIT_BAD_INPUT, main
from ray_app.io.outputs import check_out_dir

SMALL = ["--n-background", "3000", "--n-stream", "200", "--engine", "in-process",
         "--no-ecsv"]


def _refused(capsys, argv, *needles):
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    assert err.startswith("ray-app: error:"), err
    for needle in needles:
        assert needle in err, err
    return err


def _jobs(home):
    db = home / "status.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        return con.execute("select * from jobs").fetchall()


# ------------------------------------------------------------------ data loss (defect 1)
def test_out_dir_with_user_files_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    (out / "figs").mkdir()
    _refused(capsys, ["recover", "--out", str(out), *SMALL], "--out", str(out))
    assert (out / "chapter1.tex").read_text() == "precious" and (out / "figs").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no partial dirs left


def test_out_file_is_refused_and_not_moved(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    _refused(capsys, ["recover", "--out", str(target), *SMALL], "--out", "existing file")
    assert target.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_out_dot_refused_before_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text("1,2,3")
    _refused(capsys, ["recover", "--out", ".", *SMALL], "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]


def test_previous_output_needs_overwrite_and_only_it_is_replaced(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["recover", "--out", str(out), *SMALL]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["producer"] == "ray-app"
    capsys.readouterr()
    _refused(capsys, ["recover", "--out", str(out), *SMALL], "--overwrite")
    assert main(["recover", "--out", str(out), "--overwrite", *SMALL]) == 0
    assert (out / "manifest.json").exists()
    # a user file dropped into a previous output makes it theirs: --overwrite is refused
    (out / "my_notes.md").write_text("mine")
    capsys.readouterr()
    _refused(capsys, ["recover", "--out", str(out), "--overwrite", *SMALL], "not an output")
    assert (out / "my_notes.md").read_text() == "mine"


def test_empty_out_dir_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["recover", "--out", str(out), *SMALL]) == 0
    assert (out / "manifest.json").exists()


def test_out_under_a_file_refused(tmp_path):
    blocker = tmp_path / "plain"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not a writable directory"):
        check_out_dir(blocker / "sub" / "out")
    assert blocker.read_text() == "x"


def test_files_appearing_during_the_run_are_not_lost(tmp_path):
    from ray_app.io.outputs import atomic_output_dir

    out = tmp_path / "o"
    with pytest.raises(ValueError, match="not an output"):
        with atomic_output_dir(out) as tmp:
            (tmp / "a.txt").write_text("ours")
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")
    assert (out / "theirs.txt").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


# ------------------------------------------------- options refused before any job (2, 3, 5)
@pytest.mark.parametrize("argv,needles", [
    (["--num-cpus", "0"], ["--num-cpus", "0", ">= 1"]),
    (["--max-actors", "0"], ["--max-actors", "0", ">= 1"]),
    (["--job-id", ""], ["jobId", "''"]),
    (["--job-id", "../x"], ["jobId"]),
])
def test_bad_options_record_no_job(tmp_path, capsys, argv, needles):
    out = tmp_path / "o"
    engine = [] if "--num-cpus" in argv or "--max-actors" in argv else ["--engine",
                                                                        "in-process"]
    _refused(capsys, ["recover", "--out", str(out), *argv, *engine], *needles)
    assert not out.exists()
    assert _jobs(tmp_path / "ray-app-home") == []


def test_no_prefix_matching(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["recover", "--sigma", "4"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --sigma" in capsys.readouterr().err


def test_status_store_does_not_depend_on_cwd(tmp_path, monkeypatch):
    from ray_app.service import local_home

    monkeypatch.delenv("RAY_APP_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert local_home() == tmp_path / "xdg" / "ray-app"
    monkeypatch.setenv("RAY_APP_HOME", "rel")
    assert local_home().is_absolute()


# ------------------------------------------------------ wrongly accepted input (defect 5)
@pytest.mark.parametrize("case,needles", [
    ("radians", ["'ra' and 'dec' look like radians", "degrees"]),
    ("string_parallax", ["'parallax' must be numeric", "string"]),
    ("elsewhere", ["none of its", "footprint of GD-1"]),
])
def test_wrong_input_refused(real_data, tmp_path, capsys, case, needles):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(real_data / "gd1_dr2_widefield.parquet",
                      columns=["source_id", "ra", "dec", "pmra", "pmdec", "parallax"])
    if case == "radians":
        t = t.set_column(1, "ra", pa.array(np.radians(t["ra"].to_numpy())))
        t = t.set_column(2, "dec", pa.array(np.radians(t["dec"].to_numpy())))
    elif case == "string_parallax":
        t = t.set_column(5, "parallax", pc.cast(t["parallax"], pa.string()))
    else:
        t = t.set_column(2, "dec", pc.negate(t["dec"]))
    src = tmp_path / "in.parquet"
    pq.write_table(t, src)
    out = tmp_path / "o"
    _refused(capsys, ["recover", "gd-1", "--input", str(src), "--out", str(out), "--engine",
                      "in-process"], *needles)
    assert not out.exists()
