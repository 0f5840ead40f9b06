"""Random access to webdataset tar shards as img2dataset writes them (MINIGPT4.md §3.4):
`NNNNN.tar` files of `{key}.jpg` + `{key}.json` (`"caption"`) and/or `{key}.txt`.

The original streams the shards (`wds.ResampledShards → tarfile_to_samples`); grain needs
random access for host sharding and checkpointable iterator state, so the shards are indexed
once (tar headers only, no image data read): one row per sample key with the byte ranges of
its image and caption. A sample is then two `seek + read`s. Keys follow webdataset's rule
(`base_plus_ext`): everything before the first dot of the file name.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile

import numpy as np
from PIL import Image
from tqdm import tqdm

from sgv_jax.data.validate import BadRecord

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # img2dataset --encode_format choices
NO_CAPTION, JSON_CAPTION, TXT_CAPTION = 0, 1, 2


def list_shards(source: str) -> list[str]:
    """`source`: a folder of `*.tar`, a glob, or one `.tar` file; sorted shard paths."""
    if os.path.isdir(source):
        shards = sorted(glob.glob(os.path.join(source, "*.tar")))
    else:
        shards = sorted(glob.glob(source))
    if not shards:
        raise FileNotFoundError(f"no webdataset shards (*.tar) at {source}; expected a folder of "
                                "img2dataset output (00000.tar, 00001.tar, ...)")
    return shards


def _split_name(name: str) -> tuple[str, str]:
    folder, base = os.path.split(name)
    key, dot, ext = base.partition(".")
    return os.path.join(folder, key), ext.lower() if dot else ""


def index_shard(path: str) -> list[tuple[str, int, int, int, int, int]]:
    """Rows (key, image offset, image size, caption kind, caption offset, caption size) of one
    shard, in file order; -1 offsets for a missing part."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = _split_name(member.name)
            samples.setdefault(key, {})[ext] = (member.offset_data, member.size)
    rows = []
    for key, parts in samples.items():
        image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), (-1, 0))
        if "json" in parts:
            kind, caption = JSON_CAPTION, parts["json"]
        elif "txt" in parts:
            kind, caption = TXT_CAPTION, parts["txt"]
        else:
            kind, caption = NO_CAPTION, (-1, 0)
        rows.append((key, *image, kind, *caption))
    return rows


class WebDatasetShards:
    """Indexed samples of a set of shards: `len()`, and `read(i) -> (record id, image, caption)`
    raising BadRecord (`missing_image`, `bad_image`, `missing_caption`)."""

    def __init__(self, source: str, show_progress: bool = True):
        self.shards = list_shards(source)
        keys, shard_ids, table = [], [], []
        for s, path in enumerate(tqdm(self.shards, desc="indexing shards", unit="shard",
                                      disable=not show_progress or len(self.shards) < 50)):
            for key, *numbers in index_shard(path):
                keys.append(f"{os.path.basename(path)}/{key}")
                shard_ids.append(s)
                table.append(numbers)
        self.keys = keys
        self.shard_ids = np.asarray(shard_ids, np.int32)
        self.table = np.asarray(table, np.int64).reshape(-1, 5)
        self._files: dict[int, int] = {}  # shard -> file descriptor

    def __getstate__(self) -> dict:
        # File descriptors are per process; grain sends the dataset to worker processes.
        return {k: v for k, v in self.__dict__.items() if k != "_files"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._files = {}

    def __len__(self) -> int:
        return len(self.keys)

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        # pread, not seek + read: grain maps elements on several threads at once.
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files.setdefault(shard, os.open(self.shards[shard], os.O_RDONLY))
        return os.pread(fd, size, offset)

    def read(self, index: int) -> tuple[str, Image.Image, str]:
        record_id, shard = self.keys[index], int(self.shard_ids[index])
        image_offset, image_size, kind, caption_offset, caption_size = map(int, self.table[index])
        if image_offset < 0:
            raise BadRecord("missing_image", record_id, "no image file in the shard")
        if kind == NO_CAPTION:
            raise BadRecord("missing_caption", record_id, "neither a .json nor a .txt caption")
        raw = self._read(shard, caption_offset, caption_size)
        try:
            text = raw.decode("utf-8")
            caption = json.loads(text)["caption"] if kind == JSON_CAPTION else text
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            raise BadRecord("missing_caption", record_id, "caption unreadable or without "
                            "a 'caption' field") from None
        if not isinstance(caption, str):
            raise BadRecord("missing_caption", record_id, f"caption is {type(caption).__name__}")
        try:
            with Image.open(io.BytesIO(self._read(shard, image_offset, image_size))) as image:
                image.load()
                image = image.convert("RGB")
        except Exception as e:  # noqa: BLE001 -- PIL raises many types for a corrupt file.
            raise BadRecord("bad_image", record_id, f"{type(e).__name__}: {e}") from None
        return record_id, image, caption
