"""Short-answer benchmarks: VQAv2, GQA, VizWiz, TextVQA.

Each `score_*` takes the benchmark folder, the answer lines (LLaVA's format) and a folder for
submission files, and returns `{"metrics": ..., "headline": ..., "files": ...}`. Accuracies are
in percent and unrounded (the official scripts round to 2 places only when printing).
"""

from __future__ import annotations

import json
import os

from sgv_jax.eval.benchmarks import Benchmark, require
from sgv_jax.eval.questions import read_jsonl
from sgv_jax.eval.vqa_normalize import (
    evalai_normalize,
    vqa_digit_article,
    vqa_punctuation,
)

VQAV2_VAL_ANNOTATIONS = "v2_mscoco_val2014_annotations.json"
VIZWIZ_VAL_ANNOTATIONS = "val.json"


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def leave_one_out(prediction: str, humans: list[str]) -> float:
    """min(#other humans agreeing / 3, 1), averaged over the answer sets that leave one human
    out (10 choose 9 for ten answers)."""
    accs = [min(1.0, sum(h == prediction for j, h in enumerate(humans) if j != i) / 3)
            for i in range(len(humans))]
    return sum(accs) / len(accs)


def vqa_accuracy(prediction: str, humans: list[str]) -> float:
    """Official VQA evaluator (vqaEval.py `evaluate`, GT-Vision-Lab/VQA a013f00): answers are
    normalised, on both sides, only when the humans disagree."""
    humans = [_clean(h) for h in humans]
    prediction = _clean(prediction)
    if len(set(humans)) > 1:
        humans = [vqa_digit_article(vqa_punctuation(h)) for h in humans]
        prediction = vqa_digit_article(vqa_punctuation(prediction))
    return leave_one_out(prediction, humans)


def vizwiz_accuracy(prediction: str, humans: list[str]) -> float:
    """VizWiz evaluator (VizWiz API `vqaEval.py`, Qing Li): the prediction is always normalised,
    the human answers never ('unanswerable' is one of them)."""
    return leave_one_out(vqa_digit_article(vqa_punctuation(_clean(prediction))), humans)


def textvqa_accuracy(prediction: str, humans: list[str]) -> float:
    """m4c `TextVQAAccuracyEvaluator` (LLaVA eval_textvqa.py): EvalAI-normalised both sides,
    exactly ten human answers."""
    if len(humans) != 10:
        raise ValueError(f"TextVQA needs 10 human answers per question, found {len(humans)}")
    return leave_one_out(evalai_normalize(prediction), [evalai_normalize(h) for h in humans])


def _by_id(answers: list[dict]) -> dict:
    return {a["question_id"]: a["text"] for a in answers}


def _write_json(path: str, data) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path


def score_vqav2(bench: Benchmark, data_dir: str, answers: list[dict], out_dir: str) -> dict:
    """Submission file as scripts/convert_vqav2_for_submission.py (every test2015 question,
    '' when unanswered); VQA accuracy when the val annotations are in --data."""
    results = _by_id(answers)
    test_split = read_jsonl(require(data_dir, bench.score_files[0], bench))
    upload = [{"question_id": q["question_id"],
               "answer": evalai_normalize(results[q["question_id"]])
               if q["question_id"] in results else ""} for q in test_split]
    files = {"submission": _write_json(os.path.join(out_dir, "vqav2_test-dev_submission.json"),
                                       upload)}
    metrics = {"answered": len(results), "test_questions": len(test_split)}
    annotations = os.path.join(data_dir, VQAV2_VAL_ANNOTATIONS)
    headline = None
    if os.path.exists(annotations):
        # The server scores the uploaded (EvalAI-normalised) answers with the official code.
        with open(annotations, encoding="utf-8") as f:
            gts = {a["question_id"]: a for a in json.load(f)["annotations"]}
        per_type: dict[str, list[float]] = {}
        scores = []
        for qid, text in results.items():
            if qid not in gts:
                continue
            acc = vqa_accuracy(evalai_normalize(text), [h["answer"] for h in gts[qid]["answers"]])
            scores.append(acc)
            per_type.setdefault(gts[qid]["answer_type"], []).append(acc)
        if scores:
            metrics["accuracy"] = 100 * sum(scores) / len(scores)
            metrics["per_answer_type"] = {k: 100 * sum(v) / len(v) for k, v in per_type.items()}
            metrics["scored"] = len(scores)
            headline = metrics["accuracy"]
    return {"metrics": metrics, "headline": headline, "files": files}


