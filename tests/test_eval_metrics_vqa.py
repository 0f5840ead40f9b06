"""Short-answer metrics (VQAv2, GQA, VizWiz, TextVQA) equal the reference evaluators on
synthetic files in the official formats with tricky answers (tests/eval_refs.py)."""

import json
import os

import pytest

from sgv_jax.eval import score_short, vqa_normalize
from sgv_jax.eval.benchmarks import get_benchmark
from tests import eval_refs
from tests.eval_refs import write_json, write_jsonl

TRICKY = [
    "Two", "two.", "The dog", "a Dog.", "dogs", "Yes.", "yes", "no, it is not", "10,000",
    "10000", "3.5", "3. 5", "isnt", "dont know", "Don't know", "it's red", "red & white",
    "left/right", "(a) cat", "1,2", "pm - 3", "a-b", "end.", "e.g. this", "none", "ten", "zero",
    "U.S.A.", "\tTabbed\n answer ", "Can't", "cant", "youre", "what's", "!!!", "", "  ",
    "the the the", "an apple", "one two three four", "1/2", "x = 3", "I'm", "Im", "ow's'at",
    "a." * 40,  # more periods than re.UNICODE (32), the count both sources pass by mistake
]


def test_evalai_normalize_equals_m4c_processor():
    m4c = eval_refs.load_llava_module("eval/m4c_evaluator.py", "m4c_a").EvalAIAnswerProcessor()
    for text in TRICKY:
        assert vqa_normalize.evalai_normalize(text) == m4c(text), text


def test_tables_equal_m4c_and_vqa_tables():
    m4c = eval_refs.load_llava_module("eval/m4c_evaluator.py", "m4c_b").EvalAIAnswerProcessor
    assert vqa_normalize.CONTRACTIONS == m4c.CONTRACTIONS
    assert vqa_normalize.NUMBER_WORDS == m4c.NUMBER_MAP
    assert list(vqa_normalize.ARTICLES) == m4c.ARTICLES
    assert list(vqa_normalize.PUNCTUATION) == m4c.PUNCTUATIONS
    assert list(vqa_normalize.PUNCTUATION) == eval_refs.OfficialVQAEval().punct


def test_vqa_punctuation_and_digits_equal_official():
    ref = eval_refs.OfficialVQAEval()
    for text in TRICKY:
        assert vqa_normalize.vqa_punctuation(text) == ref.processPunctuation(text), text
        assert vqa_normalize.vqa_digit_article(text) == ref.processDigitArticle(text), text


def human_sets():
    """Ten human answers per question: agreement, disagreement, normalisation-only variants."""
    return [
        ["2"] * 10,
        ["two"] * 4 + ["2"] * 3 + ["3"] * 3,
        ["yes"] * 2 + ["Yes."] * 1 + ["no"] * 7,
        ["the dog", "dog", "a dog", "dogs", "dog", "puppy", "dog.", "Dog", "dog", "cat"],
        ["10,000"] * 5 + ["10000"] * 5,
        ["unanswerable"] * 6 + ["red"] * 4,
        ["left/right", "left right", "left", "right", "left", "left", "right", "l", "r", "lr"],
    ]


