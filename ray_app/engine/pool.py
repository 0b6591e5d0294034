"""One pool of density actors shared by every job of a driver.

* **Fair interleaving**: each job has its own queue; a free actor takes the next shard from the
  jobs in round-robin order, so a large job does not starve a small one.
* **Pinned forest calls**: a shard's forest must run where its neighbour lists are; when that
  actor is gone the call resolves to :class:`MissingShardState` and the job recomputes it.
* **Capacity follows the backlog**: when shards wait and the pool is below ``max_actors``, new
  actors are created (a GPU actor that cannot be placed is a pending demand the autoscaler
  answers by adding a node) and ``request_resources`` asks for the bundles up front; actors
  idle for ``idle_release_s`` are killed so nodes can scale back to zero.
* Results are collected with ``ray.wait`` by one dispatcher thread, never ``ray.get`` in a loop.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import ray

from .actors import density_actor
from .metrics import pool_metrics
from .orchestrate import MissingShardState

log = logging.getLogger(__name__)


@dataclass
class _Task:
    job: str
    method: str
    args: tuple
    key: str
    future: Future = field(default_factory=Future)


@dataclass
class _Slot:
    slot: int
    handle: object
    keys: set = field(default_factory=set)  # shard states it holds
    busy: _Task | None = None
    idle_since: float = field(default_factory=time.monotonic)
    device_memory: tuple[int, int] | None = None  # (free, total) GPU bytes, last reported


class DensityPool:
    """A growing/shrinking pool of :class:`DensityActor` s.

    Parameters
    ----------
    max_actors : int
        Upper bound on actors (GPU count of the cluster's max size, typically).
    num_gpus, num_cpus : float
        Resources per actor (``num_gpus=1`` on the GPU cluster, fractional allowed). CPUs
        default to 0 for GPU actors (GPU nodes advertise no CPU, so that nothing else lands
        on them: cluster.yaml) and 1 otherwise.
    idle_release_s : float
        Actors idle this long (holding no shard state) are released.
    min_actors : int
        Actors kept even when idle (0 lets GPU nodes scale to zero).
    """

    def __init__(self, max_actors: int = 1, num_gpus: float = 0.0,
                 num_cpus: float | None = None,
                 prefer_backend: str = "auto", idle_release_s: float = 300.0,
                 min_actors: int = 0, name_prefix: str = "density-actor"):
        if max_actors < 1:
            raise ValueError(f"max_actors must be >= 1, got {max_actors}")
        self.max_actors = max_actors
        self.num_gpus = num_gpus
        self.num_cpus = (0.0 if num_gpus > 0 else 1.0) if num_cpus is None else num_cpus
        self.prefer_backend = prefer_backend
        self.idle_release_s = idle_release_s
        self.min_actors = min_actors
        self.name_prefix = name_prefix
        self._lock = threading.Lock()
        self._queues: dict[str, deque[_Task]] = {}
        self._rr: deque[str] = deque()
        self._pinned: dict[int, deque[_Task]] = {}
        self._slots: dict[int, _Slot] = {}
        self._inflight: dict[ray.ObjectRef, _Slot] = {}
        self._key_slot: dict[str, int] = {}
        self._slot_ids = itertools.count()
        self._requested = 0
        self._metrics = pool_metrics()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="density-pool", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- public
    def submit(self, job: str, method: str, args: tuple, key: str) -> Future:
        """Queue ``actor.<method>(*args)``; ``forest``/``drop`` calls are pinned to ``key``'s
        actor."""
        task = _Task(job, method, args, key)
        with self._lock:
            if method in ("forest", "drop"):
                slot = self._key_slot.get(key)
                if slot is None or slot not in self._slots:
                    task.future.set_result(MissingShardState(f"shard {key} has no actor"))
                else:
                    self._pinned.setdefault(slot, deque()).append(task)
            else:
                if job not in self._queues:
                    self._queues[job] = deque()
                    self._rr.append(job)
                self._queues[job].append(task)
        return task.future

    def size(self) -> int:
        with self._lock:
            return len(self._slots)

    def device_memory(self) -> int | None:
        """GPU bytes one actor may plan a shard with: the smallest free memory its live actors
        reported after their last shard (capped by their share of a fractional GPU); ``None``
        until a GPU actor has reported."""
        with self._lock:
            seen = [s.device_memory for s in self._slots.values() if s.device_memory]
        if not seen:
            return None
        share = min(1.0, self.num_gpus) if self.num_gpus > 0 else 1.0
        return int(min(min(free, share * total) for free, total in seen))

    def backlog(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            for s in self._slots.values():
                ray.kill(s.handle, no_restart=True)
            self._slots.clear()
        self._request(0)

    # ---------------------------------------------------------------- dispatcher
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # keep dispatching; the failing task got its exception
                log.exception("density pool step failed")
                time.sleep(0.1)

    def _next_unpinned(self) -> _Task | None:
        for _ in range(len(self._rr)):
            job = self._rr[0]
            self._rr.rotate(-1)
            q = self._queues.get(job)
            if q:
                task = q.popleft()
                if not q:
                    del self._queues[job]
                    self._rr.remove(job)
                return task
        return None

    def _step(self) -> None:
        with self._lock:
            backlog = sum(len(q) for q in self._queues.values())
            self._grow(backlog)
            for slot in list(self._slots.values()):
                if slot.busy is not None:
                    continue
                pinned = self._pinned.get(slot.slot)
                task = pinned.popleft() if pinned else self._next_unpinned()
                if task is None:
                    continue
                ref = getattr(slot.handle, task.method).remote(*task.args)
                slot.busy = task
                self._inflight[ref] = slot
            self._release_idle(backlog)
            if self._metrics:
                self._metrics.backlog.set(backlog)
                self._metrics.actors.set(len(self._slots))
            refs = list(self._inflight)
        if not refs:
            time.sleep(0.02)
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.05, fetch_local=False)
        for ref in ready:
            self._complete(ref)

    def _complete(self, ref) -> None:
        with self._lock:
            slot = self._inflight.pop(ref)
            task, slot.busy = slot.busy, None
            slot.idle_since = time.monotonic()
        try:
            result = ray.get(ref)  # ready: does not block
        except ray.exceptions.RayActorError as exc:
            self._lose_slot(slot, task, exc)
            return
        except ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            if isinstance(cause, MissingShardState) or "MissingShardState" in str(exc):
                task.future.set_result(MissingShardState(str(exc)))
            else:
                task.future.set_exception(exc)
            return
        with self._lock:
            if task.method == "density":
                slot.keys.add(task.key)
                self._key_slot[task.key] = slot.slot
                slot.device_memory = result.get("device_memory")
            elif task.method in ("forest", "drop"):
                slot.keys.discard(task.key)
                self._key_slot.pop(task.key, None)
        if task.method == "density" and self._metrics:
            self._metrics.shards_done.inc()
            self._metrics.shard_seconds.observe(result.get("seconds", 0.0))
            self._metrics.stars.inc(len(task.args[2].owned_local))
        task.future.set_result(result)

    def _lose_slot(self, slot: _Slot, task: _Task, exc) -> None:
        """The actor is dead for good: drop it, requeue its density work, fail pinned work."""
        log.warning("actor %s-%d lost: %s", self.name_prefix, slot.slot, exc)
        with self._lock:
            self._slots.pop(slot.slot, None)
            for key in slot.keys:
                self._key_slot.pop(key, None)
            pinned = self._pinned.pop(slot.slot, deque())
            if task.method == "density":
                self._queues.setdefault(task.job, deque()).appendleft(task)
                if task.job not in self._rr:
                    self._rr.append(task.job)
            else:
                pinned.appendleft(task)
        for t in pinned:
            t.future.set_result(MissingShardState(f"actor holding {t.key} was lost"))

    def _grow(self, backlog: int) -> None:
        busy = sum(1 for s in self._slots.values() if s.busy is not None)
        want = min(self.max_actors, max(self.min_actors, busy + backlog))
        while len(self._slots) < want:
            sid = next(self._slot_ids)
            handle = density_actor(sid, self.num_gpus, self.num_cpus, self.prefer_backend,
                                   self.name_prefix)
            self._slots[sid] = _Slot(sid, handle)
        self._request(want)

    def _release_idle(self, backlog: int) -> None:
        if backlog:
            return
        now = time.monotonic()
        for slot in list(self._slots.values()):
            if len(self._slots) <= self.min_actors:
                break
            if slot.busy is None and not slot.keys and not self._pinned.get(slot.slot) \
                    and now - slot.idle_since > self.idle_release_s:
                ray.kill(slot.handle, no_restart=True)
                del self._slots[slot.slot]
        self._request(len(self._slots))

    def _request(self, n: int) -> None:
        """Tell the autoscaler how many actor bundles we want (GPU pools only).

        A ``request_resources`` demand persists until replaced (Ray issue 19785): every change
        of the pool's size replaces it, and an empty pool requests zero bundles, so GPU nodes
        can leave once the backlog has drained and the idle actors are released.
        """
        if self.num_gpus <= 0 or n == self._requested:
            return
        self._requested = n
        bundle = {k: v for k, v in (("GPU", self.num_gpus), ("CPU", self.num_cpus)) if v > 0}
        try:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[bundle] * n)
        except Exception as exc:  # no autoscaler (local cluster): capacity is what it is
            log.debug("request_resources unavailable: %s", exc)
