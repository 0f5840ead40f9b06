"""The answers file: LLaVA's format, written resumably by several hosts, merged at the end.

While running, host i of n appends to `ANSWERS.part{i}-of-{n}` (one writer per file), one JSON
line per answer, flushed and fsynced per batch, so a kill -9 loses at most the batch in flight;
a line cut by the kill is dropped on restart. `merge` then writes ANSWERS in question-file
order (the order LLaVA's chunk merge produces, which MME's pairing and POPE's label zip rely
on), one line per key, atomically, and removes the parts. Every run counts the keys already in
ANSWERS and in every part as done, so re-running skips them and never writes a key twice.
"""

from __future__ import annotations

import glob
import json
import os
import uuid
from collections.abc import Iterable

from sgv_jax.eval.questions import Item, answer_key


def part_path(out: str, index: int, count: int) -> str:
    return f"{out}.part{index}-of-{count}"


def part_files(out: str) -> list[str]:
    return sorted(glob.glob(glob.escape(out) + ".part*-of-*"))


def read_answers(path: str) -> list[dict]:
    """Complete lines of an answers file; a malformed complete line is an error naming it."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n") or not line.strip():
                continue
            try:
                record = json.loads(line)
                record["question_id"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: not an answer line with a question_id "
                                 f"({e}); fix or remove it") from None
            records.append(record)
    return records


def existing_records(out: str) -> list[dict]:
    return [r for path in [out, *part_files(out)] if os.path.isfile(path)
            for r in read_answers(path)]


def done_keys(out: str) -> set[str]:
    return {answer_key(r) for r in existing_records(out)}


def answer_id(model_id: str, key: str) -> str:
    """LLaVA writes a random `shortuuid`; a name-based one keeps reruns, batch sizes and device
    counts byte-identical."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"sgv-eval/{model_id}/{key}").hex[:22]


def answer_record(item: Item, text: str, model_id: str) -> dict:
    """One line in LLaVA's answer format (model_vqa_loader.py; MMBench adds its round fields
    between `prompt` and `text` as model_vqa_mmbench.py does)."""
    extra = dict(item.extra)
    record = {"question_id": item.question_id}
    if "round_id" in extra:
        record["round_id"] = extra["round_id"]
    record["prompt"] = item.recorded_prompt
    record["text"] = text
    for name in ("options", "option_char"):
        if name in extra:
            record[name] = extra[name]
    record.update(answer_id=answer_id(model_id, item.key), model_id=model_id, metadata={})
    return record


def append(path: str, records: Iterable[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def merge(out: str, items: list[Item]) -> int:
    """ANSWERS in question order (lines for keys not in `items` follow). The parts are removed
    only when every item is answered: another host may still be appending to its part.
    Returns the number of lines written."""
    parts = part_files(out)
    by_key: dict[str, dict] = {}
    for record in existing_records(out):
        by_key.setdefault(answer_key(record), record)
    wanted = list(dict.fromkeys(it.key for it in items))
    found = [by_key.pop(key) for key in wanted if key in by_key]
    ordered = found + list(by_key.values())
    tmp = f"{out}.tmp{os.getpid()}"  # several hosts may merge at once
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    if len(found) == len(wanted):
        for path in parts:
            if os.path.exists(path):
                os.remove(path)
    return len(ordered)
