"""Workdirs may be local folders or object-store URLs (gs://…, as TPU pods use). Orbax writes
checkpoints to either; small files go through etils.epath; what needs a local folder (append-only
logs, TensorBoard, the sgv export's atomic rename) is written locally and mirrored."""

from __future__ import annotations

import os
import tempfile

from etils import epath


def is_remote(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str) -> epath.Path:
    """Absolute local path, or the URL as is."""
    return epath.Path(path if is_remote(path) else os.path.abspath(path))


def local_mirror(workdir: str, name: str) -> str:
    """Where a remote workdir's local-only files live on this host."""
    if not is_remote(workdir):
        return os.path.join(workdir, name)
    tail = str(workdir).split("://", 1)[1].strip("/").replace("/", "_")
    return os.path.join(tempfile.gettempdir(), "sgv-local", tail, name)
