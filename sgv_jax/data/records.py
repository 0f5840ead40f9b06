"""Random access to LLaVA / ShareGPT4V records (REFERENCE.md §3.8) through an on-disk index.

The reference `json.load`s the whole 1.2-1.5 GB file in every process. Here a one-time pass
writes an index directory next to the file (or under `index_dir`): `spans.npy`, the byte
span of every record, and for a JSON list also `records.bin`, the records' raw text back to
back (a JSONL file is its own blob). Opening then memory-maps both, so a host holds only the
pages it touches, and workers re-open the files instead of receiving a copy.
"""

from __future__ import annotations

import codecs
import json
import mmap
import os
import shutil
from typing import Any

import numpy as np

from sgv_jax.data.validate import BadRecord

INDEX_VERSION = 1
_CHUNK = 1 << 24  # bytes read per step while indexing
_MAX_RECORD_CHARS = 1 << 26  # a longer "record" means a syntax error, not a big record


def index_path(data_file: str, index_dir: str | None = None) -> str:
    """Where the index of `data_file` lives: `<index_dir or its folder>/<name>.sgvidx`."""
    folder = index_dir or os.path.dirname(os.path.abspath(data_file))
    return os.path.join(folder, os.path.basename(data_file) + ".sgvidx")


def _source_stamp(data_file: str) -> dict[str, Any]:
    stat = os.stat(data_file)
    return {"version": INDEX_VERSION, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _first_byte(data_file: str) -> bytes:
    with open(data_file, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1]


def _index_jsonl(data_file: str) -> np.ndarray:
    """[N, 2] byte spans of the non-empty lines, found with vectorised newline search."""
    starts, ends = [], []
    base = 0
    line_start = 0
    with open(data_file, "rb") as f:
        while chunk := f.read(_CHUNK):
            newlines = np.flatnonzero(np.frombuffer(chunk, np.uint8) == ord("\n")) + base
            line_starts = np.concatenate([[line_start], newlines + 1])
            starts.append(line_starts[:-1])
            ends.append(newlines)
            line_start = int(line_starts[-1])
            base += len(chunk)
    starts.append(np.asarray([line_start]))
    ends.append(np.asarray([base]))
    spans = np.stack([np.concatenate(starts), np.concatenate(ends)], axis=1).astype(np.uint64)
    return spans[spans[:, 1] - spans[:, 0] > 1]  # blank lines (`""` or `"\r"`) are not records


def _index_json_list(data_file: str, blob_file: str) -> np.ndarray:
    """Streams the top-level list element by element, copying each element's text to
    `blob_file`; memory stays near one read chunk whatever the file size."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8-sig")()
    spans = []
    written = 0
    buf, pos, eof = "", 0, False
    with open(data_file, "rb") as src, open(blob_file, "wb") as blob:

        def refill() -> bool:
            nonlocal buf, pos, eof
            data = src.read(_CHUNK)
            eof = not data
            buf = buf[pos:] + utf8.decode(data, final=eof)
            pos = 0
            return not eof

        refill()
        pos = buf.index("[") + 1
        while True:
            while True:  # skip separators, reading more text as needed
                while pos < len(buf) and buf[pos] in " \t\r\n,":
                    pos += 1
                if pos < len(buf) or not refill():
                    break
            if pos >= len(buf):
                raise ValueError(f"{data_file}: JSON list is not closed with ']'")
            if buf[pos] == "]":
                return np.asarray(spans, np.uint64).reshape(-1, 2)
            try:
                _, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                # Most likely the element straddles the chunk end: read on, up to a bound
                # so that a real syntax error does not pull the whole file into memory.
                if not eof and len(buf) - pos < _MAX_RECORD_CHARS and refill():
                    continue
                raise ValueError(f"{data_file}: record {len(spans)} is not valid JSON: {e}") from None
            text = buf[pos:end].encode("utf-8")
            blob.write(text)
            spans.append((written, written + len(text)))
            written += len(text)
            pos = end


def build_index(data_file: str, index_dir: str | None = None) -> str:
    """Builds (or reuses, if it matches the file's size and mtime) the index; returns its path."""
    path = index_path(data_file, index_dir)
    stamp = _source_stamp(data_file)
    meta = _read_meta(path)
    if all(meta.get(k) == v for k, v in stamp.items()):
        return path
    first = _first_byte(data_file)
    if first not in (b"[", b"{", b""):
        raise ValueError(f"{data_file}: expected a JSON list or JSONL records, starts with {first!r}")
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        if first == b"[":
            fmt = "json"
            spans = _index_json_list(data_file, os.path.join(tmp, "records.bin"))
        else:
            fmt = "jsonl"
            spans = _index_jsonl(data_file)
        np.save(os.path.join(tmp, "spans.npy"), spans)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({**stamp, "format": fmt, "count": len(spans)}, f)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a malformed file (or Ctrl-C) leaves nothing
        raise
    # Publish atomically; hosts racing on a shared folder all write the same content.
    shutil.rmtree(path, ignore_errors=True)
    try:
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _read_meta(path: str) -> dict[str, Any]:
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return {}
    return meta


class RecordFile:
    """Sequence of records of one data file; `record(i)` parses lazily from the mapped blob."""

    def __init__(self, data_file: str, index_dir: str | None = None):
        if not os.path.isfile(data_file):
            raise FileNotFoundError(f"data file not found: {data_file}")
        self.data_file = data_file
        self.index = build_index(data_file, index_dir)
        with open(os.path.join(self.index, "meta.json")) as f:
            self.format = json.load(f)["format"]
        self._open()

    def _open(self) -> None:
        self._spans = np.load(os.path.join(self.index, "spans.npy"), mmap_mode="r")
        blob = os.path.join(self.index, "records.bin") if self.format == "json" else self.data_file
        self._blob = None
        if os.path.getsize(blob):
            with open(blob, "rb") as f:
                self._blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __getstate__(self) -> dict:
        return {"data_file": self.data_file, "index": self.index, "format": self.format}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self._spans)

    def raw(self, index: int) -> bytes:
        start, end = self._spans[index]
        return self._blob[int(start):int(end)]

    def __getitem__(self, index: int) -> Any:
        """The parsed record; raises BadRecord("bad_json") for a line that does not parse."""
        try:
            return json.loads(self.raw(index))
        except ValueError as e:
            raise BadRecord("bad_json", f"#{index}", f"{self.data_file}: {e}") from None
