"""Distributed-engine benchmark on this machine: throughput vs actors, and the merge's share.

Two tables:

1. *Throughput*: stars/s of the sharded kNN + density + forests on a local Ray instance with
   1 vs 2 CPU density actors (1 CPU each), 4 shards.
2. *Merge share*: for each N, the time of the final Kruskal merge over the shard forests
   against the whole sharded computation, and the merge's input size (forest edges, O(N))
   against the kNN edges it replaces (N*k).

Usage: python benchmarks/bench_engine.py [--sizes 1e5 1e6] [--merge-sizes 1e5 1e6 1e7]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def features(n: int, seed: int = 3):
    from ray_app.core.features import stream_features
    from ray_app.data.registry import get_stream
    from ray_app.data.synthetic import synthetic_catalogue

    n_stream = max(50, n // 100)
    cols = synthetic_catalogue("gd-1", n_background=n - n_stream, n_stream=n_stream, seed=seed)
    _, X = stream_features(get_stream("gd-1").frame, cols["ra"], cols["dec"], cols["pmra"],
                           cols["pmdec"], cols["parallax"])
    return X, cols["source_id"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e5, 1e6])
    ap.add_argument("--merge-sizes", nargs="+", type=float, default=[1e5, 1e6, 1e7])
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--shards", type=int, default=4)
    args = ap.parse_args()
    import ray

    from ray_app.core.persistence import merge_forests
    from ray_app.engine.engines import RayEngine

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    print(f"{os.cpu_count()} cores; k={args.k}; {args.shards} shards; local Ray, CPU actors")
    print(f"\n{'N':>8} | {'actors':>6} | {'seconds':>8} | {'stars/s':>9}")
    for n in (int(s) for s in args.sizes):
        X, sid = features(n)
        for actors in (1, 2):
            engine = RayEngine(num_gpus_per_actor=0, max_actors=actors, idle_release_s=600)
            engine.density_and_forests(X[:5000], sid[:5000], args.k, shards=actors)  # warm
            t0 = time.perf_counter()
            engine.density_and_forests(X, sid, args.k, shards=args.shards)
            dt = time.perf_counter() - t0
            print(f"{n:>8.0e} | {actors:>6} | {dt:>8.2f} | {n / dt:>9.0f}", flush=True)
            engine.pool.shutdown()

    print(f"\n{'N':>8} | {'shards':>6} | {'sharded s':>9} | {'merge s':>7} | {'merge %':>7} | "
          f"{'forest edges':>12} | {'kNN edges':>11}")
    engine = RayEngine(num_gpus_per_actor=0, max_actors=2, idle_release_s=600)
    for n in (int(s) for s in args.merge_sizes):
        X, sid = features(n)
        t0 = time.perf_counter()
        sharded = engine.density_and_forests(X, sid, args.k, shards=args.shards)
        t1 = time.perf_counter()
        merge_forests(sharded.log_density, sid, sharded.forests)
        t2 = time.perf_counter()
        edges = sum(len(s) for s, _ in sharded.forests)
        print(f"{n:>8.0e} | {sharded.shards:>6} | {t1 - t0:>9.2f} | {t2 - t1:>7.2f} | "
              f"{100 * (t2 - t1) / (t2 - t0):>6.1f}% | {edges:>12} | {n * args.k:>11}",
              flush=True)
        del X, sid, sharded
    engine.close()
    ray.shutdown()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
