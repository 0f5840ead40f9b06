"""A grain stage that drops skipped examples, counts them and stacks the rest into batches.

Skips happen inside grain's worker processes, where a counter would be invisible to the
training loop. So the per-example stage emits a small marker instead of a sample, and this
stage (also in the workers) turns markers into counts that ride along with the next batch
(`skip_counts`, `skipped_ids`); `pipeline.DataIterator` adds them up in the main process.
Counts are handed on with every batch, so none are pending between two batches and the
iterator state is just the parent's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from grain.python import SharedMemoryArray

from sgv_jax.data.validate import REASONS

SKIP_KEY = "skip_reason"
REMAINDER = "batch_remainder"  # examples left over at the end of a finite run
COUNTED = REASONS + (REMAINDER,)
MAX_IDS_PER_BATCH = 8  # skipped record ids forwarded for logging; counts are always exact


def skip_marker(reason: str, record_id: str) -> dict[str, str]:
    return {SKIP_KEY: reason, "id": record_id}


class CountingBatchIterDataset(grain.IterDataset):
    """Batches of `batch_size` valid examples; markers are counted, never batched."""

    def __init__(self, parent: grain.IterDataset, batch_size: int):
        super().__init__(parent)
        self._batch_size = batch_size
        self._shared_memory = False

    def enable_shared_memory_output(self) -> None:
        # Called by mp_prefetch: big arrays then cross processes without a pickle copy.
        self._shared_memory = True

    def __iter__(self) -> grain.DatasetIterator:
        return _CountingBatchIterator(self._parent.__iter__(), self._batch_size, self._shared_memory)

    def __str__(self) -> str:
        return f"CountingBatchIterDataset(batch_size={self._batch_size})"


class _CountingBatchIterator(grain.DatasetIterator):

    def __init__(self, parent: grain.DatasetIterator, batch_size: int, shared_memory: bool):
        super().__init__(parent)
        self._batch_size = batch_size
        self._shared_memory = shared_memory
        self._pending = [0] * len(COUNTED)
        self._pending_ids: list[tuple[str, str]] = []
        self._done = False

    def _note_skip(self, reason: str, record_id: str) -> None:
        self._pending[COUNTED.index(reason)] += 1
        if len(self._pending_ids) < MAX_IDS_PER_BATCH:
            self._pending_ids.append((reason, record_id))

    def _take_counts(self) -> dict[str, Any]:
        counts = {"skip_counts": np.asarray(self._pending, np.int64),
                            "skipped_ids": list(self._pending_ids)}
        self._pending = [0] * len(COUNTED)
        self._pending_ids = []
        return counts

    def __next__(self) -> dict[str, Any]:
        if self._done:
            raise StopIteration
        examples = []
        while len(examples) < self._batch_size:
            try:
                example = next(self._parent)
            except StopIteration:
                # A last element carrying only counts, so the end of a finite run loses none.
                self._done = True
                self._pending[COUNTED.index(REMAINDER)] += len(examples)
                if any(self._pending):
                    return self._take_counts()
                raise
            if SKIP_KEY in example:
                self._note_skip(example[SKIP_KEY], example["id"])
            else:
                examples.append(example)
        return {**self._stack(examples), **self._take_counts()}

    def _stack(self, examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        batch = {}
        for key in examples[0]:
            first = np.asarray(examples[0][key])
            shape = (len(examples),) + first.shape
            out = (SharedMemoryArray(shape, first.dtype) if self._shared_memory
                          else np.empty(shape, first.dtype))
            for i, example in enumerate(examples):
                out[i] = example[key]
            batch[key] = out
        return batch

    def get_state(self) -> dict[str, Any]:
        # Between two calls nothing is pending: every __next__ hands its counts on.
        return {"parent": self._parent.get_state(), "done": self._done}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._done = state["done"]

    def __str__(self) -> str:
        return f"CountingBatchIterator(batch_size={self._batch_size})"
