"""Continuous batching on the host: a bounded queue of jobs feeding the engine's batch slots.

One loop iteration (`run_once`): drop cancelled and expired jobs, start at most ONE waiting job
in a free slot (its prefill), then one decode step for every running job. So a new request's
prefill delays the running ones by at most one prefill per generated token, and a slot freed
by a finished, cancelled or timed-out job is refilled on the next iteration. The loop runs on
its own thread (`start`); jobs talk back through their `emit` callable, called on that thread.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

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
        if starting is not None:
            self._start(free[0], starting)
        if not self.running:
            return starting is not None
        try:
            tokens = self.engine.step(np.asarray([s in self.running
                                                  for s in range(self.engine.slots)]))
        except Exception as e:  # noqa: BLE001 - a device failure fails its jobs, not the server
            self._fail_all(e)
            return True
        for slot, job in list(self.running.items()):
            if self._accept(job, int(tokens[slot])):
                del self.running[slot]
        return True

    def _start(self, slot: int, job: Job) -> None:
        job.stream = TextStream(self.tokenizer, job.stop_strings)
        try:
            token = self.engine.prefill(slot, job.request)
        except Exception as e:  # noqa: BLE001
            self._fail_all(e, also=job)
            return
        if not self._accept(job, token):
            self.running[slot] = job

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

    def _fail_all(self, error: Exception, also: Job | None = None) -> None:
        """A device call failed: its donated slot state is gone, so every running job fails
        (with the reason) and the slots start empty."""
        jobs = list(self.running.values()) + ([also] if also is not None else [])
        self.running.clear()
        self.engine.reset()
        for job in jobs:
            self.counts["failed"] += 1
            job.emit(Event("error", text=f"generation failed: {type(error).__name__}: {error}",
                           status=500))
