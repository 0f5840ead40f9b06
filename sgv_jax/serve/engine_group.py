"""Batch slots split over several devices of this host: one `Engine` per device, one scheduler.

Data parallel serving inside one process: each device holds a copy of the weights and a block
of consecutive slots, and a decode step queues one program per device that has running slots,
so the devices decode side by side. Which free slot a new request takes (`choose_slot`): the
first device's while fewer than `CONCENTRATE` requests run, since a step of few rows is bound
by reading the weights and every device would read them; after that the least busy device's,
so rows and prefills stay balanced (a device taking several new requests in a row stalls the
whole step on its prefills). Each device compiles its own programs: the decode steps at
warm-up, and a prompt bucket's prefill for all devices when the first of them meets it.

On a GPU or TPU host the devices are its accelerators. On CPU they are XLA host devices
(`--xla_force_host_platform_device_count`, set by `launch/serve.py --devices`), each running
its programs on its own thread. That pays on CPU because a decode step's attention reads the
cache on one core (XLA:CPU runs each batched per-row dot, and independent dots one after the
other, on a single thread), leaving the other core of a 2-core host idle meanwhile. Measured
there on bench_serve.py's model (2-core Zen 3, in process, 64 requests): the step's layers in
isolation, 32 rows on one device 32.4 ms, 16 + 16 rows on two 23.6 ms; at 32 clients 691 tok/s
on one device, 836 on two; at 8 clients 501-547 on one, 515 on two (330 when new requests
went to the least busy device from the first). The price is one copy of the weights per device.
"""

from __future__ import annotations

import jax
import numpy as np

from sgv_jax.generation.generator import Generator
from sgv_jax.serve.engine import Engine, SlotRequest

CONCENTRATE = 8  # running requests below which new ones all go to the first device


class StepTokens:
    """The next tokens of one group step by slot, assembled when `np.asarray` asks for them
    (the wait for the devices happens there, as for one Engine's device array)."""

    def __init__(self, slots: int, parts: list[tuple[int, jax.Array]]):
        self.slots = slots
        self.parts = parts  # (the device's first slot, its engine's tokens [rows])

    def __array__(self, dtype=None, copy=None):
        tokens = np.zeros(self.slots, np.int32)
        for first, part in self.parts:
            rows = np.asarray(part)
            tokens[first:first + len(rows)] = rows
        return tokens if dtype is None else tokens.astype(dtype)


class EngineGroup:
    """`Engine`'s interface (slots, context, prefill, step, reset, warm_up, compiled_programs)
    over one engine per device in `devices`, each holding a block of consecutive slots."""

    def __init__(self, generator: Generator, slots: int, devices: list[jax.Device],
                 context: int | None = None, concentrate: int = CONCENTRATE):
        if not 1 <= len(devices) <= slots:
            raise ValueError(f"{len(devices)} devices for {slots} slots: each device needs at "
                             "least one slot (raise --max-batch or lower --devices)")
        n = len(devices)
        sizes = [slots // n + (i < slots % n) for i in range(n)]
        self.firsts = [sum(sizes[:i]) for i in range(n)]  # each engine's first slot
        self.engines = [Engine(generator, size, context, device=device)
                        for size, device in zip(sizes, devices)]
        self.slots = slots
        self.context = self.engines[0].context
        self.concentrate = concentrate
        self._prefill_shapes: set[tuple] = set()  # prompt buckets compiled on every device

    def _index(self, slot: int) -> int:
        return next(i for i in reversed(range(len(self.firsts))) if self.firsts[i] <= slot)

    def _locate(self, slot: int) -> tuple[Engine, int]:
        i = self._index(slot)
        return self.engines[i], slot - self.firsts[i]

    def choose_slot(self, free: list[int]) -> int:
        """The lowest free slot of the first device while fewer than `concentrate` requests run
        (few-row steps are bound by reading the weights, which every device would read), then
        the lowest free slot of the device running the fewest (the devices' rows and prefills
        stay balanced: a device that takes every new request stalls on its prefills)."""
        running = [engine.slots for engine in self.engines]
        for slot in free:
            running[self._index(slot)] -= 1
        if sum(running) < self.concentrate:
            return free[0]
        return min(free, key=lambda slot: (running[self._index(slot)], slot))

    def prefill(self, slot: int, request: SlotRequest) -> jax.Array:
        """The engine holding `slot` prefills it. A prompt bucket no device has met yet is
        compiled for every device now, so it stalls the running requests once, not once per
        device at some later moment."""
        engine, local = self._locate(slot)
        shape = engine.prefill_shape(request)
        if shape not in self._prefill_shapes:
            self._prefill_shapes.add(shape)
            for other in self.engines:
                if other is not engine:
                    other.compile_prefill(request)
        return engine.prefill(local, request)

    def step(self, active: np.ndarray) -> StepTokens:
        active = np.asarray(active, bool)
        parts = []
        for first, engine in zip(self.firsts, self.engines):
            mine = active[first:first + engine.slots]
            if mine.any():
                parts.append((first, engine.step(mine)))
        return StepTokens(self.slots, parts)

    def reset(self) -> None:
        for engine in self.engines:
            engine.reset()

    def warm_up(self) -> None:
        for engine in self.engines:
            engine.warm_up()

    compiled_programs = staticmethod(Engine.compiled_programs)