def test_vqav2_accuracy_and_submission_equal_official(tmp_path):
    humans = human_sets()
    preds = ["Two", "2", "Yes.", "The dog.", "10000", "Unanswerable", "left/right"]
    ids = list(range(100, 100 + len(humans)))
    data = tmp_path / "vqav2"
    write_jsonl(str(data / "llava_vqav2_mscoco_test2015.jsonl"),
                [{"question_id": i} for i in [*ids, 999]])
    write_json(str(data / score_short.VQAV2_VAL_ANNOTATIONS), {"annotations": [
        {"question_id": i, "answer_type": "other", "question_type": "what",
         "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(h)]}
        for i, h in zip(ids, humans)]})
    answers = [{"question_id": i, "text": p} for i, p in zip(ids, preds)]
    got = score_short.score_vqav2(get_benchmark("vqav2"), str(data), answers, str(tmp_path / "o"))
    m4c = eval_refs.load_llava_module("eval/m4c_evaluator.py", "m4c_c").EvalAIAnswerProcessor()
    gts = {i: {"answers": [{"answer": a, "answer_id": k} for k, a in enumerate(h)]}
           for i, h in zip(ids, humans)}
    want = eval_refs.OfficialVQAEval().evaluate(gts, {i: m4c(p) for i, p in zip(ids, preds)})
    assert got["metrics"]["accuracy"] == pytest.approx(100 * sum(want) / len(want), abs=1e-9)
    with open(got["files"]["submission"]) as f:
        upload = json.load(f)
    # scripts/convert_vqav2_for_submission.py: every test2015 id, '' when unanswered.
    assert upload == [{"question_id": i, "answer": m4c(p)} for i, p in zip(ids, preds)] + [
        {"question_id": 999, "answer": ""}]


def test_vqav2_all_correct_scores_100(tmp_path):
    data = tmp_path / "vqav2"
    write_jsonl(str(data / "llava_vqav2_mscoco_test2015.jsonl"), [{"question_id": 1}])
    write_json(str(data / score_short.VQAV2_VAL_ANNOTATIONS), {"annotations": [
        {"question_id": 1, "answer_type": "number", "question_type": "how many",
         "answers": [{"answer": "2", "answer_id": k} for k in range(10)]}]})
    got = score_short.score_vqav2(get_benchmark("vqav2"), str(data),
                                  [{"question_id": 1, "text": "2"}], str(tmp_path / "o"))
    assert got["headline"] == 100.0


def test_vizwiz_accuracy_and_submission_equal_reference(tmp_path):
    humans = human_sets()
    preds = ["two", "2", "yes", "dog", "10,000", "unanswerable.", "Left"]
    images = [f"VizWiz_val_{i:08d}.jpg" for i in range(len(humans))]
    data = tmp_path / "vizwiz"
    write_jsonl(str(data / "llava_test.jsonl"),
                [{"question_id": i, "image": im} for i, im in enumerate(images)])
    write_json(str(data / "val.json"), [
        {"image": im, "answer_type": "other", "answers": [{"answer": a} for a in h]}
        for im, h in zip(images, humans)])
    answers = [{"question_id": i, "text": p} for i, p in enumerate(preds)]
    got = score_short.score_vizwiz(get_benchmark("vizwiz"), str(data), answers,
                                   str(tmp_path / "o"))
    m4c = eval_refs.load_llava_module("eval/m4c_evaluator.py", "m4c_d").EvalAIAnswerProcessor()
    want = eval_refs.vizwiz_eval({im: {"answers": [{"answer": a} for a in h]}
                                  for im, h in zip(images, humans)},
                                 {im: m4c(p) for im, p in zip(images, preds)})
    assert got["metrics"]["accuracy"] == pytest.approx(100 * sum(want) / len(want), abs=1e-9)
    with open(got["files"]["submission"]) as f:
        assert json.load(f) == [{"image": im, "answer": m4c(p)} for im, p in zip(images, preds)]


def textvqa_files(tmp_path, humans, preds):
    data = tmp_path / "textvqa"
    questions = [f"what is written number {i}?" for i in range(len(humans))]
    write_json(str(data / "TextVQA_0.5.1_val.json"), {"data": [
        {"image_id": f"img{i}", "question": q.capitalize(), "answers": h}
        for i, (q, h) in enumerate(zip(questions, humans))]})
    forms = [lambda q: f"{q}\nReference OCR token: a, b\nAnswer the question using a single "
             "word or phrase.", lambda q: f"{q}\nAnswer the question using a single word or "
             "phrase.", lambda q: f"OCR tokens: x y Question: {q} Short answer:"]
    answers = [{"question_id": f"img{i}", "prompt": forms[i % 3](q), "text": p}
               for i, (q, p) in enumerate(zip(questions, preds))]
    return data, answers


def test_textvqa_equals_llava_eval_textvqa(tmp_path):
    humans = [h for h in human_sets() if len(h) == 10]
    preds = ["2", "Two", "no", "a dog", "10,000", "red", "left right"]
    data, answers = textvqa_files(tmp_path, humans, preds)
    got = score_short.score_textvqa(get_benchmark("textvqa"), str(data), answers, "")
    # eval_textvqa.py eval_single, with its own prompt_processor and m4c evaluator.
    ev = eval_refs.load_llava_module("eval/eval_textvqa.py", "eval_textvqa_ref")
    with open(os.path.join(data, "TextVQA_0.5.1_val.json")) as f:
        annotations = {(a["image_id"], a["question"].lower()): a for a in json.load(f)["data"]}
    pred_list = [{"pred_answer": r["text"], "gt_answers": annotations[
        (r["question_id"], ev.prompt_processor(r["prompt"]))]["answers"]} for r in answers]
    want = ev.TextVQAAccuracyEvaluator().eval_pred_list(pred_list)
    assert got["headline"] == pytest.approx(100 * want, abs=1e-9)


def test_textvqa_all_correct_scores_100(tmp_path):
    data, answers = textvqa_files(tmp_path, [["ab"] * 10, ["x"] * 3 + ["y"] * 7], ["ab", "y"])
    got = score_short.score_textvqa(get_benchmark("textvqa"), str(data), answers, "")
    assert got["headline"] == 100.0


def gqa_questions():
    return {
        "q1": {"isBalanced": True, "answer": "dog", "types": {"structural": "query",
                                                              "semantic": "obj"}},
        "q2": {"isBalanced": True, "answer": "yes", "types": {"structural": "verify",
                                                              "semantic": "attr"}},
        "q3": {"isBalanced": True, "answer": "no", "types": {"structural": "logical",
                                                             "semantic": "rel"}},
        "q4": {"isBalanced": False, "answer": "red", "types": {"structural": "query",
                                                               "semantic": "attr"}},
        "q5": {"isBalanced": True, "answer": "left", "types": {"structural": "query",
                                                               "semantic": "rel"}},
    }


def test_gqa_equals_official_eval(tmp_path):
    data = tmp_path / "gqa"
    write_json(str(data / "data" / "testdev_balanced_questions.json"), gqa_questions())
    answers = [{"question_id": "q1", "text": "Dog."}, {"question_id": "q2", "text": "Yes"},
               {"question_id": "q3", "text": "no, it is not."}, {"question_id": "q5",
                                                                 "text": "left."}]
    got = score_short.score_gqa(get_benchmark("gqa"), str(data), answers, str(tmp_path / "o"))
    want = eval_refs.gqa_eval(gqa_questions(), eval_refs.convert_gqa(answers))
    for key in ("accuracy", "binary", "open"):
        assert got["metrics"][key] == pytest.approx(want[key], abs=1e-9)
    all_right = [{"question_id": q, "text": v["answer"]} for q, v in gqa_questions().items()]
    assert score_short.score_gqa(get_benchmark("gqa"), str(data), all_right,
                                 str(tmp_path / "o"))["headline"] == 100.0


def test_gqa_missing_prediction_is_named(tmp_path):
    data = tmp_path / "gqa"
    write_json(str(data / "data" / "testdev_balanced_questions.json"), gqa_questions())
    with pytest.raises(ValueError, match="'q1'"):
        score_short.score_gqa(get_benchmark("gqa"), str(data), [], str(tmp_path / "o"))
