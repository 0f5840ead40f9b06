"""A benchmark's question file → the list of generation items, in file order.

One `Item` is one generation: a question (or, for MMBench, one rotation round of it). `key`
identifies it in the answers file across runs and hosts.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os

from PIL import Image

from sgv_jax.eval import prompts
from sgv_jax.eval.benchmarks import Benchmark, question_file


@dataclasses.dataclass(frozen=True)
class Item:
    question_id: object  # as the question file has it (int or str)
    message: str  # the user turn, `<image>` first when there is an image
    recorded_prompt: str  # the answers file's `prompt`
    image: str | None  # a file path, "base64:<data>" (MMBench), or None (text-only)
    extra: tuple = ()  # further answer fields, (name, value) pairs (MMBench rounds)

    @property
    def key(self) -> str:
        return answer_key({"question_id": self.question_id, **dict(self.extra)})


def answer_key(record: dict) -> str:
    """Identity of an answer line: question id (type kept) and MMBench round."""
    return json.dumps([record["question_id"], record.get("round_id")])


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_tsv(path: str):
    """MMBench's TSV the way model_vqa_mmbench.py reads it (`pd.read_table`: empty cells and
    'NA'/'None'/'nan'... become NaN)."""
    import pandas as pd

    return pd.read_table(path)


def load_image(image: str) -> Image.Image:
    """`Image.open(path).convert('RGB')` / `load_image_from_base64` (then RGB: our
    preprocessing pads in RGB; LLaVA pads the decoded mode, which differs only for palette
    and grey images)."""
    if image.startswith("base64:"):
        with Image.open(io.BytesIO(base64.b64decode(image[len("base64:"):]))) as img:
            return img.convert("RGB")
    with Image.open(image) as img:
        return img.convert("RGB")


def load_items(bench: Benchmark, data_dir: str, *, questions: str | None = None,
               limit: int | None = None, all_rounds: bool = True) -> list[Item]:
    """Every generation the benchmark asks for. `limit` keeps the first K questions (MMBench:
    rows, each with all its rounds)."""
    path = question_file(data_dir, bench, questions)
    images = os.path.join(data_dir, bench.images)
    if bench.style == "loader":
        lines = read_jsonl(path)[:limit]
        return [Item(line["question_id"], *prompts.loader_message(line),
                     os.path.join(images, line["image"])) for line in lines]
    if bench.style == "science":
        with open(path, encoding="utf-8") as f:
            lines = json.load(f)[:limit]
        return [Item(line["id"], *prompts.science_message(line),
                     os.path.join(images, line["image"]) if "image" in line else None)
                for line in lines]
    if bench.style == "qbench":
        with open(path, encoding="utf-8") as f:
            lines = json.load(f)[:limit]
        # model_vqa_qbench.py concatenates folder + img_path; the question id is the position.
        return [Item(i, *prompts.qbench_message(line), os.path.join(images, line["img_path"]))
                for i, line in enumerate(lines)]
    if bench.style == "mmbench":
        return mmbench_items(read_tsv(path), bench.lang, limit, all_rounds)
    raise ValueError(f"unknown prompt style {bench.style!r}")


def mmbench_items(table, lang: str, limit: int | None, all_rounds: bool) -> list[Item]:
    items = []
    for _, row in table.head(limit).iterrows() if limit else table.iterrows():
        row = row.to_dict()
        options = prompts.mmbench_options(row)
        letters = list(prompts.MMBENCH_LETTERS[:len(options)])
        rounds = prompts.rotations(options) if all_rounds else [options]
        for round_id, shown in enumerate(rounds):
            message, recorded = prompts.mmbench_message(row, shown, lang)
            extra = (("round_id", round_id), ("options", [str(o) for o in shown]),
                     ("option_char", letters[round_id:] + letters[:round_id]))
            items.append(Item(int(row["index"]), message, recorded, "base64:" + row["image"],
                              extra))
    return items
