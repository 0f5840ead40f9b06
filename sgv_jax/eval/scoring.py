"""`score`: an answers file + the benchmark folder → one JSON object of metrics.

The object is also written beside the answers as `<answers>.score.json` (what `report` reads),
and submission files go to `<answers>_upload/`.
"""

from __future__ import annotations

import json
import os

from sgv_jax.eval import score_choice, score_judged, score_short, score_yesno
from sgv_jax.eval.answers import read_answers
from sgv_jax.eval.benchmarks import get_benchmark

SCORERS = {
    "vqav2": score_short.score_vqav2,
    "gqa": score_short.score_gqa,
    "vizwiz": score_short.score_vizwiz,
    "textvqa": score_short.score_textvqa,
    "scienceqa": score_choice.score_scienceqa,
    "mmbench": score_choice.score_mmbench,
    "mmbench_cn": score_choice.score_mmbench,
    "seed": score_choice.score_seed,
    "qbench": score_choice.score_qbench,
    "pope": score_yesno.score_pope,
    "mme": score_yesno.score_mme,
    "mmvet": score_judged.score_mmvet,
    "llavabench": score_judged.score_llavabench,
}
JUDGED = ("mmvet", "llavabench")
# What the report shows per benchmark: the headline metric and its unit.
HEADLINES = {
    "vqav2": "accuracy (val annotations; test-dev: EvalAI)", "gqa": "accuracy",
    "vizwiz": "accuracy (val annotations; test: EvalAI)", "textvqa": "accuracy",
    "scienceqa": "IMG accuracy", "pope": "F1 averaged over the 3 categories",
    "mme": "perception score", "mmbench": "CircularEval accuracy (dev)",
    "mmbench_cn": "CircularEval accuracy (dev)", "seed": "image accuracy",
    "mmvet": "GPT-judged total", "llavabench": "GPT-judged relative score",
    "qbench": "accuracy (dev)",
}


def score_path(answers_path: str) -> str:
    return os.path.splitext(answers_path)[0] + ".score.json"


def score_benchmark(name: str, data_dir: str, answers_path: str, *,
                    judge: score_judged.Judge | None = None) -> dict:
    bench = get_benchmark(name)
    if not os.path.isfile(answers_path):
        raise FileNotFoundError(f"{answers_path}: no answers file; write it with "
                                f"`launch/eval.py run --benchmark {name} ... --out {answers_path}`")
    answers = read_answers(answers_path)
    out_dir = os.path.splitext(answers_path)[0] + "_upload"
    kwargs = {"judge": judge} if name in JUDGED else {}
    result = SCORERS[name](bench, data_dir, answers, out_dir, **kwargs)
    summary = {"benchmark": name, "answers": os.path.abspath(answers_path),
               "headline": result["headline"], "headline_name": HEADLINES[name],
               "metrics": result["metrics"], "files": result["files"]}
    with open(score_path(answers_path), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, default=_jsonable)
    return summary


def _jsonable(value):
    """numpy scalars (pandas rows, sklearn-free counts) as plain numbers."""
    return value.item() if hasattr(value, "item") else str(value)
