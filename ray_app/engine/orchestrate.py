"""Sharded kNN/density/forest for one job, independent of where shards run.

Phases (DESIGN section 4):

a. plan slabs with halos; each shard computes kNN + log-density of its owned stars; stars
   whose k-th neighbour may lie beyond the halo are detected and recomputed in one *fix-up
   shard* whose reference is the whole catalogue (exact by construction); their own shards
   leave them out of their forests;
b. the owned densities are gathered into one global array (the "halo exchange": every shard
   reads its halo stars' densities from it);
c. each shard reduces its owned kNN edges to a spanning forest;
d. (the caller) merges the forests with Kruskal over their union.

Executors run the per-shard work: :class:`InProcessExecutor` here, the Ray pool executor in
``engines.py``. A forest call may find its shard's state gone (an actor restarted between the
phases); the shard's density is then recomputed (it is deterministic) and the forest retried.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from ..core.backend import detect_backend
from ..core.shard import shard_density, shard_forest
from ..core.sharding import Shard, estimate_halo, halo_failures, plan_shards


class MissingShardState(RuntimeError):
    """The density state of a shard is not held by the worker asked for its forest."""


@dataclass
class DensityTask:
    key: str
    ref: np.ndarray
    owned_local: np.ndarray
    k: int
    n_total: int


@dataclass
class ShardedDensity:
    """Global kNN/density results gathered from the shards, plus their forests."""

    log_density: np.ndarray
    kth_distance: np.ndarray
    forests: list[tuple[np.ndarray, np.ndarray]]
    backend: dict
    shard_seconds: list[float] = field(default_factory=list)
    requeried: int = 0
    shards: int = 1
    halo: float = float("inf")
    halo_fixups: int = 0
    forest_retries: int = 0
    axis: int = 0
    placement: list[str] = field(default_factory=list)
    actors: list[str] = field(default_factory=list)
    memory_plan: dict = field(default_factory=dict)


def worker_backend(prefer: str = "auto"):
    """The backend of a process that computes shards: ``prefer`` (auto/cpu/cupy), with the CPU
    kNN from ``RAY_APP_CPU_KNN`` (``cpu`` = cKDTree, default, or ``grid``)."""
    return detect_backend(prefer, os.environ.get("RAY_APP_CPU_KNN", "cpu"))


class ShardWorker:
    """What a worker (an actor, or this process) holds and does for shards.

    ``density`` keeps each shard's neighbour lists until its ``forest`` call, so they never
    cross the network.
    """

    def __init__(self, backend):
        self.backend = backend
        # Ray sets OMP_NUM_THREADS to an actor's CPU count: use that many kNN threads
        self.threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or -1
        self._pending: dict[str, tuple] = {}

    def density(self, X, sid, task: DensityTask) -> dict:
        t0 = time.perf_counter()
        X_ref = np.asarray(X)[task.ref]
        sid_ref = np.asarray(sid)[task.ref]
        d = shard_density(X_ref, sid_ref, task.owned_local, task.k, task.n_total,
                          backend=self.backend.knn, xp=self.backend.xp, workers=self.threads)
        self._pending[task.key] = (task.ref, sid_ref, task.owned_local, d.indices)
        return {"log_density": d.log_density, "kth_distance": d.kth_distance,
                "requeried": d.requeried, "seconds": time.perf_counter() - t0,
                "backend": self.backend.to_dict(), "node_id": "local",
                "device_memory": self.backend.device_memory()}

    def forest(self, key: str, log_density, exclude=None) -> tuple[np.ndarray, np.ndarray,
                                                                    float]:
        """Spanning forest (global rows) of the shard's owned edges, minus ``exclude``d rows
        (positions in the owned list, recomputed elsewhere)."""
        t0 = time.perf_counter()
        try:
            ref, sid_ref, owned_local, indices = self._pending.pop(key)
        except KeyError:
            raise MissingShardState(f"no density state for shard {key}") from None
        if exclude is not None and len(exclude):
            owned_local = np.delete(owned_local, exclude)
            indices = np.delete(indices, exclude, axis=0)
        src, dst = shard_forest(np.asarray(log_density)[ref], sid_ref, owned_local, indices)
        return ref[src], ref[dst], time.perf_counter() - t0

    def drop(self, key: str) -> None:
        self._pending.pop(key, None)


class InProcessExecutor:
    """Runs every shard in this process, one after the other."""

    def __init__(self, backend):
        self.worker = ShardWorker(backend)

    def prepare(self, X, sid):
        return (X, sid)

    def density(self, ctx, tasks: list[DensityTask]) -> list[dict]:
        X, sid = ctx
        return [self.worker.density(X, sid, t) for t in tasks]

    def forest(self, ctx, log_density, calls: list[tuple]) -> list:
        out = []
        for key, exclude in calls:
            try:
                out.append(self.worker.forest(key, log_density, exclude))
            except MissingShardState as exc:
                out.append(exc)
        return out


def sharded_density_and_forests(X, sid, k: int, executor, n_shards: int = 1, seed: int = 0,
                                progress=None, axis: int | None = None,
                                halo: float | None = None) -> ShardedDensity:
    """Run phases a-c of a job on ``executor``; returns global densities and shard forests.

    Parameters
    ----------
    n_shards : int
        Number of slabs (empty slabs are dropped).
    progress : callable(done, total), optional
        Called as shards finish their density phase.
    axis : int, optional
        Feature column to cut slabs along (default: the widest, see ``choose_axis``).
    halo : float, optional
        Halo width in scaled units (default: estimated; too narrow only costs a fix-up).
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    sid = np.ascontiguousarray(sid, dtype=np.int64)
    n = len(X)
    job = uuid.uuid4().hex[:12]
    if halo is None:
        halo = estimate_halo(X, k, np.random.default_rng(seed)) if n_shards > 1 else np.inf
    shards = plan_shards(X, n_shards, halo, min_reference=k + 1, axis=axis)
    ctx = executor.prepare(X, sid)
    f = np.empty(n)
    kth = np.empty(n)
    seconds: dict[int, float] = {}
    placement: dict[int, str] = {}
    actors: dict[int, str] = {}
    backend: dict = {}
    excluded: dict[int, np.ndarray] = {}
    counters = {"requeried": 0, "done": 0}

    def key(s: Shard) -> str:
        return f"{job}-{s.index}"

    def run_density(batch: list[Shard]) -> list[np.ndarray]:
        results = executor.density(ctx, [DensityTask(key(s), s.ref, s.owned_local, k, n)
                                         for s in batch])
        failures = []
        for s, r in zip(batch, results, strict=True):
            seconds[s.index] = seconds.get(s.index, 0.0) + r["seconds"]
            counters["requeried"] += r["requeried"]
            placement[s.index] = r.get("node_id", "local")
            actors[s.index] = r.get("actor", "in-process")
            backend.update(r.get("backend", {}))
            fails = halo_failures(s, X, r["kth_distance"])
            keep = np.ones(len(s.owned), dtype=bool)
            keep[fails] = False
            f[s.owned[keep]] = r["log_density"][keep]
            kth[s.owned[keep]] = r["kth_distance"][keep]
            excluded[s.index] = fails
            failures.append(s.owned[fails])
            counters["done"] += 1
            if progress is not None:
                progress(min(counters["done"], len(shards)), len(shards))
        return failures

    failing = np.concatenate(run_density(shards) + [np.empty(0, np.int64)])
    if len(failing):
        # one more shard: the stars whose halo was too narrow, against every star
        fix = Shard(len(shards), shards[0].axis, -np.inf, np.inf, -np.inf, np.inf,
                    np.sort(failing), np.arange(n))
        shards.append(fix)
        run_density([fix])
    forests: dict[int, tuple] = {}
    forest_retries = 0
    todo = list(shards)
    while todo:
        results = executor.forest(ctx, f, [(key(s), excluded.get(s.index)) for s in todo])
        lost = []
        for s, r in zip(todo, results, strict=True):
            if isinstance(r, MissingShardState):
                lost.append(s)
            else:
                forests[s.index] = (r[0], r[1])
                seconds[s.index] += r[2]
        if lost:
            forest_retries += len(lost)
            run_density(lost)  # deterministic: recomputes exactly the same densities
        todo = lost
    return ShardedDensity(
        log_density=f, kth_distance=kth, forests=[forests[s.index] for s in shards],
        backend=backend, shard_seconds=[seconds[s.index] for s in shards],
        requeried=counters["requeried"], shards=len(shards), halo=float(halo),
        halo_fixups=len(failing), forest_retries=forest_retries,
        placement=[placement[s.index] for s in shards],
        actors=[actors[s.index] for s in shards], axis=shards[0].axis)
