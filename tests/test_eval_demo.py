"""The demo's held-out questions as a GQA-format benchmark: the files `run` and `score` read,
LLaVA's loader prompt around the demo question, and exact-match scoring per question kind."""

import json
import os

from sgv_jax.demo import report
from sgv_jax.eval import prompts, questions
from sgv_jax.eval.benchmarks import get_benchmark
from sgv_jax.eval.demo_bench import answers_in_order, write_demo_benchmark
from sgv_jax.eval.scoring import score_benchmark
from tests.test_data_helpers import write_image

KINDS = {"color": ("What color is the shape?", "red"),
         "shape": ("What shape is in the image?", "circle"),
         "position": ("Where is the shape?", "top left")}


def demo_records(folder: str) -> str:
    """eval_answers.jsonl as sgv_jax/data/demo.py writes it, with its images."""
    records = []
    for i in range(2):
        rel = f"images/eval/{i:05d}.png"
        write_image(os.path.join(folder, rel), 32, 32, seed=i)
        for kind, (question, answer) in KINDS.items():
            records.append({"id": f"eval-{i:05d}", "image": rel, "kind": kind,
                            "question": question, "answer": answer})
    path = os.path.join(folder, "eval_answers.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def test_demo_benchmark_runs_through_the_gqa_loader_and_scores(tmp_path):
    records_file = demo_records(str(tmp_path / "demo_data"))
    data = write_demo_benchmark(records_file, str(tmp_path / "demo_data"), str(tmp_path / "gqa"))
    items = questions.load_items(get_benchmark("gqa"), data)
    assert len(items) == 6 and all(os.path.isfile(it.image) for it in items)
    assert prompts.conversation_prompt(items[0].message).endswith(
        "USER: <image>\nWhat color is the shape? ASSISTANT:")
    # Answers as the model writes them: capitalised, with a period; one wrong.
    lines = [{"question_id": it.question_id, "prompt": it.recorded_prompt,
              "text": KINDS[kind][1].capitalize() + "."}
             for it, kind in zip(items, list(KINDS) * 2)]
    lines[-1]["text"] = "bottom right"
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(line) + "\n" for line in lines))
    got = score_benchmark("gqa", data, str(answers))
    assert got["headline"] == 500 / 6
    assert got["metrics"]["per_semantic_type"] == {"color": 100.0, "shape": 100.0,
                                                   "position": 50.0}


def test_demo_report_reads_the_harness_answers_in_question_order(tmp_path):
    records_file = demo_records(str(tmp_path / "demo_data"))
    data = write_demo_benchmark(records_file, str(tmp_path / "demo_data"), str(tmp_path / "gqa"))
    items = questions.load_items(get_benchmark("gqa"), data)
    truths = [r["answer"] for r in report.read_questions(records_file)]
    texts = [t.upper() + "." for t in truths]
    texts[1] = "square"
    # Written out of order, as a resumed or sharded run leaves them before the merge.
    lines = [{"question_id": it.question_id, "prompt": it.recorded_prompt, "text": text}
             for it, text in reversed(list(zip(items, texts)))]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert answers_in_order(str(answers), len(truths)) == texts
    accuracy, _ = report.score(report.read_questions(records_file), texts)
    scores = score_benchmark("gqa", data, str(answers))
    assert accuracy["accuracy"] == 5 / 6 and scores["headline"] == 500 / 6
    table = tmp_path / "scores.md"
    report.write_score_table(scores, str(table))
    assert "| all | 83.3 |" in table.read_text() and "| shape | 50.0 |" in table.read_text()
