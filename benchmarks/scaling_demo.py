"""Autoscaling demo: a backlog of shards brings up GPU nodes, which go away when work drains.

Runs Ray's fake multi-node autoscaler on this machine with the GPU worker type read from
``cluster.yaml`` (so the demo and the deployment cannot drift apart), starts a
:class:`~ray_app.engine.pool.DensityPool` with one GPU per actor, queues shard work, and prints
a timeline: pending backlog, actors, GPU nodes alive and the standing ``request_resources``
demand. It also runs CPU-only tasks while the GPU nodes are up and reports where they ran:
GPU nodes advertise no CPU, so none may land there (Ray issue 47866), and the pool's demand
must drop to zero bundles once the work drains (Ray issue 19785) or the nodes never leave.

    python benchmarks/scaling_demo.py [--cluster-yaml cluster.yaml] [--shards 6]

Exits 0 when the cluster scaled up to at least one GPU node and back to zero.

Warning: it ends with ``ray stop``, which stops every Ray instance on this machine (the fake
provider gives no narrower way to stop its nodes). Run it on its own.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
# the `ray` command of this interpreter's environment (a venv need not be activated)
RAY_CLI = str(Path(sys.executable).with_name("ray"))


def gpu_worker_type(cluster_yaml: Path) -> tuple[str, dict]:
    """Name and resources of the default GPU worker type of the deployment config."""
    cfg = yaml.safe_load(cluster_yaml.read_text())
    for name, spec in cfg["available_node_types"].items():
        res = spec.get("resources", {})
        if res.get("GPU", 0) >= 1 and spec.get("max_workers", 0) > 0:
            return name, dict(res)
    raise ValueError(f"{cluster_yaml}: no GPU worker type with max_workers > 0")


def fake_config(port: int, node_type: str, resources: dict, max_gpu_nodes: int) -> dict:
    return {
        "cluster_name": "ray-app-scaling-demo",
        "max_workers": max_gpu_nodes,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.2,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": f"127.0.0.1:{port}"},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            node_type: {"resources": resources, "node_config": {}, "min_workers": 0,
                        "max_workers": max_gpu_nodes},
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_nodes(ray) -> int:
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) >= 1)


def requested_bundles() -> int:
    """Bundles of the standing request_resources demand (v1 autoscaler's channel)."""
    import json

    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return 0 if raw is None else len(json.loads(raw))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster-yaml", default=str(REPO / "cluster.yaml"))
    ap.add_argument("--shards", type=int, default=6)
    ap.add_argument("--max-gpu-nodes", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=180.0)
    args = ap.parse_args()

    node_type, resources = gpu_worker_type(Path(args.cluster_yaml))
    port = free_port()
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_AUTH_MODE": "disabled"}
    tmp = Path(tempfile.mkdtemp(prefix="ray-app-scaling-"))
    cfg_path = tmp / "fake.yaml"
    cfg_path.write_text(yaml.safe_dump(fake_config(port, node_type, resources,
                                                   args.max_gpu_nodes)))
    print(f"GPU worker type from {args.cluster_yaml}: {node_type} {resources}; "
          f"at most {args.max_gpu_nodes} nodes; idle timeout 0.2 min")
    subprocess.run([RAY_CLI, "start", "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
                    f"--autoscaling-config={cfg_path}", "--include-dashboard=false"],
                   env=env, check=True, capture_output=True)
    os.environ.update({"RAY_AUTH_MODE": "disabled"})
    import ray

    from ray_app.engine.orchestrate import DensityTask
    from ray_app.engine.pool import DensityPool

    ok_up = ok_down = False
    t0 = time.monotonic()
    try:
        ray.init(address=f"127.0.0.1:{port}", logging_level="ERROR")
        rng = np.random.default_rng(0)
        X = rng.normal(size=(20000, 5))
        sid = np.arange(len(X), dtype=np.int64)
        X_ref, sid_ref = ray.put(X), ray.put(sid)
        rows = np.arange(len(X))
        pool = DensityPool(max_actors=args.max_gpu_nodes, num_gpus=resources["GPU"],
                           idle_release_s=2.0, name_prefix="demo-density-actor")
        futures = [pool.submit("demo", "density",
                               (X_ref, sid_ref, DensityTask(f"s{i}", rows, rows, 16, len(X))),
                               f"s{i}") for i in range(args.shards)]
        @ray.remote(num_cpus=1)
        def cpu_only():
            time.sleep(0.2)
            return ray.get_runtime_context().get_node_id()

        print(f"{'t [s]':>6} | {'backlog':>7} | {'actors':>6} | {'GPU nodes':>9} | "
              f"{'requested':>9} | event")
        last = None
        dropped = False
        cpu_tasks, on_gpu = None, None
        while time.monotonic() - t0 < args.timeout:
            done = sum(f.done() for f in futures)
            if gpu_nodes(ray) and cpu_tasks is None:  # CPU-only work while GPU nodes are up
                gpu_ids = {n["NodeID"] for n in ray.nodes()
                           if n["Alive"] and n["Resources"].get("GPU", 0) >= 1}
                cpu_tasks = [cpu_only.remote() for _ in range(8)]
            if done == len(futures) and not dropped:
                for i in range(args.shards):
                    pool.submit("demo", "drop", (f"s{i}",), f"s{i}")
                dropped = True
            state = (pool.backlog(), pool.size(), gpu_nodes(ray), requested_bundles(), done)
            if state != last:
                event = f"{done}/{len(futures)} shards done"
                print(f"{time.monotonic() - t0:>6.1f} | {state[0]:>7} | {state[1]:>6} | "
                      f"{state[2]:>9} | {state[3]:>9} | {event}", flush=True)
                last = state
            ok_up = ok_up or state[2] >= 1
            if dropped and ok_up and state[2] == 0 and state[1] == 0 and state[3] == 0:
                ok_down = True
                break
            time.sleep(0.5)
        if cpu_tasks is not None:
            on_gpu = sum(node in gpu_ids for node in ray.get(cpu_tasks, timeout=60))
            print(f"CPU-only tasks run while GPU nodes were up: {len(cpu_tasks)}, "
                  f"on GPU nodes: {on_gpu}")
        print(f"request_resources demand after the drain: {requested_bundles()} bundles")
        pool.shutdown()
    finally:
        ray.shutdown()
        subprocess.run([RAY_CLI, "stop"], env=env, capture_output=True)
    ok = ok_up and ok_down and on_gpu == 0
    verdict = "scaled up and back to zero" if ok else "DID NOT scale as expected"
    print(f"{verdict} in {time.monotonic() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
