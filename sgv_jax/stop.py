"""Stopping a long job cleanly: SIGTERM (a TPU preemption) or Ctrl-C (SIGINT) asks the training
loop (or the captioning loop) to finish its step (batch), save and return; a second Ctrl-C
aborts at once.

With several processes every host must leave the loop after the same step: a host that stops
early leaves the others waiting in the next step's collectives. `AgreedStop` therefore reduces
the hosts' requests with a tiny all-reduce after every step; only one host needs the signal.
"""

from __future__ import annotations

import signal
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def exit_status(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (130 Ctrl-C)."""
    return 128 + signum


class StopRequest:
    """Catches SIGTERM and SIGINT while installed; `signum` is the first one seen (0: none)."""

    def __init__(self, announce: bool = True, finishing: str = "finishing this step and saving"):
        self.signum = 0
        self._announce = announce
        self._finishing = finishing
        self._previous = {}
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: abort without saving
        self.signum = self.signum or signum
        if self._announce:
            print(f"\n{signal_name(signum)}: {self._finishing} (Ctrl-C again aborts without "
                  "saving)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class AgreedStop:
    """After each step, the signal every host agrees to stop on (0: go on).

    One process: its own request. Several: the max over hosts of their requests, reduced on
    device and read one step late: the reduction queued after step s is read after step s+1 has
    been dispatched, so the check never drains the device queue, and all hosts see the same value
    for the same step, so they all stop after step s+1.
    """

    def __init__(self, request: StopRequest):
        self.request = request
        self._pending = None
        if jax.process_count() > 1:
            mesh = Mesh(np.asarray(jax.devices()), ("hosts",))
            self._input = NamedSharding(mesh, PartitionSpec("hosts"))
            self._reduce = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))

    def after_step(self) -> int:
        if jax.process_count() == 1:
            return self.request.signum
        local = np.full((jax.local_device_count(),), self.request.signum, np.int32)
        queued = self._reduce(jax.make_array_from_process_local_data(self._input, local))
        previous, self._pending = self._pending, queued
        return 0 if previous is None else int(np.asarray(previous.addressable_data(0)))
