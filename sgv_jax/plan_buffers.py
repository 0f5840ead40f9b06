"""The largest temporaries of a compiled step, read from XLA's buffer-assignment dump.

`XLA_FLAGS=--xla_dump_to=DIR` makes the compiler (XLA:CPU or libtpu's TPU compiler) write, per
module, `*after_optimizations-buffer-assignment.txt` (every logical value with its size and
offset in an allocation) and `*after_optimizations.txt` (the HLO, whose `metadata={op_name=…}`
names the JAX operation each instruction came from). Joining the two shows what the
temporaries are: saved residuals, gathered weights, attention scores, fp32 copies.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

_VALUE = re.compile(r"^\s*value: <\d+ (\S+) @\d+> \(size=(\d+),offset=(\d+)\): (\S+)")
_ALLOCATION = re.compile(r"^allocation (\d+): size \d+(.*)$")
_OP_NAME = re.compile(r'metadata=\{[^}]*op_name="([^"]*)"(?:[^}]*source_file="([^"]*)")?'
                      r'(?:[^}]*source_line=(\d+))?')


@dataclasses.dataclass(frozen=True)
class Buffer:
    size: int
    shape: str
    instruction: str
    origin: str  # the JAX op path (and source line) the instruction came from


def _dump_files(dump_dir: str, module: str) -> tuple[str, str] | None:
    pattern = os.path.join(dump_dir, f"*{module}*after_optimizations")
    assignments = sorted(glob.glob(pattern + "-buffer-assignment.txt"))
    if not assignments:
        return None
    hlo = assignments[-1].replace("-buffer-assignment.txt", ".txt")
    return assignments[-1], hlo


def _origins(hlo_path: str) -> dict[str, str]:
    origins = {}
    if not os.path.exists(hlo_path):
        return origins
    with open(hlo_path) as f:
        for line in f:
            name, sep, rest = line.strip().removeprefix("ROOT ").partition(" = ")
            if not sep:
                continue
            match = _OP_NAME.search(rest)
            if match:
                op, source, lineno = match.groups()
                where = f" ({os.path.basename(source)}:{lineno})" if source and lineno else ""
                origins[name.lstrip("%")] = op + where
    return origins


def top_buffers(dump_dir: str, module: str = "jit_train_step", count: int = 10) -> list[Buffer]:
    """The `count` largest distinct temporaries (values in preallocated-temp allocations; a
    value that aliases another at the same offset and size is listed once)."""
    files = _dump_files(dump_dir, module)
    if files is None:
        return []
    assignment, hlo = files
    seen: set[tuple[str, int, int]] = set()
    found: list[tuple[int, str, str]] = []
    in_temp, allocation = False, ""
    with open(assignment) as f:
        for line in f:
            if head := _ALLOCATION.match(line):
                allocation, in_temp = head.group(1), "preallocated-temp" in head.group(2)
                continue
            value = _VALUE.match(line)
            if not (in_temp and value):
                continue
            name, shape = value.group(1), value.group(4)
            size, offset = int(value.group(2)), int(value.group(3))
            key = (allocation, offset, size)
            if key not in seen:
                seen.add(key)
                found.append((size, shape.split("{")[0], name))
    found.sort(key=lambda x: -x[0])
    origins = _origins(hlo)
    return [Buffer(size, shape, name, origins.get(name.split("{")[0], "?"))
            for size, shape, name in found[:count]]


def format_buffers(buffers: list[Buffer]) -> str:
    lines = [(f"largest temporaries ({len(buffers)}; buffers that are not live together share "
             "memory, so these do not add up):")]
    for b in buffers:
        lines.append(f"  {b.size / 1e9:7.2f} GB  {b.shape:<28} {b.instruction:<32} {b.origin[:140]}")
    return "\n".join(lines)
