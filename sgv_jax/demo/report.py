"""The demo's report: accuracy per question kind of the harness's answers (`sgv_jax/eval/`,
greedy through the batched generator), the harness's score table, loss curves and a grid of
images with the model's answers (matplotlib PNGs)."""

from __future__ import annotations

import json
import os
from collections import defaultdict

from sgv_jax.data.images import load_image
from sgv_jax.train.metrics import read_metrics

MAX_ANSWER_TOKENS = 8  # answers are one to three words (GQA's own budget is 128)


def read_questions(answers_file: str) -> list[dict]:
    with open(answers_file) as f:
        return [json.loads(line) for line in f]


def score(questions: list[dict], answers: list[str]) -> tuple[dict[str, float], list[dict]]:
    """Accuracy overall and per kind (an answer is right when it equals the truth, up to case
    and a final full stop), and one result row per question."""
    correct, total = defaultdict(int), defaultdict(int)
    results = []
    for q, text in zip(questions, answers, strict=True):
        ok = text.lower().rstrip(".") == q["answer"]
        correct[q["kind"]] += ok
        total[q["kind"]] += 1
        results.append({**q, "prediction": text, "correct": bool(ok)})
    accuracy = {f"accuracy/{k}": correct[k] / total[k] for k in total}
    accuracy["accuracy"] = sum(correct.values()) / max(sum(total.values()), 1)
    return accuracy, results


def score_line(scores: dict) -> str:
    """One line: the harness's headline score of the demo benchmark and where its files are."""
    return (f"  {scores['benchmark']} (launch/eval.py score): {scores['headline_name']} "
            f"{scores['headline']:.1f}; answers {scores['answers']}")


def write_score_table(scores: dict, path: str) -> None:
    """The harness's score as a Markdown table: overall, then one row per question kind
    (GQA's semantic type), in %."""
    metrics = scores["metrics"]
    rows = [("all", metrics["accuracy"])] + sorted(metrics["per_semantic_type"].items())
    title = (f"Demo held-out questions as a `{scores['benchmark']}` benchmark, scored by "
             f"`launch/eval.py score` ({metrics['questions']} questions; chance 25%).")
    lines = [title, "", "| question kind | accuracy (%) |", "|---|---:|"]
    lines += [f"| {kind} | {value:.1f} |" for kind, value in rows]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def plot_losses(workdirs: dict[str, str], path: str) -> None:
    """One panel per stage: training loss as a line, held-out loss as points, log-scale loss."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(workdirs), figsize=(5 * len(workdirs), 3.6), squeeze=False)
    for ax, (stage, workdir) in zip(axes[0], workdirs.items()):
        rows = read_metrics(workdir)
        train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        held_out = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
        if train:
            ax.plot(*zip(*train), lw=1.2, label="training loss")
        if held_out:
            ax.plot(*zip(*held_out), "o", ms=5, label="held-out loss")
        ax.set_yscale("log")
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(True, which="both", alpha=0.3)
        if train or held_out:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def answer_grid(results: list[dict], image_folder: str, path: str, n: int = 12) -> None:
    """Held-out images with the question kind, the model's answer and the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = results[:n]
    cols = 4
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, shown):
        ax.imshow(load_image(os.path.join(image_folder, r["image"])), interpolation="nearest")
        ax.set_title(f"{r['kind']}: {r['prediction']}\ntruth: {r['answer']}", fontsize=9,
                     color="green" if r["correct"] else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
