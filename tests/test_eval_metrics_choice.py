"""Multiple-choice metrics (ScienceQA, MMBench, SEED, Q-Bench) equal the references: LLaVA's
eval_science_qa.py run as a script, VLMEvalKit's can_infer + CircularEval and LLaVA's SEED
converter rebuilt in tests/eval_refs.py."""

import base64
import io
import json

import pandas as pd
import pytest
from PIL import Image

from sgv_jax.eval import score_choice
from sgv_jax.eval.benchmarks import get_benchmark
from tests import eval_refs
from tests.eval_refs import write_json


def sqa_files(tmp_path):
    data = tmp_path / "scienceqa"
    problems = {f"p{i}": {"choices": ["x", "y", "z"][: 2 + i % 2], "answer": i % 2}
                for i in range(8)}
    write_json(str(data / "pid_splits.json"), {"test": list(problems), "val": []})
    write_json(str(data / "problems.json"), problems)
    return data, problems


def test_scienceqa_equals_llava_eval_science_qa(tmp_path):
    data, _ = sqa_files(tmp_path)
    texts = {"p0": "A", "p1": "B. y", "p2": "The answer is A.", "p3": "C",  # C is not a choice
             "p4": "The answer is A. The answer is B.", "p5": "b", "p6": "A.x"}  # p7 missing
    answers = [{"question_id": pid, "text": t,
                "prompt": ("<image>\n" if i % 3 else "") + "Question?"}
               for i, (pid, t) in enumerate(texts.items())]
    answers_file = eval_refs.write_jsonl(str(tmp_path / "a" / "sqa.jsonl"), answers)
    got = score_choice.score_scienceqa(get_benchmark("scienceqa"), str(data), answers, "")
    eval_refs.run_llava_script(
        "eval/eval_science_qa.py", "--base-dir", str(data), "--result-file", answers_file,
        "--output-file", str(tmp_path / "out.json"), "--output-result", str(tmp_path / "r.json"))
    with open(tmp_path / "r.json") as f:
        ref = json.load(f)
    with open(tmp_path / "out.json") as f:
        out = json.load(f)
    img_right = sum(x["is_multimodal"] for x in out["correct"])
    img_total = img_right + sum(x["is_multimodal"] for x in out["incorrect"])
    assert got["metrics"]["accuracy"] == pytest.approx(ref["acc"], abs=1e-9)
    assert got["metrics"]["img_accuracy"] == pytest.approx(100 * img_right / img_total, abs=1e-9)
    assert (got["metrics"]["correct"], got["metrics"]["count"]) == (ref["correct"], ref["count"])


def test_scienceqa_all_correct_scores_100(tmp_path):
    data, problems = sqa_files(tmp_path)
    answers = [{"question_id": pid, "text": "AB"[p["answer"]], "prompt": "<image>\nQ"}
               for pid, p in problems.items()]
    got = score_choice.score_scienceqa(get_benchmark("scienceqa"), str(data), answers, "")
    assert got["headline"] == 100.0 and got["metrics"]["accuracy"] == 100.0


MMB_ANSWERS = [
    "A", "B.", "The answer is C", "(D) dog", "a cat", "It is a dog.", "A or B", "Z",
    "Cannot determine the answer", "I think A is right", "b", "B) bird", "dog and cat",
    "Answer: D", "**C**", "",
]


def test_can_infer_equals_vlmevalkit():
    choices = {"A": "cat", "B": "bird", "C": "fish", "D": "dog"}
    for text in MMB_ANSWERS:
        assert score_choice.can_infer(text, dict(choices)) == eval_refs.vlmeval_can_infer(
            text, dict(choices)), text


def image_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def mmbench_tsv(path, with_answer=True):
    rows = []
    for i in range(6):
        row = {"index": 100 + i, "question": f"What is {i}?", "hint": "A hint" if i % 2 else None,
               "A": "cat", "B": "bird", "C": "fish" if i % 3 else None, "D": "dog" if i % 3 else None,
               "image": image_b64(), "category": "cat" + str(i % 2), "l2-category": "l2",
               "source": "s", "comment": None}
        if with_answer:
            row["answer"] = "ABCD"[i % (4 if i % 3 else 2)]
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)


def circular_reference(table, texts):
    """MMBench CircularEval with VLMEvalKit's exact_matching extraction: every rotation's
    extracted letter must equal the rotated ground truth."""
    results = []
    for _, row in table.iterrows():
        options = [row[c] for c in "ABCD" if isinstance(row[c], str)]
        truth = options["ABCD".index(row["answer"])]
        ok = True
        for r in range(len(options)):
            shown = options[r:] + options[:r]
            choices = {"ABCD"[k]: v for k, v in enumerate(shown)}
            text = texts.get((row["index"], r))
            ok &= text is not None and eval_refs.vlmeval_can_infer(text, dict(choices)) == \
                "ABCD"[shown.index(truth)]
        results.append(ok)
    return 100 * sum(results) / len(results)


