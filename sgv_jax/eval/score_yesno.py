"""Yes/no benchmarks: POPE (LLaVA `llava/eval/eval_pope.py`) and MME (LLaVA eval.zip's
`convert_answer_to_mme.py`, then MME's `eval_tool/calculation.py`)."""

from __future__ import annotations

import io
import os

from sgv_jax.eval.benchmarks import Benchmark, require
from sgv_jax.eval.questions import read_jsonl

POPE_CATEGORIES = ("adversarial", "popular", "random")


def pope_is_no(text: str) -> bool:
    """eval_pope.py: first sentence, commas dropped; 'No', 'not' or 'no' as a word means no."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "No" in words or "not" in words or "no" in words


def pope_metrics(texts: list[str], labels: list[str]) -> dict:
    """eval_pope.py `eval_pope` for one category: answers zipped with the label file's lines in
    order. Ratios are fractions, as printed there; an empty denominator gives 0."""
    preds = [0 if pope_is_no(t) else 1 for t in texts]
    truth = [0 if label == "no" else 1 for label in labels]
    pairs = list(zip(preds, truth))
    tp = sum(p == 1 and t == 1 for p, t in pairs)
    fp = sum(p == 1 and t == 0 for p, t in pairs)
    tn = sum(p == 0 and t == 0 for p, t in pairs)
    fn = sum(p == 0 and t == 1 for p, t in pairs)
    div = lambda a, b: a / b if b else 0.0
    precision, recall = div(tp, tp + fp), div(tp, tp + fn)
    return {"accuracy": div(tp + tn, tp + tn + fp + fn), "precision": precision,
            "recall": recall, "f1": div(2 * precision * recall, precision + recall),
            "yes_ratio": div(preds.count(1), len(preds)), "TP": tp, "FP": fp, "TN": tn,
            "FN": fn, "samples": len(texts)}


def score_pope(bench: Benchmark, data_dir: str, answers: list[dict], out_dir: str) -> dict:
    """Per category (each `coco/coco_pope_<category>.json`): the answers of that category in
    answers-file order against the label file. Headline: the F1 averaged over the three
    categories, in percent, as the LLaVA-1.5 paper reports POPE."""
    questions = {q["question_id"]: q for q in read_jsonl(require(data_dir, bench.score_files[0],
                                                                 bench))}
    per_category = {}
    for category in POPE_CATEGORIES:
        labels_path = require(data_dir, f"coco/coco_pope_{category}.json", bench)
        labels = [r["label"] for r in read_jsonl(labels_path)]
        texts = [a["text"] for a in answers if questions[a["question_id"]]["category"] == category]
        if texts:
            per_category[category] = pope_metrics(texts, labels)
    f1 = [m["f1"] for m in per_category.values()]
    metrics = {"per_category": per_category,
               "f1_mean": 100 * sum(f1) / len(f1) if f1 else 0.0,
               "accuracy_mean": 100 * sum(m["accuracy"] for m in per_category.values())
               / max(len(per_category), 1)}
    return {"metrics": metrics, "headline": metrics["f1_mean"], "files": {}}


MME_TASKS = {
    "perception": ("existence", "count", "position", "color", "posters", "celebrity", "scene",
                   "landmark", "artwork", "OCR"),
    "cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation",
                  "code_reasoning"),
}
SHORT_ANSWER = "Answer the question using a single word or phrase."
YES_OR_NO = " Please answer yes or no."


def mme_ground_truth(root: str) -> dict:
    """convert_answer_to_mme.py `get_gt`: (category, txt file, question) -> Yes/No, from
    `<category>/questions_answers_YN/*.txt` or `<category>/*.txt`."""
    truth = {}
    for category in sorted(os.listdir(root)):
        folder = os.path.join(root, category)
        if not os.path.isdir(folder):
            continue
        qa = os.path.join(folder, "questions_answers_YN")
        qa = qa if os.path.exists(os.path.join(folder, "images")) else folder
        for name in sorted(os.listdir(qa)):
            if not name.endswith(".txt"):
                continue
            with open(os.path.join(qa, name), encoding="utf-8") as f:
                for line in f:
                    question, answer = line.strip().split("\t")
                    truth[(category, name, question)] = answer
    return truth


def mme_task_lines(answers: list[dict], truth: dict) -> dict[str, list[str]]:
    """The per-category txt files convert_answer_to_mme.py writes (file, prompt, gt, answer),
    with the prompt brought back to MME's own question text."""
    lines: dict[str, list[str]] = {}
    for answer in answers:
        category = answer["question_id"].split("/")[0]
        name = answer["question_id"].split("/")[-1].split(".")[0] + ".txt"
        prompt = answer["prompt"]
        if SHORT_ANSWER in prompt:
            prompt = prompt.replace(SHORT_ANSWER, "").strip()
        if YES_OR_NO.strip() not in prompt:
            prompt = prompt + YES_OR_NO
            if (category, name, prompt) not in truth:
                prompt = prompt.replace(YES_OR_NO, " " + YES_OR_NO)
        if (category, name, prompt) not in truth:
            raise ValueError(f"MME answer {answer['question_id']!r}: no ground truth for "
                             f"{prompt!r} in MME_Benchmark_release_version/{category}")
        gt = truth[(category, name, prompt)]
        lines.setdefault(category, []).append("\t".join((name, prompt, gt, answer["text"])))
    return lines


def mme_parse(pred: str) -> str:
    """calculation.py `parse_pred_ans` on the lower-cased answer."""
    if pred in ("yes", "no"):
        return pred
    prefix = pred[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def mme_task_score(task_lines: list[str]) -> dict:
    """calculation.py for one task: consecutive line pairs are one image's two questions;
    acc = fraction right, acc+ = images with both right; score = 100 * (acc + acc+). The lines
    are read back from the txt file as calculation.py reads them (newline kept)."""
    lines = io.StringIO("".join(line + "\n" for line in task_lines)).readlines()
    correct = both = 0
    for i in range(0, len(lines), 2):
        pair = lines[i:i + 2]
        if len(pair) != 2:
            raise ValueError("MME needs two questions per image; got an odd number of answers")
        right = 0
        for line in pair:
            _, _, gt, pred = line.split("\t")
            right += gt.lower() == mme_parse(pred.lower())
        correct += right
        both += right == 2
    acc, acc_plus = correct / len(lines), both / (len(lines) // 2)
    return {"acc": acc, "acc_plus": acc_plus, "score": acc * 100 + acc_plus * 100}


def score_mme(bench: Benchmark, data_dir: str, answers: list[dict], out_dir: str) -> dict:
    truth = mme_ground_truth(require(data_dir, bench.score_files[0], bench))
    lines = mme_task_lines(answers, truth)
    metrics = {}
    for kind, tasks in MME_TASKS.items():
        scores = {t: mme_task_score(lines[t]) for t in tasks if lines.get(t)}
        metrics[kind] = sum(s["score"] for s in scores.values())
        metrics[f"{kind}_tasks"] = scores
        metrics[f"{kind}_missing"] = [t for t in tasks if t not in scores]
    return {"metrics": metrics, "headline": metrics["perception"], "files": {}}
