"""The README's "Run on a local Ray head" section, run as written (slow: it starts a Ray head
and `ray stop`s every Ray of this machine at the end, so it runs alone: -m slow)."""

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_local_head_demo(tmp_path):
    run = subprocess.run(["bash", str(REPO / "scripts" / "local_head_demo.sh")],
                         capture_output=True, text=True, timeout=900,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                              "RAY_APP_HOME": str(tmp_path / "home")})
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "head-recover: COMPLETED" in out and "head-queued: COMPLETED" in out
    assert "matches GD-1" in out
    assert out.count("succeeded") == 2
