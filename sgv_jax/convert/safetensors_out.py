"""Streamed, sharded safetensors writing: tensors go to disk one at a time, in a planned order.

`safetensors.numpy.save_file` needs a whole shard in memory; since every shape is known before
export (the sgv index), the shard files and their headers are planned up front and each tensor's
bytes are appended as it is produced. Files follow HF's names (`model.safetensors`, or
`model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`).
"""

from __future__ import annotations

import json
import os
import struct
from typing import BinaryIO

import numpy as np

# safetensors dtype codes (https://github.com/huggingface/safetensors, format spec).
DTYPE_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
               "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
               "bool": "BOOL"}

Planned = tuple[str, tuple[int, ...], str]  # (key, shape, dtype name)


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)

    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


class ShardedWriter:
    """Write the planned tensors, in plan order, into shards of at most `max_shard_bytes`."""

    def __init__(self, directory: str, plan: list[Planned], max_shard_bytes: int,
                 stem: str = "model"):
        self.directory, self.stem = directory, stem
        self.shards: list[list[Planned]] = [[]]
        size = 0
        for item in plan:
            n = _nbytes(item[1], item[2])
            if self.shards[-1] and size + n > max_shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append(item)
            size += n
        self.total_size = sum(_nbytes(s, d) for _, s, d in plan)
        self._shard, self._pos, self._file = 0, 0, None  # next tensor: shards[_shard][_pos]

    def file_name(self, i: int) -> str:
        n = len(self.shards)
        return f"{self.stem}.safetensors" if n == 1 else \
            f"{self.stem}-{i + 1:05d}-of-{n:05d}.safetensors"

    def write(self, key: str, array: np.ndarray) -> None:
        if self._shard >= len(self.shards):
            raise ValueError(f"unplanned tensor {key}: every planned tensor is already written")
        want_key, shape, dtype = self.shards[self._shard][self._pos]
        if (key, tuple(array.shape), array.dtype.name) != (want_key, tuple(shape), dtype):
            raise ValueError(f"out of plan: got {key} {tuple(array.shape)} {array.dtype.name}, "
                             f"expected {want_key} {tuple(shape)} {dtype}")
        if self._file is None:
            # Stays open across write() calls until the shard's last tensor is in.
            self._file = open(  # noqa: SIM115
                os.path.join(self.directory, self.file_name(self._shard)), "wb")
            _write_header(self._file, self.shards[self._shard])
        self._file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        self._pos += 1
        if self._pos == len(self.shards[self._shard]):
            self._file.close()
            self._file, self._shard, self._pos = None, self._shard + 1, 0

    def close(self) -> None:
        if self._shard != len(self.shards):
            raise ValueError(f"{self.directory}: export stopped before "
                             f"{self.shards[self._shard][self._pos][0]} was written")
        if len(self.shards) > 1:
            weight_map = {key: self.file_name(i)
                          for i, shard in enumerate(self.shards) for key, _, _ in shard}
            with open(os.path.join(self.directory, f"{self.stem}.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": self.total_size}, "weight_map": weight_map},
                          f, indent=2)


def _write_header(f: BinaryIO, shard: list[Planned]) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}  # transformers refuses files without it
    offset = 0
    for key, shape, dtype in shard:
        n = _nbytes(shape, dtype)
        header[key] = {"dtype": DTYPE_CODES[dtype], "shape": list(shape),
                       "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
