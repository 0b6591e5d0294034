"""Speed of the single-machine core against the bare kNN query it is built on.

Prints a table for synthetic Gaia-like catalogues (d = 5, k = 32):

* ``bare query``: ``cKDTree(X)`` + ``tree.query(X, k=k+1, workers=-1)``, the floor;
* ``knn+density``: our exact kNN (cKDTree candidates + exact float64 re-rank) + log-density;
* ``persistence``: symmetrized kNN graph -> elder-rule H0 diagram + spanning forest;
* ``members``: significance of every pair + death-level cores of the candidates
  (given the null model);
* ``ratio``: (knn+density + persistence + members) / bare query (target <= 1.2 at 1e6);
* ``calibration``: the shuffled-null calibration on its own (bounded subsample, 8 rounds);
* ``end to end``: ``run_recovery`` with the in-process engine, outputs written (no ECSV).

Usage: python benchmarks/bench_core.py [--sizes 1e4 1e5 1e6] [--k 32] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
from scipy.spatial import cKDTree

from ray_app.core.features import stream_features
from ray_app.core.recovery import calibrate_null, candidates, density, diagram
from ray_app.data.registry import get_stream
from ray_app.data.synthetic import synthetic_catalogue
from ray_app.engine.engines import InProcessEngine
from ray_app.pipeline.params import RecoverParams
from ray_app.pipeline.runner import run_recovery


def _features(n: int, seed: int = 1):
    n_stream = max(50, n // 100)
    cols = synthetic_catalogue("gd-1", n_background=n - n_stream, n_stream=n_stream, seed=seed)
    _, X = stream_features(get_stream("gd-1").frame, cols["ra"], cols["dec"], cols["pmra"],
                           cols["pmdec"], cols["parallax"])
    return X, cols["source_id"], n_stream


def _best(fn, repeat):
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e4, 1e5, 1e6])
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-end-to-end", action="store_true")
    args = ap.parse_args()
    k = args.k
    # warm the numba caches so compile time is not measured
    Xw, sw, _ = _features(2000)
    dw = density(Xw, sw, k)
    diagram(dw.log_density, sw, dw.indices)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; d=5, k={k}; best of {args.repeat}")
    head = (f"{'N':>9} | {'bare query':>10} | {'knn+density':>11} | {'persistence':>11} | "
            f"{'members':>8} | {'ratio':>6} | {'calibration':>11} | {'end to end':>10}")
    print(head)
    print("-" * len(head))
    for n in (int(s) for s in args.sizes):
        X, sid, n_stream = _features(n)

        def bare(X=X):
            return cKDTree(X).query(X, k=k + 1, workers=-1)

        t_bare, _ = _best(bare, args.repeat)
        t_knn, d = _best(lambda X=X, sid=sid: density(X, sid, k), args.repeat)
        t_pers, p = _best(lambda d=d, sid=sid: diagram(d.log_density, sid, d.indices),
                          args.repeat)
        t_cal, null = _best(lambda X=X, sid=sid: calibrate_null(X, sid, k), args.repeat)
        t_mem, _ = _best(lambda p=p, d=d, null=null: candidates(p, d.log_density, 5.0, null),
                         args.repeat)
        ratio = (t_knn + t_pers + t_mem) / t_bare
        t_e2e = float("nan")
        if not args.no_end_to_end:
            with tempfile.TemporaryDirectory() as tmp:
                params = RecoverParams(out_dir=f"{tmp}/out", n_background=n - n_stream,
                                       n_stream=n_stream, seed=1, write_ecsv=False)
                t_e2e, _ = _best(lambda params=params: run_recovery(params, InProcessEngine()),
                                 1)
        print(f"{n:>9.0e} | {t_bare:>9.2f}s | {t_knn:>10.2f}s | {t_pers:>10.2f}s | "
              f"{t_mem:>7.2f}s | {ratio:>6.2f} | {t_cal:>10.2f}s | {t_e2e:>9.2f}s", flush=True)


if __name__ == "__main__":
    main()
