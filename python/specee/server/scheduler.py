"""Slots, a bounded queue, and the one compute thread that runs every slot.

Each slot owns a Context (its own KV cache) on the shared model. A request
takes a free slot, or waits in the queue (at most --queue requests), or is
refused at once. A single compute thread prefills new requests and then
calls `step_all`, one decode step for every active slot, round after round:
ggml already spreads one step over --threads cores, so a second compute
thread would only make the two fight for the same cores.

`step_all` batches: the slots that decode at full depth (vanilla mode) go
through one engine.decode_batch call, which reads the weights once for all
of them (continuous batching: a slot joins the batch from the round after
its prefill and leaves it when it finishes); slots in other modes (early
exit) step one by one.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..engine import Context, SpeceeError, decode_batch
from .decoding import Job, ServedHeads
from .prometheus import ServerMetrics
from .speculative import ServedDrafting

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Every slot is busy and the queue is full."""


@dataclass
class Slot:
    index: int
    ctx: Context
    job: Optional[Job] = None


class Scheduler:
    def __init__(self, contexts: Sequence[Context], heads: Optional[ServedHeads], queue_limit: int,
                 metrics: ServerMetrics, batching: bool = True):
        self.slots = [Slot(i, ctx) for i, ctx in enumerate(contexts)]
        self.batching = batching  # off: every slot steps alone (for comparison)
        self.after_round: Optional[Callable[[], None]] = None  # called after every round: outbox.Outbox.flush
        self.heads = heads
        self.drafting: Optional[ServedDrafting] = None  # the speculative mode's drafter, when configured
        self.queue_limit = queue_limit
        self.metrics = metrics
        self.compute_threads: set[int] = set()  # threads that ever called into a context (one: the worker)
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="specee-compute", daemon=True)

    # ---- the web side ----

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queues `job` for the next free slot; QueueFull when there is no room."""
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if self._n_busy() + len(self._waiting) >= len(self.slots) + self.queue_limit:
                raise QueueFull(f"all {len(self.slots)} slots are busy and {len(self._waiting)} requests wait "
                                f"(--queue {self.queue_limit})")
            self._waiting.append(job)
            self._update_gauges()
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: a waiting job leaves the queue now, a running
        one frees its slot after the current round."""
        if job.done:
            return
        job.cancel()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self.metrics.cancelled.inc()
                self._update_gauges()
            self._cond.notify()

    def stop(self) -> None:
        """Ends the compute thread; unfinished jobs get an error."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()
        for job in [s.job for s in self.slots if s.job is not None] + list(self._waiting):
            if not job.done:
                job.fail("the server is shutting down")
        self._waiting.clear()
        if self.after_round is not None:
            self.after_round()  # those failures go out too

    # ---- the compute thread ----

    def _run(self) -> None:
        while True:
            with self._cond:
                self._release()
                while not self._stopping and not self._waiting and self._n_busy() == 0:
                    self._cond.wait()
                if self._stopping:
                    return
                started = self._admit()
            for slot in started:
                self._guarded(slot, lambda s: s.job.begin(s.ctx, self.heads, self.drafting, s.index))
            active = [s for s in self.slots if s.job is not None and not s.job.done and not s.job.cancelled.is_set()]
            if active:
                self.step_all(active)
            with self._cond:
                self._release()  # before the answers go out: a client that has its answer finds its slot free
            if self.after_round is not None:
                self.after_round()  # the round's events go out (app.Outbox.flush)

    def step_all(self, slots: Sequence[Slot]) -> None:
        """One decode step for each slot: one batched call for the batchable
        ones (two or more), single steps for the rest."""
        t0 = time.perf_counter()
        batched = [s for s in slots if s.job.batchable] if self.batching else []
        if len(batched) < 2:
            batched = []
        alone = [s for s in slots if s not in batched]
        if batched:
            try:
                decode_batch([s.ctx for s in batched], [s.job.tokens[-1] for s in batched])
            except SpeceeError as e:
                # one slot's bad state must not fail the others: step them alone
                log.warning("batched step failed (%s); stepping %d slots one by one", e, len(batched))
                alone += batched
                batched = []
            else:
                self.metrics.batched_steps.inc()
        for slot in batched:
            self._guarded(slot, lambda s: s.job.step_batched(s.ctx))
        for slot in alone:
            self._guarded(slot, lambda s: s.job.step(s.ctx))
        self.metrics.decode_steps.inc(len(slots))
        self.metrics.decode_seconds.inc(time.perf_counter() - t0)

    def _guarded(self, slot: Slot, work: Callable[[Slot], None]) -> None:
        """Runs one piece of a job; a failure ends that job, never the thread."""
        self.compute_threads.add(threading.get_ident())
        try:
            work(slot)
        except SpeceeError as e:
            log.warning("request %d failed: %s", slot.job.id, e)
            slot.job.fail(f"decoding failed: {e}")
        except Exception:
            log.exception("request %d failed", slot.job.id)
            slot.job.fail("decoding failed: internal error (see the server log)")

    def _admit(self) -> list[Slot]:
        """Gives waiting jobs to free slots (under the lock)."""
        started = []
        for slot in self.slots:
            if slot.job is None and self._waiting:
                slot.job = self._waiting.popleft()
                started.append(slot)
        self._update_gauges()
        return started

    def _release(self) -> None:
        """Frees the slots of finished and cancelled jobs (under the lock)."""
        for slot in self.slots:
            job = slot.job
            if job is None or not (job.done or job.cancelled.is_set()):
                continue
            if job.finish_reason not in (None, "error"):
                self.metrics.job_finished(job.summary)
            elif job.cancelled.is_set():
                self.metrics.cancelled.inc()
            slot.job = None
        self._update_gauges()

    def _n_busy(self) -> int:
        return sum(s.job is not None for s in self.slots)

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(len(self._waiting))
        self.metrics.busy_slots.set(self._n_busy())
