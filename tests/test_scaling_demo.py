"""Slow: Ray's fake autoscaler adds GPU nodes for a shard backlog and removes them after.

Runs benchmarks/scaling_demo.py in a subprocess (it ends with `ray stop`, which stops every
Ray instance on the machine, so it must not share a process with other Ray tests).
"""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_backlog_scales_gpu_nodes_up_and_back_to_zero():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scaling_demo.py")],
                         capture_output=True, text=True, timeout=400)
    print(out.stdout[-3000:])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "gpu.g4dn.xlarge {'CPU': 0, 'GPU': 1}" in out.stdout  # read from cluster.yaml
    assert "on GPU nodes: 0" in out.stdout  # CPU-only work never kept a GPU node
    assert "request_resources demand after the drain: 0 bundles" in out.stdout
    assert "scaled up and back to zero" in out.stdout
