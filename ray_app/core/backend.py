"""Choose the array backend: CuPy when a GPU really works, NumPy/SciPy otherwise.

CuPy imports on machines without a usable GPU (and Ray may grant a GPU where CUDA cannot run),
so the only reliable test is a tiny allocation and kernel launch (DESIGN section 7).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigurationError

try:  # optional dependency: the `gpu` extra
    import cupy as _cupy

    HAS_CUPY = True
except Exception:  # ImportError, or a broken CUDA install raising at import
    _cupy = None
    HAS_CUPY = False


@dataclass(frozen=True)
class Backend:
    """The backend a process computes with.

    Attributes
    ----------
    name : {"cpu", "cupy"}
    knn : {"cpu", "grid", "xp"}
        Which kNN implementation to call (:func:`ray_app.core.recovery.density`): the GPU
        uses the cell grid (``grid``), the CPU scipy's cKDTree.
    reason : str
        Why it was chosen (logged and written to metadata.json).
    """

    name: str
    knn: str
    reason: str

    @property
    def xp(self):
        return _cupy if self.name == "cupy" else __import__("numpy")

    def to_dict(self) -> dict:
        return {"name": self.name, "knn": self.knn, "reason": self.reason}

    def device_memory(self) -> tuple[int, int] | None:
        """(free, total) bytes of this process's GPU, or ``None`` on the CPU.

        *Free* counts the blocks CuPy's memory pool holds for reuse: an idle actor's pool is
        free for its next shard, though ``cudaMemGetInfo`` reports it as used.
        """
        if self.name != "cupy":
            return None
        free, total = _cupy.cuda.runtime.memGetInfo()
        pool = _cupy.get_default_memory_pool()
        return int(free + pool.free_bytes()), int(total)


def detect_backend(prefer: str = "auto", cpu_knn: str = "cpu") -> Backend:
    """Return the backend to use.

    Parameters
    ----------
    prefer : {"auto", "cpu", "cupy"}
        ``auto`` tries CuPy and falls back to the CPU; ``cupy`` raises if CuPy cannot run.
    cpu_knn : {"cpu", "grid"}
        kNN of the CPU backend: scipy's cKDTree (``cpu``), or the cell grid's compiled twin
        (``grid``: faster from ~1e5 stars per shard, see benchmarks/RESULTS.md).
    """
    if prefer not in ("auto", "cpu", "cupy"):
        raise ConfigurationError(f"backend must be 'auto', 'cpu' or 'cupy', got {prefer!r}")
    if cpu_knn not in ("cpu", "grid"):
        raise ConfigurationError(f"RAY_APP_CPU_KNN must be 'cpu' or 'grid', got {cpu_knn!r}")
    if prefer == "cpu":
        return Backend("cpu", cpu_knn, "requested")
    if not HAS_CUPY:
        if prefer == "cupy":
            raise ConfigurationError("backend 'cupy' requested but CuPy is not installed "
                                     "(pip install 'ray-app[gpu]')")
        return Backend("cpu", cpu_knn, "cupy not installed")
    try:
        probe = _cupy.arange(4, dtype=_cupy.float32)
        float((probe * probe).sum())
    except Exception as exc:  # cudaErrorInsufficientDriver, no device, ...
        if prefer == "cupy":
            raise ConfigurationError(f"backend 'cupy' requested but CUDA is unusable: {exc}"
                                     ) from exc
        return Backend("cpu", cpu_knn, f"cupy present but unusable: {type(exc).__name__}")
    return Backend("cupy", "grid", "cupy allocation succeeded")
