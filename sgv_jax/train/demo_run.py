"""Runs the demo end to end: pretrain → finetune (initialised from pretrain's sgv export) →
held-out accuracy and a report. Configs are the `demo` variants of the real stage configs."""

from __future__ import annotations

import json
import os
import time

import jax

from sgv_jax.checkpoint_sgv import load_sgv
from sgv_jax.train import demo_eval
from sgv_jax.train.config_file import load_config_file
from sgv_jax.train.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stage_config(name: str, **overrides):
    config = load_config_file(os.path.join(REPO, "configs", f"{name}.py:demo"))
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def run_demo(workdir: str) -> dict:
    t0 = time.time()
    pretrain_dir = os.path.join(workdir, "pretrain")
    finetune_dir = os.path.join(workdir, "finetune")
    print("== stage 1: captions (plain template; ViT second half + projector + LLM) ==")
    train(stage_config("pretrain"), pretrain_dir)
    print(f"== stage 2: questions (v1 template; ViT frozen), from {pretrain_dir}/sgv ==")
    train(stage_config("finetune", init_from=os.path.join(pretrain_dir, "sgv")), finetune_dir)

    print("== evaluation: greedy answers to held-out questions ==")
    cfg, params = load_sgv(os.path.join(finetune_dir, "sgv"))
    data_dir = os.path.join(os.path.dirname(os.path.abspath(pretrain_dir)), "demo_data")
    with jax.default_matmul_precision("highest"):
        accuracy, results = demo_eval.evaluate(
            params, cfg, os.path.join(data_dir, "eval_answers.jsonl"), data_dir,
            os.path.join(finetune_dir, "sgv", "tokenizer"))
    report = os.path.join(workdir, "report")
    os.makedirs(report, exist_ok=True)
    demo_eval.plot_losses({"pretrain": pretrain_dir, "finetune": finetune_dir},
                          os.path.join(report, "losses.png"))
    demo_eval.answer_grid(results, data_dir, os.path.join(report, "answers.png"))
    summary = {**accuracy, "questions": len(results), "seconds": round(time.time() - t0, 1)}
    with open(os.path.join(report, "results.json"), "w") as f:
        json.dump({"summary": summary, "answers": results}, f, indent=1)
    for key, value in sorted(accuracy.items()):
        print(f"  {key}: {value:.1%}")
    return summary
