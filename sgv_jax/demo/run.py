"""Runs the demo end to end: pretrain → finetune (initialised from pretrain's sgv export) →
held-out accuracy, scored through the benchmark harness (`sgv_jax/eval/`, as `launch/eval.py
run` / `score` on a GQA-format folder), and a report. Configs are the `demo` variants of the real stage configs; both
stages read one dataset, generated once into WORKDIR/demo_data."""

from __future__ import annotations

import json
import os
import time

from sgv_jax.demo import data, report
from sgv_jax.eval.demo_bench import answers_in_order, evaluate_demo
from sgv_jax.train.config_file import load_config_file
from sgv_jax.train.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stage_config(name: str, demo_dir: str, **overrides):
    config = load_config_file(os.path.join(REPO, "configs", f"{name}.py:demo"))
    config.data.demo_dir = demo_dir
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def run_demo(workdir: str) -> dict:
    """Both stages and the report; returns the summary, or {'stopped_by': signal} when SIGTERM
    or Ctrl-C stopped a stage (re-running resumes it)."""
    t0 = time.time()
    demo_dir = os.path.join(workdir, "demo_data")
    pretrain_dir = os.path.join(workdir, "pretrain")
    finetune_dir = os.path.join(workdir, "finetune")
    print("== stage 1: captions (plain template; ViT second half + projector + LLM) ==")
    result = train(stage_config("pretrain", demo_dir), pretrain_dir)
    if result.get("stopped_by"):
        return result
    print(f"== stage 2: questions (v1 template; ViT frozen), from {pretrain_dir}/sgv ==")
    result = train(stage_config("finetune", demo_dir, init_from=os.path.join(pretrain_dir, "sgv")),
                   finetune_dir)
    if result.get("stopped_by"):
        return result

    print("== evaluation: held-out questions through launch/eval.py's harness (GQA format) ==")
    paths = data.generate(demo_dir)
    report_dir = os.path.join(workdir, "report")
    eval_dir = os.path.join(report_dir, "eval")
    scores = evaluate_demo(os.path.join(finetune_dir, "sgv"), demo_dir, eval_dir,
                           max_new_tokens=report.MAX_ANSWER_TOKENS)
    questions = report.read_questions(paths["answers"])
    accuracy, results = report.score(
        questions, answers_in_order(scores["answers"], len(questions)))
    report.plot_losses({"stage 1 (pretrain)": pretrain_dir, "stage 2 (finetune)": finetune_dir},
                       os.path.join(report_dir, "losses.png"))
    report.answer_grid(results, paths["image_folder"], os.path.join(report_dir, "answers.png"))
    report.write_score_table(scores, os.path.join(report_dir, "scores.md"))
    summary = {**accuracy, "questions": len(results), "seconds": round(time.time() - t0, 1),
               "benchmark_score": scores["headline"]}
    with open(os.path.join(report_dir, "results.json"), "w") as f:
        json.dump({"summary": summary, "scores": scores, "answers": results}, f, indent=1)
    for key, value in sorted(accuracy.items()):
        print(f"  {key}: {value:.1%}")
    print(report.score_line(scores))
    return summary
