"""GPT-judged benchmarks: MM-Vet and LLaVA-Bench-in-the-Wild.

The judge prompts and score parsing are the official ones (MM-Vet `mm-vet_evaluator.py`;
LLaVA `llava/eval/eval_gpt_review_bench.py` + `table/rule.json` + `summarize_gpt_review.py`).
The judge is an OpenAI-compatible chat-completions endpoint given explicitly (`--judge URL`,
key from OPENAI_API_KEY); without one, the requests are written to a JSONL file (one
`{"id", "model", "messages", "temperature", "max_tokens"}` per line) and no score is given.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable

import numpy as np

from sgv_jax.eval.benchmarks import Benchmark, require
from sgv_jax.eval.questions import read_jsonl

# mm-vet_evaluator.py `prompt` (yuweihao/MM-Vet), verbatim: the few-shot table ends with the
# row the judge completes.
MMVET_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""
MMVET_RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "
MMVET_MODEL = "gpt-4-0613"

# LLaVA table/rule.json: llava_bench_{conv,detail,complex} share role and prompt.
LLAVABENCH_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
LLAVABENCH_RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response "
    "to the user question displayed above. The user asks the question on observing an image. "
    "For your reference, the visual content in the image is represented with a few sentences "
    "describing the image. \nPlease rate the helpfulness, relevance, accuracy, level of details "
    "of their responses. Each assistant receives an overall score on a scale of 1 to 10, where "
    "a higher score indicates better overall performance.\nPlease first output a single line "
    "containing only two values indicating the scores for Assistant 1 and 2, respectively. The "
    "two scores are separated by a space.\nIn the subsequent line, please provide a "
    "comprehensive explanation of your evaluation, avoiding any potential bias and ensuring "
    "that the order in which the responses were presented does not affect your judgment.")
LLAVABENCH_MODEL = "gpt-4-0314"

Judge = Callable[[dict], str]  # a request (model, messages, temperature, max_tokens) -> text


def http_judge(endpoint: str, api_key: str | None = None, timeout: float = 120) -> Judge:
    """POSTs each request to an OpenAI-compatible /chat/completions URL."""
    key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")

    def ask(request: dict) -> str:
        body = json.dumps({k: request[k] for k in ("model", "messages", "temperature",
                                                   "max_tokens")}).encode()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(endpoint, body, headers)
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return json.load(response)["choices"][0]["message"]["content"]

    return ask


def write_requests(path: str, requests: list[dict]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in requests)
    print(f"no --judge endpoint: wrote {len(requests)} review requests to {path}; score them "
          "with --judge URL (an OpenAI-compatible chat-completions endpoint)", file=sys.stderr)
    return path


# --- MM-Vet ---

def mmvet_query(question: str, answer: str, prediction: str) -> str:
    """The user message: prompt + one table row `question | answer | prediction | `."""
    truth = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return MMVET_PROMPT + "\n" + f"{question} | {truth} | {prediction} | "


def mmvet_grade(ask: Judge, query: str, model: str = MMVET_MODEL) -> float:
    """mm-vet_evaluator.py: the first word of the reply as a float in [0, 1]; else ask again
    with the digit suffix, temperature +0.5 each time; 0.0 after five tries."""
    temperature, tries = 0.0, 1
    content = ask({"model": model, "messages": [{"role": "user", "content": query}],
                   "temperature": temperature, "max_tokens": 3})
    while True:
        try:
            score = float(content.split(" ")[0].strip())
            if not (score > 1.0 or score < 0.0):  # as written there: NaN passes
                return score
        except ValueError:
            pass
        retry = {"role": "user", "content": query + MMVET_RETRY_SUFFIX}
        content = ask({"model": model, "messages": [retry], "temperature": temperature,
                       "max_tokens": 3})
        tries += 1
        temperature += 0.5
        if tries > 5:
            return 0.0


def mmvet_totals(grades: dict[str, float], meta: dict) -> dict:
    """mm-vet_evaluator.py `export_result` (one run): per capability and total, in percent,
    rounded to 1 decimal."""
    counter = Counter(c for v in meta.values() for c in set(v["capability"]))
    sums = defaultdict(float)
    for key, score in grades.items():
        for capability in set(meta[key]["capability"]):
            sums[capability] += score
        sums["total"] += score
    counter["total"] = len(meta)
    return {k: round(sums[k] / counter[k] * 100, 1) for k in counter}


def score_mmvet(bench: Benchmark, data_dir: str, answers: list[dict], out_dir: str,
                judge: Judge | None = None) -> dict:
    """Results file as scripts/convert_mmvet_for_eval.py ({"v1_<qid>": text}); graded by the
    judge against mm-vet.json."""
    results = {f"v1_{a['question_id']}": a["text"] for a in answers}
    files = {"results": os.path.join(out_dir, "mmvet_results.json")}
    os.makedirs(out_dir, exist_ok=True)
    with open(files["results"], "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    with open(require(data_dir, bench.score_files[0], bench), encoding="utf-8") as f:
        meta = json.load(f)
    queries = {k: mmvet_query(v["question"], v["answer"], results[k])
               for k, v in meta.items() if k in results}
    if judge is None:
        files["review_requests"] = write_requests(
            os.path.join(out_dir, "mmvet_review_requests.jsonl"),
            [{"id": k, "model": MMVET_MODEL, "messages": [{"role": "user", "content": q}],
              "temperature": 0.0, "max_tokens": 3} for k, q in queries.items()])
        return {"metrics": {"graded": 0, "requests": len(queries)}, "headline": None,
                "files": files}
    grades = {k: mmvet_grade(judge, q) for k, q in queries.items()}
    totals = mmvet_totals(grades, meta)
    return {"metrics": {"total": totals["total"], "per_capability": totals,
                        "graded": len(grades)}, "headline": totals["total"], "files": files}


# --- LLaVA-Bench-in-the-Wild ---

def llavabench_content(caption: str, question: str, reference: str, answer: str) -> str:
    """eval_gpt_review_bench.py's user message (GPT-4's answer is Assistant 1, ours 2)."""
    role = "Assistant"
    return (f"[Context]\n{caption}\n\n[Question]\n{question}\n\n"
            f"[{role} 1]\n{reference}\n\n[End of {role} 1]\n\n"
            f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n[System]\n{LLAVABENCH_RULE}\n\n")


def parse_review(review: str) -> list[float]:
    """eval_gpt_review_bench.py `parse_score`: two numbers on the first line, else [-1, -1]."""
    try:
        pair = review.split("\n")[0].replace(",", " ").split(" ")
        return [float(pair[0]), float(pair[1])] if len(pair) == 2 else [-1, -1]
    except ValueError:
        return [-1, -1]


def summarize_reviews(reviews: list[tuple[str, list[float]]]) -> dict:
    """summarize_gpt_review.py: per category and 'all', the mean score pair rounded to 3
    places, then relative score round(ours / GPT-4 * 100, 1) and both scores x10."""
    scores = defaultdict(list)
    for category, pair in reviews:
        scores[category].append(pair)
        scores["all"].append(pair)
    out = {}
    for key, pairs in sorted(scores.items()):
        stats = [round(x, 3) for x in np.asarray(pairs).mean(0).tolist()]
        out[key] = {"relative": round(stats[1] / stats[0] * 100, 1),
                    "reference": round(stats[0] * 10, 1), "ours": round(stats[1] * 10, 1)}
    return out


def score_llavabench(bench: Benchmark, data_dir: str, answers: list[dict], out_dir: str,
                     judge: Judge | None = None) -> dict:
    questions = read_jsonl(require(data_dir, "questions.jsonl", bench))
    contexts = {c["image"]: c for c in read_jsonl(require(data_dir, "context.jsonl", bench))}
    references = read_jsonl(require(data_dir, "answers_gpt4.jsonl", bench))
    ours = {a["question_id"]: a for a in answers}
    requests = []
    # The script zips questions, GPT-4 answers and ours line by line.
    for question, reference in zip(questions, references):
        if question["question_id"] not in ours:
            continue
        caption = contexts[question["image"]]["caption"]
        caption = "\n".join(caption) if isinstance(caption, list) else caption
        content = llavabench_content(caption, question["text"], reference["text"],
                                     ours[question["question_id"]]["text"])
        requests.append({"id": question["question_id"],
                         "category": "llava_bench_" + question["category"],
                         "model": LLAVABENCH_MODEL, "temperature": 0.2, "max_tokens": 1024,
                         "messages": [{"role": "system", "content": LLAVABENCH_SYSTEM},
                                      {"role": "user", "content": content}]})
    files = {}
    if judge is None:
        files["review_requests"] = write_requests(
            os.path.join(out_dir, "llavabench_review_requests.jsonl"), requests)
        return {"metrics": {"graded": 0, "requests": len(requests)}, "headline": None,
                "files": files}
    reviews = [(r["category"], parse_review(judge(r))) for r in requests]
    summary = summarize_reviews(reviews)
    return {"metrics": {"summary": summary, "graded": len(reviews)},
            "headline": summary["all"]["relative"], "files": files}
