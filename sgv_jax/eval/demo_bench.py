"""The demo's held-out questions as a GQA-format benchmark, so `make demo` scores them through
the same `run` and `score` as a real benchmark.

GQA fits the demo: one-word answers scored by exact match after `rstrip('.').lower()`
(scripts/convert_gqa_for_eval.py), here with the question kind (color / shape / position) as
GQA's semantic type so the score shows accuracy per kind. The question text is the demo's own
(no "Answer the question using a single word or phrase." suffix: the demo model was not trained
with it); the prompt around it is LLaVA's model_vqa_loader.py prompt.
"""

from __future__ import annotations

import json
import os
import shutil

from sgv_jax.eval.answers import read_answers
from sgv_jax.eval.benchmarks import get_benchmark


def question_id(index: int) -> str:
    """The `question_id` of the demo's `index`-th held-out question (its line in
    eval_answers.jsonl)."""
    return f"demo{index:05d}"


def answers_in_order(answers_path: str, count: int) -> list[str]:
    """The texts of a `run` answers file, in the order of eval_answers.jsonl."""
    by_id = {a["question_id"]: a["text"] for a in read_answers(answers_path)}
    return [by_id[question_id(i)] for i in range(count)]


def write_demo_benchmark(answers_file: str, image_folder: str, out_dir: str) -> str:
    """Writes `out_dir` in LLaVA's gqa/ layout from the demo's `eval_answers.jsonl` (records
    `{id, image, kind, question, answer}`, images relative to `image_folder`). Returns out_dir,
    the `--data` of `run --benchmark gqa` / `score --benchmark gqa`."""
    bench = get_benchmark("gqa")
    with open(answers_file, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    questions, lines = {}, []
    for i, record in enumerate(records):
        qid = question_id(i)
        image = os.path.basename(record["image"])
        target = os.path.join(out_dir, bench.images, image)
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(image_folder, record["image"]), target)
        lines.append({"question_id": qid, "image": image, "text": record["question"],
                      "category": record["kind"]})
        questions[qid] = {"question": record["question"], "answer": record["answer"],
                          "imageId": record["id"], "isBalanced": True,
                          "types": {"structural": "query", "semantic": record["kind"],
                                    "detailed": record["kind"]}}
    with open(os.path.join(out_dir, bench.questions), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    with open(os.path.join(out_dir, bench.score_files[0]), "w", encoding="utf-8") as f:
        json.dump(questions, f)
    return out_dir


def evaluate_demo(checkpoint: str, data_dir: str, out_dir: str, *, batch_size: int = 50,
                  max_new_tokens: int | None = None) -> dict:
    """The demo's last step: its held-out questions (`data_dir/eval_answers.jsonl`) written as
    a GQA benchmark under `out_dir/gqa/`, answered by `checkpoint` (an sgv export) through
    `run`, scored through `score`. Returns the score summary (headline = accuracy in %)."""
    from sgv_jax.eval.runner import run_benchmark
    from sgv_jax.eval.scoring import score_benchmark
    from sgv_jax.generation.generator import Generator, local_mesh

    bench_dir = write_demo_benchmark(os.path.join(data_dir, "eval_answers.jsonl"), data_dir,
                                     os.path.join(out_dir, "gqa"))
    answers = os.path.join(out_dir, "gqa_answers.jsonl")
    generator = Generator.from_checkpoint(checkpoint, mesh=local_mesh())
    run_benchmark(generator, get_benchmark("gqa"), bench_dir, answers, model_id="demo",
                  batch_size=batch_size, max_new_tokens=max_new_tokens, shard=(0, 1))
    return score_benchmark("gqa", bench_dir, answers)
