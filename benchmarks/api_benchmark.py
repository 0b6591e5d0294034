"""HTTP API benchmark: latency and throughput of the job routes, on Ray Serve (what
``ray-app serve --no-driver`` and the cluster run) and on a bare uvicorn (the same FastAPI app, for
Serve's own cost), local mode (SQLite stores).

Prints one table: per server and route, requests, clients, requests/s, p50 and p95 ms.

Usage: python benchmarks/api_benchmark.py [--requests 300] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ["RAY_APP_HOME"] = tempfile.mkdtemp(prefix="ray-app-api-bench-")
os.environ["RAY_APP_API_RATE"] = "0"          # measure the server, not the limiter
os.environ["RAY_APP_MAX_QUEUED_PER_USER"] = "0"

from api_server import ray_app_serve, serving  # noqa: E402

TINY = {"streamKey": "gd-1", "nNeighbors": 8, "nBackground": 300, "nStream": 60}


def measure(url: str, key: str, name: str, n: int, clients: int, route: str) -> dict:
    auth = {"Authorization": f"Bearer {key}"}
    session = requests.Session()

    def one(i: int) -> float:
        t0 = time.perf_counter()
        if route == "POST /jobs":
            r = session.post(f"{url}/jobs", json={"jobId": f"{name}-{i}", **TINY},
                             headers=auth)
            assert r.status_code == 202, r.text
        elif route == "GET /jobs/{id}":
            r = session.get(f"{url}/jobs/{name}-{i % 50}", headers=auth)
            assert r.status_code == 200, r.text
        else:
            r = session.get(f"{url}/jobs?limit=50", headers=auth)
            assert r.status_code == 200, r.text
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        lat = sorted(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    return {"rps": n / wall, "p50": 1000 * statistics.median(lat),
            "p95": 1000 * lat[int(0.95 * (len(lat) - 1))]}


def run(server: str, url: str, key: str, args) -> None:
    for route, clients in (("POST /jobs", 1), ("GET /jobs/{id}", args.clients),
                           ("GET /jobs?limit=50", args.clients)):
        m = measure(url, key, server.split()[0], args.requests, clients, route)
        print(f"| {server} | {route} | {args.requests} | {clients} | {m['rps']:.0f} | "
              f"{m['p50']:.1f} | {m['p95']:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    print("| server | route | requests | clients | requests/s | p50 ms | p95 ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    from ray_app.api.app import create_app
    from ray_app.api.keys import ApiKeys

    home = Path(os.environ["RAY_APP_HOME"])
    key = ApiKeys(str(home / "apikeys.json")).create("bench", admin=True)
    with serving(create_app()) as url:
        run("uvicorn (bare app)", url, key, args)
    with ray_app_serve(home / "serve" / "home", extra_args=("--no-driver",)) as (
            url, serve_key, _proc):
        run("ray serve (ray-app serve)", url, serve_key, args)


if __name__ == "__main__":
    main()
