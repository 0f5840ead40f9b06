"""What `launch/data.py inspect` and `check` print: per-record ids/labels, whole-file counts.

Both go through the same per-record functions as training (encode.encode_record,
pipeline.load_record_image), so what they show is what the model is fed.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
from collections.abc import Iterator
from typing import Any

from sgv_jax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from sgv_jax.data import encode, pipeline, templates, tokenize
from sgv_jax.data.records import RecordFile
from sgv_jax.data.validate import BadRecord, validate_record


def render(ids: list[int], labels: list[int], tokenizer: tokenize.SentencePieceTokenizer) -> str:
    """The prompt as text, `<image>` for each image, trained spans wrapped in `[[` `]]`."""
    out, run, trained = [], [], False

    def flush():
        if run:
            text = tokenizer.decode(run)
            out.append(f"[[{text}]]" if trained else text)
            run.clear()

    for token, label in zip(ids, labels, strict=True):
        if token == IMAGE_TOKEN_INDEX:
            flush()
            out.append("<image>")
            continue
        if (label != IGNORE_INDEX) != trained:
            flush()
            trained = label != IGNORE_INDEX
        run.append(token)
    flush()
    return "".join(out)


def inspect_records(data_file: str, tokenizer: tokenize.SentencePieceTokenizer, template: str,
                    image_folder: str | None = None, limit: int | None = None,
                    num_image_tokens: int = 576) -> Iterator[dict[str, Any]]:
    """One dict per record: id, input_ids and labels in the reference convention (one
    IMAGE_TOKEN_INDEX per image), the trained rendering; or id, skip reason and detail."""
    source = RecordFile(data_file)
    tmpl = templates.get_template(template)
    for index in range(len(source) if limit is None else min(limit, len(source))):
        try:
            out = encode.encode_record(source[index], tokenizer, tmpl,
                                       num_image_tokens=num_image_tokens, index=index)
            if image_folder is not None and out["image"] is not None:
                pipeline.load_record_image(image_folder, out["image"], out["id"])
        except BadRecord as e:
            yield {"id": e.record_id, "skip": e.reason, "detail": e.detail}
            continue
        yield {"id": out["id"], "image": out["image"], "input_ids": out["input_ids"],
               "labels": out["labels"], "trained": render(out["input_ids"], out["labels"],
                                                          tokenizer)}


class _Checker:
    """Picklable per-record check for a process pool."""

    def __init__(self, data_file, image_folder, tokenizer, template):
        self.source = RecordFile(data_file)
        self.image_folder = image_folder
        self.tokenizer = tokenizer
        self.template = templates.get_template(template)

    def __call__(self, index: int) -> tuple[str, str]:
        """(record id, "ok" or the skip reason)."""
        try:
            record = self.source[index]
            if self.tokenizer is None:
                conversation = validate_record(record, self.template, index)
                rid, image = conversation.record_id, conversation.image
            else:
                out = encode.encode_record(record, self.tokenizer, self.template,
                                           num_image_tokens=1, index=index)
                rid, image = out["id"], out["image"]
            if image is not None:
                pipeline.load_record_image(self.image_folder, image, rid)
            return rid, "ok"
        except BadRecord as e:
            return e.record_id, e.reason


def check_file(data_file: str, image_folder: str, template: str = "v1",
               tokenizer: tokenize.Tokenizer | None = None, workers: int = 0,
               examples: int = 5, progress: bool = False) -> dict[str, Any]:
    """Validates every record (and decodes every image): counts per reason plus the first
    `examples` ids of each. With a tokenizer, the masking arithmetic is checked too.
    `progress` shows a bar on stderr (records checked, skips so far)."""
    from tqdm import tqdm

    checker = _Checker(data_file, image_folder, tokenizer, template)
    indices = range(len(checker.source))
    counts: collections.Counter = collections.Counter()
    first_ids: dict[str, list[str]] = collections.defaultdict(list)
    with contextlib.ExitStack() as stack:
        if workers > 0:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
            results = pool.imap(checker, indices, chunksize=256)
        else:
            results = map(checker, indices)
        bar = stack.enter_context(tqdm(results, total=len(indices), unit="record", desc="check",
                                       disable=not progress, mininterval=1.0))
        for rid, reason in bar:
            counts[reason] += 1
            if reason != "ok":
                bar.set_postfix(skipped=sum(counts.values()) - counts["ok"], refresh=False)
                if len(first_ids[reason]) < examples:
                    first_ids[reason].append(rid)
    return {"file": data_file, "records": len(indices), "ok": counts.pop("ok", 0),
            "skipped": dict(counts), "first_ids": dict(first_ids)}
