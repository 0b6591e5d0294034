"""kNN + density throughput of every kNN path, on the GPU when there is one (d = 5, k = 32).

Rows, for each N (stars per second = N / seconds; best of ``--repeat``; inputs start and
results end in host memory, as in a shard):

* ``grid/cupy``: :func:`ray_app.core.grid_knn.knn_grid` with the CUDA kernel, + log-density
  (the GPU path of the density actors);
* ``brute/cupy``: the exact tiled float32 brute force (:func:`ray_app.core.knn.knn_xp`);
* ``cupyx KDTree``: ``cupyx.scipy.spatial.KDTree(X).query(X, k + 1)``, the bare query only
  (no exact tie order, no density);
* ``grid/numpy``: the kernel's compiled CPU twin (this machine's cores);
* ``cKDTree``: the CPU backend (:func:`ray_app.core.knn.knn_cpu`), + log-density.

``exact`` compares each row's neighbour lists with the first exact row of the same N (``=``:
identical; for cupyx, the k-th distances agree to 1e-6 relative). ``scan/star`` is the number
of float32 distances the grid evaluated per star (the work; a brute force does N).

Usage: python benchmarks/bench_knn.py [--sizes 1e5 1e6 1e7] [--data sky|toy] [--repeat 3]
       [--methods grid/cupy brute/cupy cupyx grid/numpy ckdtree] [--max-brute 2e6]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from ray_app.core.backend import HAS_CUPY, detect_backend
from ray_app.core.grid_knn import GridStats, knn_grid
from ray_app.core.knn import knn_cpu, knn_xp, log_density

ALL_METHODS = ["grid/cupy", "brute/cupy", "cupyx", "grid/numpy", "ckdtree"]


def sky_features(n: int, data: str, seed: int = 3):
    """Scaled GD-1-frame features of ``n`` stars: the Milky-Way model sky (``sky``) or the
    toy Gaussian-field catalogue (``toy``), each with ~1 % stream stars."""
    from ray_app.core.features import stream_features
    from ray_app.data.registry import get_stream
    from ray_app.data.synthetic import Injection, synthetic_catalogue, synthetic_sky

    info = get_stream("gd-1")
    n_stream = max(50, n // 100)
    if data == "sky":
        cols = synthetic_sky(info.footprint, n - n_stream, [Injection(info, n_stream)],
                             seed=seed, photometry=False)
    else:
        cols = synthetic_catalogue("gd-1", n_background=n - n_stream, n_stream=n_stream,
                                   seed=seed)
    _, X = stream_features(info.frame, cols["ra"], cols["dec"], cols["pmra"], cols["pmdec"],
                           cols["parallax"])
    return X, np.asarray(cols["source_id"], dtype=np.int64)


def _sync(xp):
    if xp is not np:
        xp.cuda.Device().synchronize()


def run_method(method: str, X, sid, k: int, cp):
    """One timed call; returns (indices or None, kth distances, grid stats or None)."""
    if method == "ckdtree":
        res = knn_cpu(X, sid, k)
        log_density(res.kth_distance, k, len(X), X.shape[1])
        return res.indices, res.kth_distance, None
    if method in ("grid/cupy", "grid/numpy"):
        xp = cp if method == "grid/cupy" else np
        stats = GridStats()
        res = knn_grid(X, sid, k, xp=xp, stats=stats)
        log_density(res.kth_distance, k, len(X), X.shape[1])
        _sync(xp)
        return res.indices, res.kth_distance, stats
    if method == "brute/cupy":
        res = knn_xp(X, sid, k, xp=cp)
        log_density(res.kth_distance, k, len(X), X.shape[1])
        _sync(cp)
        return res.indices, res.kth_distance, None
    if method == "cupyx":
        from cupyx.scipy.spatial import KDTree

        Xd = cp.asarray(X)
        dist, _ = KDTree(Xd).query(Xd, k=k + 1)
        kth = cp.asnumpy(dist[:, -1])
        return None, kth, None
    raise ValueError(f"unknown method {method!r}; choose from {ALL_METHODS}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e5, 1e6, 1e7])
    ap.add_argument("--data", choices=["sky", "toy"], default="sky")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=ALL_METHODS)
    ap.add_argument("--max-brute", type=float, default=2e6,
                    help="largest N for the O(N^2) brute force")
    ap.add_argument("--max-cpu", type=float, default=2e6,
                    help="largest N for the CPU rows (grid/numpy, ckdtree)")
    args = ap.parse_args()
    k = args.k
    cp = None
    gpu = "none"
    if any(m in ("grid/cupy", "brute/cupy", "cupyx") for m in args.methods):
        if HAS_CUPY and detect_backend("auto").name == "cupy":
            import cupy as cp

            props = cp.cuda.runtime.getDeviceProperties(0)
            gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        else:
            print("no usable GPU/CuPy here: GPU rows skipped")
    methods = [m for m in args.methods if cp is not None or m not in
               ("grid/cupy", "brute/cupy", "cupyx")]
    # warm-up: compile the numba twin, the CUDA kernel and CuPy's own kernels
    Xw, sw = sky_features(5000, "toy")
    for m in methods:
        run_method(m, Xw, sw, k, cp)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"GPU: {gpu}; python {platform.python_version()}; data={args.data}, d=5, k={k}; "
          f"best of {args.repeat}")
    head = (f"{'N':>9} | {'method':>12} | {'seconds':>8} | {'stars/s':>12} | {'exact':>5} | "
            f"{'scan/star':>9}")
    print(head)
    print("-" * len(head))
    for n in (int(s) for s in args.sizes):
        X, sid = sky_features(n, args.data)
        ref = None
        for m in methods:
            if m == "brute/cupy" and n > args.max_brute:
                continue
            if m in ("grid/numpy", "ckdtree") and n > args.max_cpu:
                continue
            best, out = np.inf, None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                out = run_method(m, X, sid, k, cp)
                best = min(best, time.perf_counter() - t0)
            idx, kth, stats = out
            if idx is not None and ref is None:
                ref = (idx, kth)
                exact = "ref"
            elif ref is None:
                exact = "-"
            elif idx is None:
                exact = "~" if np.allclose(kth, ref[1], rtol=1e-6, atol=0) else "DIFF"
            else:
                exact = "=" if np.array_equal(idx, ref[0]) else "DIFF"
            scan = f"{stats.scanned / n:9.0f}" if stats is not None else f"{'-':>9}"
            print(f"{n:>9.0e} | {m:>12} | {best:>8.3f} | {n / best:>12,.0f} | {exact:>5} | "
                  f"{scan}", flush=True)


if __name__ == "__main__":
    main()
