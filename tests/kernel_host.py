"""Run the CUDA source of the grid kernel on the CPU: compiled as C++ with a host shim.

The CUDA kernel cannot run without a GPU, but its source is plain C++ apart from a few CUDA
keywords. Defining those (``__global__``, ``__device__``, the thread indices) and looping over
every (block, thread) of a launch executes *the kernel's own text* with g++, so tests can
compare it with its numba twin and run the whole search on it. What this does not check: the
CuPy launch itself and the GPU's memory model (the ``gpu`` tests do).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ray_app.core.grid_knn import GRID_KERNEL_SOURCE

THREADS_PER_BLOCK = 128  # as in grid_knn.grid_candidates: the last block has idle threads

_SHIM = r"""
#include <cstring>
struct host_dim3 { long long x, y, z; };
static host_dim3 blockDim, blockIdx, threadIdx;
#define __global__
#define __device__
#define __forceinline__ inline
static inline float __int_as_float(int bits) { float f; std::memcpy(&f, &bits, 4); return f; }
"""

_LAUNCHER = r"""
extern "C" void host_launch(long long blocks, long long threads,
        const float* xs, const long long* order, const long long* ukeys,
        const long long* cstart, long long n_cells, const float* q, const int* qcell,
        const float* lo_gap, const float* hi_gap, const int* ncell, const long long* stride,
        long long nq, long long* out_idx, float* out_d2, long long* out_scanned) {
    blockDim.x = threads;
    for (long long b = 0; b < blocks; ++b) {
        blockIdx.x = b;
        for (long long t = 0; t < threads; ++t) {
            threadIdx.x = t;
            grid_candidates(xs, order, ukeys, cstart, n_cells, q, qcell, lo_gap, hi_gap,
                            ncell, stride, nq, out_idx, out_d2, out_scanned);
        }
    }
}
"""


def have_compiler() -> bool:
    return shutil.which("g++") is not None


def build(d: int, m: int, workdir: Path):
    """Compile the kernel for ``d`` features and ``m`` candidates; returns the ctypes entry."""
    src = workdir / f"grid_{d}_{m}.cpp"
    lib = workdir / f"grid_{d}_{m}.so"
    src.write_text(_SHIM + GRID_KERNEL_SOURCE + _LAUNCHER)
    # no FMA contraction: the same float32 roundings as the numba twin
    subprocess.run(["g++", "-O2", "-shared", "-fPIC", "-ffp-contract=off", f"-DGRID_D={d}",
                    f"-DGRID_M={m}", "-o", str(lib), str(src)], check=True,
                   capture_output=True, text=True)
    return ctypes.CDLL(str(lib)).host_launch


class HostKernel:
    """Drop-in for ``grid_knn._grid_candidates_cpu`` that runs the CUDA source instead."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._libs: dict[tuple[int, int], object] = {}
        self.calls = 0

    def __call__(self, xs, order, ukeys, cstart, q, qcell, lo_gap, hi_gap, ncell, stride, m,
                 out_idx, out_d2, out_scanned):
        nq, d = q.shape
        key = (d, int(m))
        if key not in self._libs:
            self._libs[key] = build(d, int(m), self.workdir)
        arrays = [np.ascontiguousarray(a) for a in (xs, order, ukeys, cstart, q, qcell, lo_gap,
                                                     hi_gap, ncell.astype(np.int32), stride)]
        xs, order, ukeys, cstart, q, qcell, lo_gap, hi_gap, ncell, stride = arrays
        assert xs.dtype == np.float32 and qcell.dtype == np.int32 and order.dtype == np.int64
        blocks = (nq + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
        ptr = [a.ctypes.data_as(ctypes.c_void_p) for a in arrays]
        ll = ctypes.c_longlong
        self._libs[key](ll(blocks), ll(THREADS_PER_BLOCK), ptr[0], ptr[1], ptr[2], ptr[3],
                        ll(len(ukeys)), ptr[4], ptr[5], ptr[6], ptr[7], ptr[8], ptr[9], ll(nq),
                        out_idx.ctypes.data_as(ctypes.c_void_p),
                        out_d2.ctypes.data_as(ctypes.c_void_p),
                        out_scanned.ctypes.data_as(ctypes.c_void_p))
        self.calls += 1
