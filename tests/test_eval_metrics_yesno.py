"""POPE equals LLaVA's eval_pope.py (from llava-torch); MME equals LLaVA's
convert_answer_to_mme.py + MME's calculation.py (rebuilt in tests/eval_refs.py)."""

import os
import re

import pytest

from sgv_jax.eval import score_yesno
from sgv_jax.eval.benchmarks import get_benchmark
from tests import eval_refs
from tests.eval_refs import write_jsonl

POPE_TEXTS = ["Yes", "No", "Yes.", "No, there is not.", "yes, there is a dog", "There is no cat.",
              "I do not see one.", "Not sure", "The answer is no", "Yes. No.", "nope",
              "It is not there", "NO", "no", "yes,no"]


def pope_files(tmp_path):
    data = tmp_path / "pope"
    questions, labels = [], {}
    qid = 0
    for category in score_yesno.POPE_CATEGORIES:
        labels[category] = []
        for i in range(len(POPE_TEXTS)):
            label = "yes" if (i + len(category)) % 3 else "no"
            labels[category].append(label)
            questions.append({"question_id": qid, "category": category, "image": "x.jpg",
                              "text": "Is there a dog?"})
            qid += 1
        write_jsonl(str(data / "coco" / f"coco_pope_{category}.json"),
                    [{"label": label} for label in labels[category]])
    write_jsonl(str(data / "llava_pope_test.jsonl"), questions)
    return data, questions, labels


def parse_eval_pope_stdout(text: str) -> dict:
    """eval_pope prints 'Accuracy: 0.8' ... with repr floats."""
    names = {"Accuracy": "accuracy", "Precision": "precision", "Recall": "recall",
             "F1 score": "f1", "Yes ratio": "yes_ratio"}
    return {names[k]: float(v) for k, v in re.findall(r"^(Accuracy|Precision|Recall|F1 score|"
                                                      r"Yes ratio): (\S+)$", text, re.MULTILINE)}


def test_pope_equals_llava_eval_pope(tmp_path):
    data, questions, _ = pope_files(tmp_path)
    answers = [{"question_id": q["question_id"], "text": POPE_TEXTS[i % len(POPE_TEXTS)]}
               for i, q in enumerate(questions)]
    got = score_yesno.score_pope(get_benchmark("pope"), str(data), answers, "")
    eval_pope = eval_refs.load_llava_module("eval/eval_pope.py", "eval_pope_ref").eval_pope
    f1 = []
    for category in score_yesno.POPE_CATEGORIES:
        cur = [dict(a) for a in answers if questions[a["question_id"]]["category"] == category]
        printed = eval_refs.call_printing(
            eval_pope, cur, os.path.join(data, "coco", f"coco_pope_{category}.json"))
        want = parse_eval_pope_stdout(printed)
        for key, value in want.items():
            assert got["metrics"]["per_category"][category][key] == pytest.approx(value,
                                                                                 abs=1e-9), key
        f1.append(want["f1"])
    assert got["headline"] == pytest.approx(100 * sum(f1) / 3, abs=1e-9)


def test_pope_all_correct_scores_100(tmp_path):
    data, questions, labels = pope_files(tmp_path)
    answers = [{"question_id": q["question_id"],
                "text": "Yes" if labels[q["category"]][q["question_id"] % len(POPE_TEXTS)] ==
                "yes" else "No"} for q in questions]
    got = score_yesno.score_pope(get_benchmark("pope"), str(data), answers, "")
    assert got["headline"] == 100.0
    assert all(m["accuracy"] == 1.0 for m in got["metrics"]["per_category"].values())


def mme_files(tmp_path):
    """Two layouts as in MME_Benchmark_release_version: `<cat>/images` + questions_answers_YN
    (artwork) and flat `<cat>/*.txt` (count, code_reasoning). Each image has a yes and a no
    question; one question text needs the double-space fallback."""
    root = tmp_path / "MME" / "MME_Benchmark_release_version"
    questions = {}
    for category, layout in (("artwork", "nested"), ("count", "flat"),
                             ("code_reasoning", "flat")):
        qa = root / category / ("questions_answers_YN" if layout == "nested" else "")
        if layout == "nested":
            (root / category / "images").mkdir(parents=True)
        qa.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            sep = "  " if (category == "count" and i == 1) else " "
            pair = [(f"Is it {category} {i}?{sep}Please answer yes or no.", "Yes"),
                    (f"Is it not {category} {i}?{sep}Please answer yes or no.", "No")]
            (qa / f"{i:04d}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in pair))
            for q, a in pair:
                questions.setdefault(category, []).append((f"{category}/{i:04d}.jpg", q, a))
    return root, questions


MME_TEXTS = ["Yes", "No", "yes, it is", "No.", "Nope", "I think so", "yEs", "no", "Not at all",
             "ye", "noo", "Yes."]


def mme_answers(questions, text_for):
    answers = []
    for rows in questions.values():
        for k, (qid, question, truth) in enumerate(rows):
            # LLaVA's llava_mme.jsonl text: MME's question with the yes/no suffix replaced.
            prompt = question.replace("  Please answer yes or no.", "").replace(
                " Please answer yes or no.", "") + "\nAnswer the question using a single word " \
                "or phrase."
            answers.append({"question_id": qid, "prompt": prompt, "text": text_for(k, truth)})
    return answers


def test_mme_equals_reference_calculation(tmp_path):
    root, questions = mme_files(tmp_path)
    answers = mme_answers(questions, lambda k, truth: MME_TEXTS[k % len(MME_TEXTS)])
    got = score_yesno.score_mme(get_benchmark("mme"), str(root.parent), answers, "")
    want = eval_refs.mme_reference(answers, score_yesno.mme_ground_truth(str(root)))
    assert got["metrics"]["perception"] == pytest.approx(want["Perception"], abs=1e-9)
    assert got["metrics"]["cognition"] == pytest.approx(want["Cognition"], abs=1e-9)
    for task in ("artwork", "count"):
        assert got["metrics"]["perception_tasks"][task]["score"] == pytest.approx(want[task],
                                                                                  abs=1e-9)
    assert 0 < got["headline"] < 400


def test_mme_all_correct_scores_the_maximum(tmp_path):
    root, questions = mme_files(tmp_path)
    answers = mme_answers(questions, lambda k, truth: truth)
    got = score_yesno.score_mme(get_benchmark("mme"), str(root.parent), answers, "")
    assert got["metrics"]["perception"] == 400.0  # two tasks present, 200 each
    assert got["metrics"]["cognition"] == 200.0
