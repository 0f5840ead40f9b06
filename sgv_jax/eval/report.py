"""`report`: every `*.score.json` of a folder in one table beside the published numbers, as
Markdown and a matplotlib bar chart (one panel per benchmark: scales differ, MME is ~1500).

Published numbers, with their sources:
- ShareGPT4V-7B: the ShareGPT4V README "Model Zoo" table (InternLM-XComposer
  projects/ShareGPT4V/README.md; the paper's, arXiv 2311.12793). It lists no GQA, TextVQA or
  POPE.
- LLaVA-1.5-7B / 13B: LLaVA docs/MODEL_ZOO.md "LLaVA-v1.5" table (full_ft-1e rows). Its SEED
  column is SEED-Bench over image *and* video questions; its MME is perception only; it has no
  Q-Bench.
"""

from __future__ import annotations

import glob
import json
import os

PAPERS = ("ShareGPT4V-7B", "LLaVA-1.5-7B", "LLaVA-1.5-13B")
PUBLISHED = {
    "vqav2": (80.6, 78.5, 80.0), "gqa": (None, 62.0, 63.3), "vizwiz": (57.2, 50.0, 53.6),
    "scienceqa": (68.4, 66.8, 71.6), "textvqa": (None, 58.2, 61.3), "pope": (None, 85.9, 85.9),
    "mme": (1567.4, 1510.7, 1531.3), "mme_cognition": (376.4, None, None),
    "mmbench": (68.8, 64.3, 67.7), "mmbench_cn": (62.2, 58.3, 63.6),
    "seed": (69.7, 58.6, 61.6), "mmvet": (37.6, 31.1, 36.1), "llavabench": (72.6, 65.4, 72.5),
    "qbench": (63.4, None, None),
}
NOTES = {"seed": "LLaVA-1.5 numbers: image+video SEED", "mme": "perception",
         "mme_cognition": "cognition", "vqav2": "papers: test-dev (EvalAI)",
         "vizwiz": "papers: test (EvalAI)"}
ORDER = ("vqav2", "gqa", "vizwiz", "scienceqa", "textvqa", "pope", "mme", "mme_cognition",
         "mmbench", "mmbench_cn", "seed", "mmvet", "llavabench", "qbench")


def collect(answers_dir: str) -> dict[str, dict]:
    """benchmark -> its score summary (the newest file wins when a benchmark repeats)."""
    found = {}
    paths = sorted(glob.glob(os.path.join(answers_dir, "**", "*.score.json"), recursive=True),
                   key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"{answers_dir}: no *.score.json; run `launch/eval.py score` on "
                                "each answers file first")
    for path in paths:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
        found[summary["benchmark"]] = summary
        if summary["benchmark"] == "mme":
            found["mme_cognition"] = {"benchmark": "mme_cognition",
                                      "headline": summary["metrics"]["cognition"],
                                      "headline_name": "cognition score"}
    return found


def rows(found: dict[str, dict]) -> list[tuple[str, float | None, tuple]]:
    return [(name, found.get(name, {}).get("headline"), PUBLISHED[name]) for name in ORDER
            if name in found]


def markdown(table: list) -> str:
    fmt = lambda v: "—" if v is None else f"{v:.1f}"
    lines = ["| benchmark | ours | " + " | ".join(PAPERS) + " | note |",
             "|---|---:|" + "---:|" * len(PAPERS) + "---|"]
    for name, ours, published in table:
        lines.append(f"| {name} | {fmt(ours)} | " + " | ".join(map(fmt, published)) +
                     f" | {NOTES.get(name, '')} |")
    lines.append("")
    lines.append("Published: ShareGPT4V README Model Zoo (ShareGPT4V-7B); LLaVA "
                 "docs/MODEL_ZOO.md (LLaVA-1.5). '—': not scored here / not published.")
    return "\n".join(lines) + "\n"


def bar_chart(table: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(table))
    nrows = -(-len(table) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    labels = ("ours", *PAPERS)
    colors = ("tab:red", "tab:blue", "tab:gray", "tab:green")
    for ax, (name, ours, published) in zip(axes.flat, table):
        values = [ours, *published]
        ax.bar(range(len(labels)), [v or 0 for v in values], color=colors)
        for x, v in enumerate(values):
            ax.text(x, v or 0, "—" if v is None else f"{v:.1f}", ha="center", va="bottom",
                    fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(labels)), ["ours", "S4V-7B", "L1.5-7B", "L1.5-13B"],
                      fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(table):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(answers_dir: str, out_dir: str | None = None) -> dict[str, str]:
    table = rows(collect(answers_dir))
    out_dir = out_dir or answers_dir
    os.makedirs(out_dir, exist_ok=True)
    paths = {"markdown": os.path.join(out_dir, "report.md"),
             "png": os.path.join(out_dir, "report.png")}
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown(table))
    bar_chart(table, paths["png"])
    return paths
