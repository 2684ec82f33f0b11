"""A bounded job queue with one model worker thread and micro-batching.

One worker thread runs the model, so requests never compete for the CPU/GPU. Jobs wait in a
queue of at most ``capacity`` entries (the running batch not counted); :meth:`WorkQueue.submit`
raises :class:`QueueFull` beyond that (the API answers 429). When the worker takes a job whose
:attr:`Job.batch_key` is set, it also takes every waiting job with the same key, in arrival
order, while the batch holds at most ``max_batch`` images, and runs them as one call of
``run_batch``. A job whose client left or whose deadline passed is skipped before it runs, and a
running batch whose jobs are all cancelled is stopped at the next sampler step.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("unclip.serve")


class QueueFull(Exception):
    """The queue holds ``capacity`` waiting jobs."""


class JobCancelled(Exception):
    """Raised inside a running batch when all its jobs were cancelled or timed out."""


@dataclass
class Job:
    """One request's work.

    Attributes:
        kind: "generate", "variations", "interpolate", "mix" or "edit".
        spec: JSON-able settings, recorded in each image's manifest entry ("job").
        inputs: non-JSON inputs (decoded images).
        n: images the job makes (for the batch budget).
        batch_key: jobs with equal keys may share one model call (None: never batched).
        deadline: monotonic time after which the job is abandoned.
    """

    kind: str
    spec: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)
    n: int = 1
    batch_key: str | None = None
    deadline: float = float("inf")
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    progress: dict[str, Any] = field(default_factory=lambda: {"stage": "queued", "step": 0, "total": 0})
    status: str = "queued"
    created: float = field(default_factory=time.time)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Abandon the job: skipped if waiting, stopped at the next step if running alone."""
        self._cancelled.set()

    @property
    def abandoned(self) -> bool:
        return self._cancelled.is_set() or time.monotonic() > self.deadline


RunBatch = Callable[[list[Job], Callable[[str, int, int], None]], list[Any]]


class WorkQueue:
    """The bounded queue and its worker thread (see the module docstring).

    Args:
        run_batch: ``run_batch(jobs, callback) -> one result per job``; ``callback(stage, step,
            total)`` must be called at every sampler step (it raises :class:`JobCancelled`).
        capacity: waiting jobs at most.
        max_batch: images per batch at most (1: micro-batching off).
    """

    def __init__(self, run_batch: RunBatch, capacity: int = 16, max_batch: int = 8) -> None:
        if capacity < 1 or max_batch < 1:
            raise ValueError("capacity and max_batch must be >= 1")
        self.run_batch, self.capacity, self.max_batch = run_batch, capacity, max_batch
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self.running: list[Job] = []
        self.stats = {"batches": 0, "jobs": 0, "batched_jobs": 0, "rejected": 0, "cancelled": 0}
        self._thread = threading.Thread(target=self._loop, name="unclip-serve-worker", daemon=True)
        self._thread.start()

    # --- clients ----------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        """Queue a job; :class:`QueueFull` when ``capacity`` jobs already wait."""
        with self._cond:
            if self._stop:
                raise QueueFull("the server is shutting down")
            self._drop_abandoned()
            if len(self._pending) >= self.capacity:
                self.stats["rejected"] += 1
                raise QueueFull(f"the queue is full ({self.capacity} waiting requests)")
            self._pending.append(job)
            self._cond.notify()
        return job

    def waiting(self) -> int:
        with self._cond:
            self._drop_abandoned()
            return len(self._pending)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the running batch; waiting jobs fail."""
        with self._cond:
            self._stop = True
            for job in self._pending:
                job.cancel()
                job.future.set_exception(JobCancelled("server shutting down"))
            self._pending.clear()
            self._cond.notify_all()
        for job in self.running:
            job.cancel()
        self._thread.join(timeout)

    # --- the worker ---------------------------------------------------------------------------
    def _drop_abandoned(self) -> None:
        kept = collections.deque()
        for job in self._pending:
            if job.abandoned:
                self.stats["cancelled"] += 1
                job.status = "cancelled"
                job.future.set_exception(JobCancelled("cancelled before it ran"))
            else:
                kept.append(job)
        self._pending = kept

    def _take(self) -> list[Job] | None:
        with self._cond:
            while True:
                self._drop_abandoned()
                if self._pending or self._stop:
                    break
                self._cond.wait(timeout=1.0)
            if self._stop:
                return None
            first = self._pending.popleft()
            batch, images = [first], first.n
            if first.batch_key is not None:
                rest = collections.deque()
                for job in self._pending:
                    if job.batch_key == first.batch_key and images + job.n <= self.max_batch:
                        batch.append(job)
                        images += job.n
                    else:
                        rest.append(job)
                self._pending = rest
            self.running = batch
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            for job in batch:
                job.status = "running"

            def callback(stage: str, step: int, total: int, batch: list[Job] = batch) -> None:
                for job in batch:
                    job.progress = {"stage": stage, "step": step, "total": total}
                if all(job.abandoned for job in batch):
                    raise JobCancelled("every job of the batch was cancelled")

            try:
                results = self.run_batch(batch, callback)
            except BaseException as e:  # handed to each waiting request
                if not isinstance(e, JobCancelled):
                    log.debug("batch failed", exc_info=e)
                for job in batch:
                    job.status = "cancelled" if isinstance(e, JobCancelled) else "error"
                    if not job.future.done():
                        job.future.set_exception(e)
            else:
                for job, result in zip(batch, results):
                    job.status = "done"
                    job.future.set_result(result)
            with self._cond:
                self.stats["batches"] += 1
                self.stats["jobs"] += len(batch)
                self.stats["batched_jobs"] += len(batch) if len(batch) > 1 else 0
                self.running = []