def score_gqa(bench: Benchmark, data_dir: str, answers: list[dict], out_dir: str) -> dict:
    """scripts/convert_gqa_for_eval.py (`text.rstrip('.').lower()`) then the official GQA
    eval.py accuracy over the balanced questions (binary = structural type other than query)."""
    predictions = {a["question_id"]: a["text"].rstrip(".").lower() for a in answers}
    files = {"predictions": _write_json(
        os.path.join(out_dir, "testdev_balanced_predictions.json"),
        [{"questionId": k, "prediction": v} for k, v in predictions.items()])}
    with open(require(data_dir, bench.score_files[0], bench), encoding="utf-8") as f:
        questions = json.load(f)
    scores = {"accuracy": [], "binary": [], "open": []}
    per_structural: dict[str, list[float]] = {}
    per_semantic: dict[str, list[float]] = {}
    for qid, question in questions.items():
        if not question["isBalanced"]:
            continue
        if qid not in predictions:
            raise ValueError(f"no prediction for GQA question {qid!r}: the official eval.py "
                             "needs one for every balanced question; run without --limit")
        score = float(predictions[qid] == question["answer"])
        structural = question["types"]["structural"]
        scores["accuracy"].append(score)
        scores["open" if structural == "query" else "binary"].append(score)
        per_structural.setdefault(structural, []).append(score)
        per_semantic.setdefault(question["types"]["semantic"], []).append(score)
    avg = lambda v: 100 * sum(v) / len(v) if v else 0.0  # eval.py's avg: 0 for an empty list
    metrics = {k: avg(v) for k, v in scores.items()}
    metrics["per_structural_type"] = {k: avg(v) for k, v in per_structural.items()}
    metrics["per_semantic_type"] = {k: avg(v) for k, v in per_semantic.items()}
    metrics["questions"] = len(scores["accuracy"])
    return {"metrics": metrics, "headline": metrics["accuracy"], "files": files}


def score_vizwiz(bench: Benchmark, data_dir: str, answers: list[dict], out_dir: str) -> dict:
    """Submission file as scripts/convert_vizwiz_for_submission.py (`{image, answer}` per
    question of llava_test.jsonl, all required); VQA accuracy with 'unanswerable' when the
    official `val.json` annotations are in --data (matched by image)."""
    results = _by_id(answers)
    split = read_jsonl(require(data_dir, bench.score_files[0], bench))
    missing = [x["question_id"] for x in split if x["question_id"] not in results]
    files = {}
    if not missing:  # the converter asserts every question is answered
        files["submission"] = _write_json(
            os.path.join(out_dir, "vizwiz_test_submission.json"),
            [{"image": x["image"], "answer": evalai_normalize(results[x["question_id"]])}
             for x in split])
    metrics = {"answered": len(results), "questions": len(split), "unanswered": len(missing)}
    headline = None
    annotations = os.path.join(data_dir, VIZWIZ_VAL_ANNOTATIONS)
    if os.path.exists(annotations):
        with open(annotations, encoding="utf-8") as f:
            gts = {a["image"]: a for a in json.load(f)}
        image_of = {x["question_id"]: x["image"] for x in split}
        per_type: dict[str, list[float]] = {}
        scores = []
        for qid, text in results.items():
            gt = gts.get(image_of.get(qid))
            if gt is None:
                continue
            acc = vizwiz_accuracy(evalai_normalize(text), [h["answer"] for h in gt["answers"]])
            scores.append(acc)
            per_type.setdefault(gt["answer_type"], []).append(acc)
        if scores:
            metrics["accuracy"] = 100 * sum(scores) / len(scores)
            metrics["per_answer_type"] = {k: 100 * sum(v) / len(v) for k, v in per_type.items()}
            headline = metrics["accuracy"]
    return {"metrics": metrics, "headline": headline, "files": files}


def textvqa_question(prompt: str) -> str:
    """eval_textvqa.py `prompt_processor`: the question inside the recorded prompt, lower-cased."""
    if prompt.startswith("OCR tokens: "):
        import re

        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(prompt.split("\n")) == 3:
        question = prompt.split("\n")[1 if prompt.startswith("Reference OCR token:") else 0]
    elif len(prompt.split("\n")) == 2:
        question = prompt.split("\n")[0]
    else:
        raise ValueError(f"TextVQA prompt in none of eval_textvqa.py's forms: {prompt!r}")
    return question.lower()


def score_textvqa(bench: Benchmark, data_dir: str, answers: list[dict], out_dir: str) -> dict:
    """eval_textvqa.py: annotations keyed by (image_id, lower-cased question), looked up by
    (question_id, question parsed from the prompt); m4c accuracy averaged over the answers."""
    with open(require(data_dir, bench.score_files[0], bench), encoding="utf-8") as f:
        data = json.load(f)["data"]
    annotations = {(a["image_id"], a["question"].lower()): a for a in data}
    scores = []
    for result in answers:
        key = (result["question_id"], textvqa_question(result["prompt"]))
        if key not in annotations:
            raise ValueError(f"answer {result['question_id']!r}: no TextVQA_0.5.1_val.json "
                             f"annotation for image_id/question {key!r}")
        scores.append(textvqa_accuracy(result["text"], annotations[key]["answers"]))
    accuracy = 100 * sum(scores) / len(scores) if scores else 0.0
    return {"metrics": {"accuracy": accuracy, "questions": len(scores)},
            "headline": accuracy, "files": {}}