def n_options(row) -> int:
    return sum(isinstance(row[c], str) for c in "ABCD")


def test_mmbench_circular_equals_reference(tmp_path):
    data = tmp_path / "mmbench"
    data.mkdir()
    mmbench_tsv(data / "mmbench_dev_20230712.tsv")
    table = pd.read_table(data / "mmbench_dev_20230712.tsv")
    texts = {}
    for n, (_, row) in enumerate(table.iterrows()):
        k = n_options(row)
        truth = "ABCD".index(row["answer"])
        for r in range(k):
            right = "ABCD"[(truth - r) % k]
            # Mostly right, in assorted forms; some rounds wrong or unparseable.
            texts[(row["index"], r)] = [right, f"{right}.", f"The answer is {right}",
                                        "A or B", MMB_ANSWERS[(n + r) % len(MMB_ANSWERS)]][
                (n * 3 + r) % 5 if n % 2 else r % 3]
    answers = [{"question_id": int(q), "round_id": r, "text": t} for (q, r), t in texts.items()]
    got = score_choice.score_mmbench(get_benchmark("mmbench"), str(data), answers,
                                     str(tmp_path / "o"))
    assert got["headline"] == pytest.approx(circular_reference(table, texts), abs=1e-9)
    assert 0 < got["headline"] < 100
    sheet = pd.read_excel(got["files"]["submission"])
    assert "prediction" in sheet.columns and "image" not in sheet.columns
    rows = table.set_index("index")
    all_right = [{"question_id": int(q), "round_id": r,
                  "text": "ABCD"[("ABCD".index(rows.loc[q, "answer"]) - r)
                                 % n_options(rows.loc[q])]} for (q, r) in texts]
    assert score_choice.score_mmbench(get_benchmark("mmbench"), str(data), all_right,
                                      str(tmp_path / "o"))["headline"] == 100.0


def seed_files(tmp_path):
    data = {"question_type": {"Scene": 1, "Count": 2},
            "questions": [{"question_id": str(i) if i % 2 else f"v{i}", "question_type_id":
                           1 + i % 2, "data_type": "image" if i < 6 else "video",
                           "answer": "ABCD"[i % 4]} for i in range(9)]}
    path = tmp_path / "seed_bench" / "SEED-Bench.json"
    write_json(str(path), data)
    return data


def test_seed_equals_llava_converter(tmp_path):
    data = seed_files(tmp_path)
    texts = ["A", "B.", "c", "D", "A", "B", "C", "The answer is D", "A"]
    answers = [{"question_id": i if i % 2 else f"v{i}", "text": t} for i, t in enumerate(texts)]
    answers = answers[:-1]  # one unanswered
    got = score_choice.score_seed(get_benchmark("seed"), str(tmp_path / "seed_bench"), answers,
                                  str(tmp_path / "o"))
    results = {a["question_id"]: a for a in answers}
    assert got["metrics"]["accuracy"] == pytest.approx(eval_refs.seed_eval(data, results), abs=1e-9)
    assert got["headline"] == pytest.approx(eval_refs.seed_eval(data, results, "image"), abs=1e-9)
    right = [{"question_id": i if i % 2 else f"v{i}", "text": "ABCD"[i % 4]} for i in range(9)]
    got = score_choice.score_seed(get_benchmark("seed"), str(tmp_path / "seed_bench"), right,
                                  str(tmp_path / "o"))
    assert got["metrics"]["accuracy"] == 100.0 == got["headline"]


def test_qbench_parses_as_mmmu_and_all_correct_scores_100(tmp_path):
    items = [{"img_path": f"{i}.jpg", "question": "Q?", "candidates": ["Yes", "No", "Maybe"],
              "correct_ans": ["Yes", "No", "Maybe"][i % 3], "type": i % 2, "concern": 0}
             for i in range(6)]
    write_json(str(tmp_path / "qbench" / "llvisionqa_dev.json"), items)
    bench = get_benchmark("qbench")
    letters, index2ans = ["A", "B", "C"], {"A": "Yes", "B": "No", "C": "Maybe"}
    cases = {"A": "A", "(B) No": "B", "C.": "C", "The image quality is rather maybe low": "C",
             "B or C": "C", "nothing here": None, "A. Yes": "A"}
    for text, want in cases.items():
        assert score_choice.parse_multi_choice(text, letters, index2ans) == want, text
    right = [{"question_id": i, "text": "ABC"[i % 3]} for i in range(6)]
    assert score_choice.score_qbench(bench, str(tmp_path / "qbench"), right, "")["headline"] == 100
    half = [{"question_id": i, "text": "A"} for i in range(6)]
    assert score_choice.score_qbench(bench, str(tmp_path / "qbench"), half, "")["headline"] == \
        pytest.approx(100 / 3, abs=1e-9)
