"""Continuous batching on the host: a bounded queue of jobs feeding the engine's batch slots.

One loop iteration (`run_once`): drop cancelled and expired jobs, start at most ONE waiting job
in a free slot (its prefill), queue one decode step for every running job, then read the
tokens of the step queued by the previous iteration and hand them to their jobs. So a new
request's prefill delays the running ones by at most one prefill per generated token, and a
slot freed by a finished, cancelled or timed-out job is refilled on the next iteration.

The host reads one step's tokens (detokenizing, streaming, finishing jobs) while the device
runs the next: a serial loop left the device idle for that time, about a tenth of each
iteration at 32 slots on bench_serve.py's model. A job that ends in one step therefore has one
more step decoded for it, whose token is dropped (a step computes its whole row bucket
anyway). The loop runs on its own thread (`start`); jobs talk back through their `emit`
callable, called on that thread.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from sgv_jax.data.tokenize import SentencePieceTokenizer
from sgv_jax.serve.engine import Engine, SlotRequest
from sgv_jax.serve.text_stream import TextStream


class QueueFull(Exception):
    """Every slot is busy and the waiting queue holds `max_queue` jobs."""


@dataclasses.dataclass(frozen=True)
class Event:
    """What a job reports: `text` (a new piece of the answer), `done` (finish_reason "stop" or
    "length", with token counts) or `error` (an HTTP status and a message)."""

    kind: str
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 0


@dataclasses.dataclass(frozen=True)
class _Queued:
    """A decode step on the device whose tokens the host has not read: the jobs it decoded
    for (by slot), and the job whose prefill was queued just before it, with its first token."""

    tokens: jax.Array  # [B]
    jobs: dict
    started: tuple | None = None  # (slot, Job, first token: a device scalar)


@dataclasses.dataclass(eq=False)
class Job:
    request: SlotRequest
    max_tokens: int
    emit: Callable[[Event], None]
    stop_strings: Sequence[str] = ()
    ignore_eos: bool = False
    deadline: float = float("inf")  # on the scheduler's clock
    cancelled: bool = False
    stream: TextStream | None = None
    generated: int = 0


class Scheduler:
    def __init__(self, engine: Engine, tokenizer: SentencePieceTokenizer,
                 eos_ids: Sequence[int], max_queue: int,
                 clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.tokenizer = tokenizer
        self.eos_ids = tuple(eos_ids)
        self.max_queue = max_queue
        self.clock = clock
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: dict[int, Job] = {}  # slot -> job
        self.counts = collections.Counter(dict.fromkeys(
            ("completed", "cancelled", "timed_out", "rejected", "failed"), 0))
        self._wake = threading.Condition()
        self._queued: _Queued | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- called from request handlers (any thread) --

    def submit(self, job: Job) -> None:
        with self._wake:
            if len(self.waiting) >= self.max_queue:
                self.counts["rejected"] += 1
                raise QueueFull(f"{len(self.running)} requests running and {len(self.waiting)} "
                                "waiting (the queue is full); retry later")
            self.waiting.append(job)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: the job's slot is freed on the next iteration."""
        job.cancelled = True
        with self._wake:
            self._wake.notify()

    def status(self) -> dict:
        return {"slots": self.engine.slots, "running": len(self.running),
                "waiting": len(self.waiting), "context": self.engine.context,
                "compiled_programs": Engine.compiled_programs(), **self.counts}

    # -- the loop --

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _serve(self) -> None:
        while not self._stopping:
            if not self.run_once():
                with self._wake:  # idle: sleep until a job arrives (or a deadline may pass)
                    if not self._stopping and not self.waiting and not self.running:
                        self._wake.wait(timeout=0.5)

    def run_once(self) -> bool:
        """One iteration; False when there was nothing to do."""
        now = self.clock()
        with self._wake:
            for job in [j for j in self.waiting if j.cancelled or j.deadline <= now]:
                self.waiting.remove(job)
                self._drop(job, now)
            free = [s for s in range(self.engine.slots) if s not in self.running]
            starting = self.waiting.popleft() if free and self.waiting else None
        for slot, job in list(self.running.items()):
            if job.cancelled or job.deadline <= now:
                del self.running[slot]
                self._drop(job, now)
        try:
            started = None
            if starting is not None:
                slot = self.engine.choose_slot(free)
                started = (slot, starting, self._start(slot, starting))
            queued = None
            if self.running:
                active = np.asarray([s in self.running for s in range(self.engine.slots)])
                queued = _Queued(self.engine.step(active), dict(self.running), started)
            previous, self._queued = self._queued, queued
            if previous is not None:
                self._read(previous)  # waits for it while `queued` runs
        except Exception as e:  # noqa: BLE001 - a device failure fails its jobs, not the server
            self._fail_all(e)  # a started job already counts as running
            return True
        return starting is not None or queued is not None or previous is not None

    def _start(self, slot: int, job: Job) -> jax.Array:
        job.stream = TextStream(self.tokenizer, job.stop_strings)
        self.running[slot] = job
        return self.engine.prefill(slot, job.request)

    def _read(self, queued: _Queued) -> None:
        """Hands a step's tokens (after a started job's first token) to the jobs it decoded
        for that still run in their slots."""
        if queued.started is not None:
            self._take(*queued.started)
        tokens = np.asarray(queued.tokens)
        for slot, job in queued.jobs.items():
            self._take(slot, job, tokens[slot])

    def _take(self, slot: int, job: Job, token) -> None:
        """Gives the job its next token unless it no longer runs in `slot`; frees the slot
        when that token finished it."""
        if self.running.get(slot) is job and self._accept(job, int(token)):
            del self.running[slot]

    def _accept(self, job: Job, token: int) -> bool:
        """Takes the job's next token; True when the job has finished."""
        job.generated += 1
        if token in self.eos_ids and not job.ignore_eos:
            return self._finish(job, "stop")
        text = job.stream.add(token)
        if text:
            job.emit(Event("text", text))
        if job.stream.stopped:
            return self._finish(job, "stop")
        if job.generated >= job.max_tokens:
            return self._finish(job, "length")
        return False

    def _finish(self, job: Job, reason: str) -> bool:
        text, ids = job.stream.finish()
        if text:
            job.emit(Event("text", text))
        job.emit(Event("done", finish_reason=reason, prompt_tokens=len(job.request.ids),
                       completion_tokens=len(ids)))
        self.counts["completed"] += 1
        return True

    def _drop(self, job: Job, now: float) -> None:
        if job.cancelled:
            self.counts["cancelled"] += 1
            return
        self.counts["timed_out"] += 1
        job.emit(Event("error", text="the request timed out before its answer was complete",
                       status=504))

    def _fail_all(self, error: Exception) -> None:
        """A device call failed: its donated slot state is gone, so every running job fails
        (with the reason) and the slots start empty."""
        jobs = list(self.running.values())
        self.running.clear()
        self._queued = None
        self.engine.reset()
        for job in jobs:
            self.counts["failed"] += 1
            job.emit(Event("error", text=f"generation failed: {type(error).__name__}: {error}",
                           status=500))
