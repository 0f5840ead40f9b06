"""Multiple-choice benchmarks: ScienceQA-IMG, MMBench (+CN), SEED-Bench, Q-Bench.

Answer parsing is each reference's own: `eval_science_qa.py`'s letter rules, VLMEvalKit's
`can_infer` (MMBench, `exact_matching` policy: no GPT fallback), SEED's exact string match,
MMMU's `parse_multi_choice_response` (lmms-eval's Q-Bench task).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections import defaultdict

import numpy as np

from sgv_jax.eval import prompts
from sgv_jax.eval.benchmarks import Benchmark, require
from sgv_jax.eval.questions import read_tsv

SQA_OPTIONS = ["A", "B", "C", "D", "E"]


def sqa_parse(text: str, options: list[str] = SQA_OPTIONS) -> str:
    """eval_science_qa.py: the letter itself, 'X. ...', or one 'The answer is X.'; else FAILED."""
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    found = re.compile(r"The answer is ([A-Z]).").findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def score_scienceqa(bench: Benchmark, data_dir: str, answers: list[dict], out_dir: str) -> dict:
    """eval_science_qa.py on the `test` split: a missing prediction is FAILED with prompt
    'Unknown' (so it also leaves the IMG subset); IMG = prompts containing `<image>`."""
    with open(require(data_dir, "pid_splits.json", bench), encoding="utf-8") as f:
        split = json.load(f)["test"]
    with open(require(data_dir, "problems.json", bench), encoding="utf-8") as f:
        problems = json.load(f)
    predictions = {a["question_id"]: a for a in answers}
    correct = total = img_correct = img_total = 0
    for pid in split:
        prob = problems[pid]
        pred = predictions.get(pid, {"text": "FAILED", "prompt": "Unknown"})
        answer = sqa_parse(pred["text"])
        options = SQA_OPTIONS[:len(prob["choices"])]
        ok = (options.index(answer) if answer in options else -1) == prob["answer"]
        multimodal = "<image>" in pred["prompt"]
        correct, total = correct + ok, total + 1
        img_correct, img_total = img_correct + (ok and multimodal), img_total + multimodal
    metrics = {"accuracy": 100 * correct / total, "correct": correct, "count": total,
               "img_accuracy": 100 * img_correct / img_total if img_total else 0.0,
               "img_count": img_total}
    return {"metrics": metrics, "headline": metrics["img_accuracy"], "files": {}}


# --- MMBench: VLMEvalKit vlmeval/utils/matching_util.py (can_infer*), CircularEval ---

REJECT_TO_ANSWER = ("Sorry, I can't help with images of people yet.",
                    "I can't process this file.",
                    "I'm sorry, but without the image provided",
                    "Cannot determine the answer")


def can_infer_option(answer: str, choices: dict) -> str | bool:
    """A single option letter standing alone in the answer (VERBOSE unset), 'Z' for a
    refusal, else False."""
    if "Failed to obtain answer via API" in answer:
        return False
    if any(err in answer for err in REJECT_TO_ANSWER):
        return "Z"
    answer_mod = answer
    for char in ".()[],:;!*#{}":
        answer_mod = answer_mod.replace(char, " ")
    splits = [x.strip() for x in answer_mod.split()]
    count = sum(c in splits for c in choices)
    if count == 1:
        return next(ch for ch in choices if ch in splits)
    if count == 0 and sum(c in splits for c in ("Z", "")) == 1:
        return "Z"
    return False


def can_infer_text(answer: str, choices: dict) -> str | bool:
    """The one option whose text (lower-cased) occurs in the answer, else False."""
    answer = answer.lower()
    hits = [k for k, v in choices.items() if str(v).lower() in answer]
    return hits[0] if len(hits) == 1 else False


def can_infer(answer, choices: dict) -> str | bool:
    answer = str(answer)
    return can_infer_option(answer, choices) or can_infer_text(answer, copy.copy(choices))


def score_mmbench(bench: Benchmark, data_dir: str, answers: list[dict], out_dir: str) -> dict:
    """Dev (rows with `answer`): CircularEval — a question counts only if every rotation round
    is answered and its extracted letter is the rotated ground truth — plus the round-0 score
    LLaVA's single pass gives. Always: the upload sheet of convert_mmbench_for_submission.py
    (round-0 predictions)."""
    table = read_tsv(require(data_dir, bench.score_files[0], bench))
    texts = {(int(a["question_id"]), int(a.get("round_id", 0))): a["text"] for a in answers}
    files = {"submission": _mmbench_upload(table, texts, out_dir, bench.name)}
    if "answer" not in table.columns:
        return {"metrics": {"answered": len(texts)}, "headline": None, "files": files}
    circular, single = [], []
    per_category: dict[str, list[bool]] = defaultdict(list)
    for _, row in table.iterrows():
        row = row.to_dict()
        options = prompts.mmbench_options(row)
        truth = prompts.MMBENCH_LETTERS.index(row["answer"])
        rounds = []
        for r, shown in enumerate(prompts.rotations(options)):
            text = texts.get((int(row["index"]), r))
            letters = dict(zip(prompts.MMBENCH_LETTERS, shown))
            expected = prompts.MMBENCH_LETTERS[(truth - r) % len(options)]
            rounds.append(text is not None and can_infer(text, letters) == expected)
        circular.append(all(rounds))
        single.append(rounds[0])
        per_category[str(row.get("l2-category", row.get("category")))].append(all(rounds))
    pct = lambda v: 100 * sum(v) / len(v) if v else 0.0
    metrics = {"circular_accuracy": pct(circular), "single_accuracy": pct(single),
               "questions": len(circular),
               "per_category": {k: pct(v) for k, v in sorted(per_category.items())}}
    return {"metrics": metrics, "headline": metrics["circular_accuracy"], "files": files}


def _mmbench_upload(table, texts: dict, out_dir: str, name: str) -> str | None:
    """convert_mmbench_for_submission.py: drop the bulky columns, insert `prediction`."""
    try:
        import openpyxl  # noqa: F401 -- pandas' xlsx writer
    except ImportError:
        return None
    upload = table.drop(columns=["hint", "category", "source", "image", "comment",
                                 "l2-category"], errors="ignore")
    upload.insert(min(6, len(upload.columns)), "prediction",
                  [texts.get((int(i), 0)) for i in table["index"]])
    path = os.path.join(out_dir, f"{name}_submission.xlsx")
    os.makedirs(out_dir, exist_ok=True)
    upload.to_excel(path, index=False, engine="openpyxl")
    return path


def score_seed(bench: Benchmark, data_dir: str, answers: list[dict], out_dir: str) -> dict:
    """scripts/convert_seed_for_submission.py: `text == answer` exactly; accuracy per question
    type and overall, for all questions, the image subset and the video subset."""
    with open(require(data_dir, bench.score_files[0], bench), encoding="utf-8") as f:
        data = json.load(f)
    type_name = {i: n for n, i in data["question_type"].items()}
    results = {a["question_id"]: a for a in answers}

    def evaluate(only_type=None):
        counts, correct = defaultdict(int), defaultdict(int)
        for q in data["questions"]:
            if only_type is not None and q["data_type"] != only_type:
                continue
            kind = q["question_type_id"]
            counts[kind] += 1
            try:
                qid = int(q["question_id"])
            except ValueError:
                qid = q["question_id"]
            if qid in results and results[qid]["text"] == q["answer"]:
                correct[kind] += 1
        total = sum(counts.values())
        per_type = {type_name.get(k, str(k)): 100 * correct[k] / counts[k] for k in sorted(counts)}
        return (100 * sum(correct.values()) / total if total else 0.0), per_type

    overall, per_type = evaluate()
    image, image_per_type = evaluate("image")
    video, _ = evaluate("video")
    upload = os.path.join(out_dir, "seed_submission.jsonl")
    os.makedirs(out_dir, exist_ok=True)
    with open(upload, "w", encoding="utf-8") as f:
        for q in data["questions"]:
            result = results.get(q["question_id"]) or results.get(_int_or_none(q["question_id"]))
            if result is not None:
                f.write(json.dumps({"question_id": q["question_id"],
                                    "prediction": result["text"]}) + "\n")
    metrics = {"accuracy": overall, "image_accuracy": image, "video_accuracy": video,
               "per_type": per_type, "image_per_type": image_per_type}
    return {"metrics": metrics, "headline": image, "files": {"submission": upload}}


def _int_or_none(value):
    try:
        return int(value)
    except ValueError:
        return None


# --- Q-Bench: MMMU parse_multi_choice_response as lmms-eval's q_bench task uses it ---

def parse_multi_choice(response: str, all_choices: list[str], index2ans: dict) -> str | None:
    """The option letter in a free-form response; None where MMMU would pick at random."""
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "
    index_ans, ans_with_brack, candidates = True, False, []
    for choice in all_choices:
        if f"({choice})" in response:
            candidates.append(choice)
            ans_with_brack = True
    if not candidates:
        candidates = [c for c in all_choices if f"{c} " in response]
    if not candidates:
        candidates = [c for c in all_choices if f"{c}." in response]
    if not candidates and len(response.split()) > 5:
        candidates = [k for k, v in index2ans.items() if v.lower() in response.lower()]
        index_ans = False
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    if index_ans:
        pattern = "({})" if ans_with_brack else " {} "
        starts = [response.rfind(pattern.format(c)) for c in candidates]
    else:
        starts = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
    return candidates[int(np.argmax(starts))]


def score_qbench(bench: Benchmark, data_dir: str, answers: list[dict], out_dir: str) -> dict:
    """Accuracy on llvisionqa (dev has `correct_ans`): the parsed letter's candidate equals the
    correct answer; per `type` and `concern`. An unparseable answer is wrong (MMMU would guess
    at random; a score should not depend on a seed)."""
    with open(require(data_dir, bench.score_files[0], bench), encoding="utf-8") as f:
        items = json.load(f)
    texts = {a["question_id"]: a["text"] for a in answers}
    correct, groups = [], defaultdict(list)
    for i, item in enumerate(items):
        letters = [chr(ord("A") + k) for k in range(len(item["candidates"]))]
        index2ans = dict(zip(letters, item["candidates"]))
        parsed = parse_multi_choice(texts[i], letters, index2ans) if i in texts else None
        ok = parsed is not None and index2ans[parsed] == item.get("correct_ans")
        correct.append(ok)
        for field in ("type", "concern"):
            if field in item:
                groups[f"{field}={item[field]}"].append(ok)
    pct = lambda v: 100 * sum(v) / len(v) if v else 0.0
    metrics = {"accuracy": pct(correct), "questions": len(correct),
               "per_group": {k: pct(v) for k, v in sorted(groups.items())}}
    return {"metrics": metrics, "headline": metrics["accuracy"], "files": {}}
