"""GPT-judged benchmarks with a scripted judge: MM-Vet grading and totals equal MM-Vet's
mm-vet_evaluator.py logic (rebuilt here); LLaVA-Bench parsing and summary equal LLaVA's
eval_gpt_review_bench.py `parse_score` and summarize_gpt_review.py (run from llava-torch);
without a judge, the review requests are written and no score is claimed."""

import http.server
import json
import re
import threading

import numpy as np
import pytest

from sgv_jax.eval import score_judged
from sgv_jax.eval.benchmarks import get_benchmark
from tests import eval_refs
from tests.eval_refs import write_json, write_jsonl

CAPS = [["rec"], ["ocr", "rec"], ["math", "ocr"], ["rec", "know"], ["ocr"]]


def mmvet_files(tmp_path):
    data = tmp_path / "mm-vet"
    meta = {f"v1_{i}": {"question": f"Q{i}?", "answer": "a<AND>b" if i % 2 else "c<OR>d",
                        "capability": caps, "imagename": f"{i}.png"}
            for i, caps in enumerate(CAPS)}
    write_json(str(data / "mm-vet.json"), meta)
    answers = [{"question_id": i, "text": f"answer {i}"} for i in range(len(CAPS))]
    return data, meta, answers


class ScriptedJudge:
    """Replies from a list in order; records the requests."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []

    def __call__(self, request):
        self.requests.append(request)
        return self.replies.pop(0)


def reference_mmvet(meta, results, replies):
    """mm-vet_evaluator.py `runs` (num_run=1) + `export_result` for the total/capabilities."""
    replies = list(replies)
    grade = {}
    for key in meta:
        content = replies.pop(0)
        flag, try_time = True, 1
        while flag:
            try:
                content = content.split(" ")[0].strip()
                score = float(content)
                if score > 1.0 or score < 0.0:
                    raise AssertionError
                flag = False
            except (ValueError, AssertionError):
                content = replies.pop(0)
                try_time += 1
                if try_time > 5:
                    score = 0.0
                    flag = False
        grade[key] = score
    counter = {}
    for v in meta.values():
        for c in set(v["capability"]):
            counter[c] = counter.get(c, 0) + 1
    counter["total"] = len(meta)
    sums = {k: 0.0 for k in counter}
    for key, score in grade.items():
        for c in set(meta[key]["capability"]):
            sums[c] += score
        sums["total"] += score
    return {k: round(np.mean(np.array([sums[k]]) / counter[k] * 100), 1) for k in counter}


def test_mmvet_grades_and_totals_equal_the_evaluator(tmp_path):
    data, meta, answers = mmvet_files(tmp_path)
    replies = ["0.5", "1.0 correct", "x", "??", "0.3", "2.0", "0.7", "a", "b", "c", "d", "e",
               "0.9"]
    judge = ScriptedJudge(replies)
    got = score_judged.score_mmvet(get_benchmark("mmvet"), str(data), answers,
                                   str(tmp_path / "o"), judge=judge)
    want = reference_mmvet(meta, {}, replies)
    assert got["metrics"]["per_capability"] == want
    assert got["headline"] == want["total"]
    first = judge.requests[0]["messages"][0]["content"]
    assert first.startswith(score_judged.MMVET_PROMPT + "\n")
    assert first.endswith("Q0? | c <OR> d | answer 0 | ")
    assert judge.requests[3]["messages"][0]["content"].endswith(score_judged.MMVET_RETRY_SUFFIX)
    assert [r["temperature"] for r in judge.requests[2:5]] == [0.0, 0.0, 0.5]


def test_mmvet_without_judge_writes_requests_and_no_score(tmp_path, capsys):
    data, _, answers = mmvet_files(tmp_path)
    got = score_judged.score_mmvet(get_benchmark("mmvet"), str(data), answers,
                                   str(tmp_path / "o"))
    assert got["headline"] is None
    with open(got["files"]["review_requests"]) as f:
        assert len(f.readlines()) == len(CAPS)
    with open(got["files"]["results"]) as f:
        assert json.load(f) == {f"v1_{i}": f"answer {i}" for i in range(len(CAPS))}
    assert "no --judge endpoint" in capsys.readouterr().err


def llavabench_files(tmp_path):
    data = tmp_path / "llava-bench-in-the-wild"
    cats = ["conv", "detail", "complex", "conv"]
    write_jsonl(str(data / "questions.jsonl"),
                [{"question_id": i, "image": f"{i % 2}.jpg", "text": f"Q{i}", "category": c}
                 for i, c in enumerate(cats)])
    write_jsonl(str(data / "context.jsonl"), [{"image": "0.jpg", "caption": ["a", "b"]},
                                              {"image": "1.jpg", "caption": "c"}])
    write_jsonl(str(data / "answers_gpt4.jsonl"),
                [{"question_id": i, "text": f"gpt {i}", "answer_id": f"g{i}"} for i in range(4)])
    return data, [{"question_id": i, "text": f"ours {i}"} for i in range(4)]


def test_llavabench_parse_and_summary_equal_llava(tmp_path):
    data, answers = llavabench_files(tmp_path)
    replies = ["8 7\nbecause", "9, 6\nok", "10 10", "garbage"]
    judge = ScriptedJudge(replies)
    got = score_judged.score_llavabench(get_benchmark("llavabench"), str(data), answers,
                                        str(tmp_path / "o"), judge=judge)
    review = eval_refs.load_llava_module("eval/eval_gpt_review_bench.py", "review_ref")
    for reply in replies + ["1 2 3", "7,8", "-"]:
        assert score_judged.parse_review(reply) == review.parse_score(reply)
    content = judge.requests[0]["messages"][1]["content"]
    assert content.startswith("[Context]\na\nb\n\n[Question]\nQ0\n\n[Assistant 1]\ngpt 0\n\n")
    assert content.endswith("[End of Assistant 2]\n\n[System]\n" + score_judged.LLAVABENCH_RULE
                            + "\n\n")
    # summarize_gpt_review.py -f REVIEWS prints "<category> <relative> <gpt4 x10> <ours x10>".
    reviews = [{"question_id": i, "category": judge.requests[i]["category"],
                "tuple": review.parse_score(r)} for i, r in enumerate(replies)]
    path = write_jsonl(str(tmp_path / "reviews" / "review.jsonl"), reviews)
    printed = eval_refs.run_llava_script("eval/summarize_gpt_review.py", "-f", path)
    for category, rel, ref, ours in re.findall(r"^(\S+) (\S+) (\S+) (\S+)$", printed, re.MULTILINE):
        assert got["metrics"]["summary"][category] == {
            "relative": float(rel), "reference": float(ref), "ours": float(ours)}
    assert got["headline"] == got["metrics"]["summary"]["all"]["relative"]


class _FakeOpenAI(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.headers.get("Authorization"), body))
        reply = json.dumps({"choices": [{"message": {"content": "0.6"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_http_judge_posts_chat_completions(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        judge = score_judged.http_judge(f"http://127.0.0.1:{server.server_port}/v1/chat/"
                                        "completions", api_key="k")
        data, _, answers = mmvet_files(tmp_path)
        got = score_judged.score_mmvet(get_benchmark("mmvet"), str(data), answers,
                                       str(tmp_path / "o"), judge=judge)
    finally:
        server.shutdown()
    assert got["headline"] == pytest.approx(60.0)
    auth, body = server.seen[0]
    assert auth == "Bearer k" and body["model"] == "gpt-4-0613" and body["max_tokens"] == 3
