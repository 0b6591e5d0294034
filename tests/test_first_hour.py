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
    # one line (after the "starting a local Ray instance" note, where Ray was started)
    lines = [line for line in err.splitlines() if not line.startswith("starting a local Ray")]
    assert len(lines) == 1 and "Traceback" not in err, err
    err = lines[0]
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


@pytest.mark.parametrize("env,argv,needles", [
    ({"RAY_APP_CPU_KNN": "kdtree"}, [], ["configuration:", "RAY_APP_CPU_KNN", "'kdtree'"]),
    ({"RAY_APP_MEMORY_PER_ACTOR": "lots"}, [], ["configuration:", "RAY_APP_MEMORY_PER_ACTOR",
                                                "'lots'"]),
    ({"RAY_APP_ENGINE": "spark"}, [], ["configuration:", "RAY_APP_ENGINE", "'spark'"]),
    ({"RAY_APP_MEMORY_PER_ACTOR": str(16 * 2**20)}, ["--n-neighbors", "1024"],
     ["nNeighbors=1024 cannot be served here", "RAY_APP_MEMORY_PER_ACTOR"]),
])
def test_bad_settings_are_named_and_record_no_job(tmp_path, capsys, monkeypatch, env, argv,
                                                   needles):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "o"
    _refused(capsys, ["recover", "--out", str(out), "--engine", "in-process", *argv],
             *needles)
    assert not out.exists()
    assert _jobs(tmp_path / "ray-app-home") == []


def test_no_prefix_matching(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["recover", "--sigma", "4"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --sigma" in capsys.readouterr().err


def test_status_store_does_not_depend_on_cwd(tmp_path, monkeypatch):
    from ray_app.io.home import local_home

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


# ------------------------------------- local mode end to end: submit -> consume -> results (8)
def test_local_submit_consume_status_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_APP_WAIT_S", "1")  # the idle poll that ends `consume`
    out = tmp_path / "run"
    assert main(["recover", "--out", str(out), "--job-id", "local-rec", *SMALL]) == 0
    capsys.readouterr()
    assert main(["results", "local-rec", "--out", str(tmp_path / "copy")]) == 0  # recover's own
    assert (tmp_path / "copy" / "candidates.json").exists()
    capsys.readouterr()
    assert main(["submit", "gd-1", "--job-id", "queued-1", "--n-neighbors", "8"]) == 0
    assert capsys.readouterr().out.strip() == "queued-1"
    assert main(["status", "queued-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "PENDING"
    assert main(["consume", "--engine", "in-process", "--exit-after-idle-polls", "1"]) == 0
    assert main(["status", "queued-1"]) == 0
    assert "COMPLETED" in capsys.readouterr().out
    _refused(capsys, ["results", "queued-1", "--out", str(out)], "--overwrite")
    assert main(["results", "queued-1", "--to", str(tmp_path / "dl")]) == 0
    assert (tmp_path / "dl" / "manifest.json").exists()
    # an invalid message reaches the local DLQ with its reason
    from ray_app.service import service_from_env

    svc = service_from_env()
    svc.queue.send('{"jobId": "bad-1", "streamKey": "nowhere"}')
    assert main(["consume", "--engine", "in-process", "--exit-after-idle-polls", "1"]) == 0
    capsys.readouterr()
    assert main(["dlq"]) == 0
    assert "not a known stream" in capsys.readouterr().out


def test_local_submit_refuses_a_missing_path(tmp_path, capsys):
    _refused(capsys, ["submit", "gd-1", "--job-id", "x-1", "--input",
                      str(tmp_path / "none.parquet")], "does not exist")
    assert _jobs(tmp_path / "ray-app-home") == []


def test_local_queue_redrives_after_three_receives(tmp_path):
    from ray_app.io.queue import SqliteQueue

    q = SqliteQueue(tmp_path / "q.db", visibility_s=0)
    q.send({"jobId": "a"})
    for i in range(3):
        (m,) = q.receive(1, wait_s=0)
        assert m.receive_count == i + 1
    assert q.receive(1, wait_s=0) == []  # the 4th receive moves it to the DLQ
    (dead, reason), = q.list_dead()
    assert "maxReceiveCount 3" in reason and json.loads(dead.body) == {"jobId": "a"}
    assert q.redrive() == 1 and q.depth() == {"visible": 1, "in_flight": 0, "dead": 0}
    (m,) = q.receive(1, wait_s=0, visibility_s=60)
    assert q.receive(1, wait_s=0) == []  # hidden while in flight
    q.set_visibility(m.receipt, 0)
    (again,) = q.receive(1, wait_s=0)
    q.delete(again.receipt)
    assert q.depth() == {"visible": 0, "in_flight": 0, "dead": 0}


def test_tests_do_not_write_into_the_checkout():
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    assert not Path(os.environ["RAY_APP_HOME"]).resolve().is_relative_to(repo)


def test_progress_is_one_plain_line_per_stage_off_a_terminal(tmp_path, capsys):
    assert main(["recover", "--out", str(tmp_path / "o"), *SMALL]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    stages = [line.split("] ", 1)[1] for line in err.splitlines() if line.startswith("[")]
    assert stages == ["load", "clean", "features", "density", "merge", "candidates", "write"]


def test_every_subcommand_and_argument_is_described():
    import argparse

    from ray_app.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert parser.description, name
        for action in parser._actions:
            assert action.help, f"ray-app {name} {action.option_strings or action.dest}"
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name


def test_gpu_actors_on_a_local_instance_without_gpus_are_refused(tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.setenv("RAY_APP_GPUS_PER_ACTOR", "1")
    _refused(capsys, ["recover", "--out", str(tmp_path / "o"), "--num-cpus", "1"],
             "RAY_APP_GPUS_PER_ACTOR=1", "0 GPU(s)")
    assert _jobs(tmp_path / "ray-app-home") == []


def test_more_actors_than_local_cpus_is_refused_not_hung(tmp_path, capsys):
    _refused(capsys, ["recover", "--out", str(tmp_path / "o"), "--num-cpus", "1",
                      "--max-actors", "4"], "--max-actors 4 needs 4 CPUs", "has 1")
    assert _jobs(tmp_path / "ray-app-home") == []
