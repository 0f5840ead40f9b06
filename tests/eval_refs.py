"""The reference implementations the evaluation tests compare against (no tests here).

LLaVA's own scripts come from the PyPI package `llava-torch` (1.2.2.post1, installed with
`--no-deps`: its pinned torch/transformers would replace ours). They are loaded file by file,
so `llava/__init__.py` (which imports the torch model) never runs. Evaluators that are not in
that package are rebuilt below from their source, cited per function, keeping their code shape.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import types

import pytest


def llava_dir() -> str:
    # PathFinder looks at the installed files only (sys.modules holds a stub package below).
    spec = importlib.machinery.PathFinder.find_spec("llava")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llava-torch not installed (pip install --no-deps llava-torch==1.2.2.post1)")
    return next(iter(spec.submodule_search_locations))


def llava_script(relative: str) -> str:
    return os.path.join(llava_dir(), relative)


def load_llava_module(relative: str, name: str):
    """Executes one file of the llava package as a module. `llava.eval.m4c_evaluator` is
    registered too, so scripts that import it find it without the package's __init__."""
    if "llava.eval.m4c_evaluator" not in sys.modules:
        for pkg in ("llava", "llava.eval"):
            module = types.ModuleType(pkg)
            module.__path__ = []
            sys.modules.setdefault(pkg, module)
        try:  # the scripts import openai at the top; a stub only where it is not installed,
            import openai  # noqa: F401 -- a stub in sys.modules would shadow it for later tests
        except ImportError:
            sys.modules.setdefault("openai", types.ModuleType("openai"))
        m4c = _exec(llava_script("eval/m4c_evaluator.py"), "llava.eval.m4c_evaluator")
        sys.modules["llava.eval.m4c_evaluator"] = m4c
    return _exec(llava_script(relative), name)


def _exec(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_llava_script(relative: str, *args: str) -> str:
    """Runs a llava eval script as `python script.py ARGS` and returns its stdout."""
    out = subprocess.run([sys.executable, llava_script(relative), *args], check=True,
                         capture_output=True, text=True)
    return out.stdout


def call_printing(fn, *args) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        fn(*args)
    return buffer.getvalue()


# --- Official VQA evaluator: GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py
# at a013f00 (`evaluate`, `processPunctuation`, `processDigitArticle`); tables from m4c, which
# holds the same ones (tests/test_eval_metrics_vqa.py checks that).

class OfficialVQAEval:
    def __init__(self):
        m4c = load_llava_module("eval/m4c_evaluator.py", "m4c_ref").EvalAIAnswerProcessor
        self.contractions = dict(m4c.CONTRACTIONS)
        self.manualMap = dict(m4c.NUMBER_MAP)
        self.articles = list(m4c.ARTICLES)
        self.periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
        self.commaStrip = re.compile(r"(\d)(\,)(\d)")
        self.punct = [';', r"/", '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-',
                      '>', '<', '@', '`', ',', '?', '!']

    def processPunctuation(self, inText):
        outText = inText
        for p in self.punct:
            if (p + ' ' in inText or ' ' + p in inText) or (
                    re.search(self.commaStrip, inText) is not None):
                outText = outText.replace(p, '')
            else:
                outText = outText.replace(p, ' ')
        outText = self.periodStrip.sub("", outText, re.UNICODE)
        return outText

    def processDigitArticle(self, inText):
        outText = []
        for word in inText.lower().split():
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        return ' '.join(outText)

    def evaluate(self, gts: dict, res: dict) -> list[float]:
        """gts: qid -> {'answers': [{'answer', 'answer_id'}...]}; res: qid -> answer."""
        accQA = []
        for quesId, result in res.items():
            answers = [dict(a) for a in gts[quesId]['answers']]
            for ansDic in answers:
                ansDic['answer'] = ansDic['answer'].replace('\n', ' ').replace('\t', ' ').strip()
            resAns = result.replace('\n', ' ').replace('\t', ' ').strip()
            gtAcc = []
            gtAnswers = [ans['answer'] for ans in answers]
            if len(set(gtAnswers)) > 1:
                for ansDic in answers:
                    ansDic['answer'] = self.processPunctuation(ansDic['answer'])
                    ansDic['answer'] = self.processDigitArticle(ansDic['answer'])
                resAns = self.processPunctuation(resAns)
                resAns = self.processDigitArticle(resAns)
            for gtAnsDatum in answers:
                otherGTAns = [item for item in answers if item != gtAnsDatum]
                matchingAns = [item for item in otherGTAns if item['answer'] == resAns]
                gtAcc.append(min(1, float(len(matchingAns)) / 3))
            accQA.append(float(sum(gtAcc)) / len(gtAcc))
        return accQA


def vizwiz_eval(gts: dict, res: dict) -> list[float]:
    """VizWiz API vqaEval.py (Qing Li) `evaluate`: res normalised, gt raw, index leave-one-out.
    gts: image -> {'answers': [{'answer'}...]}; res: image -> answer."""
    ev = OfficialVQAEval()
    accQA = []
    for img, result in res.items():
        resAns = result.replace('\n', ' ').replace('\t', ' ').strip()
        resAns = ev.processPunctuation(resAns)
        resAns = ev.processDigitArticle(resAns)
        gtAcc = []
        for i, _ in enumerate(gts[img]['answers']):
            otherGTAns = [item for j, item in enumerate(gts[img]['answers']) if i != j]
            matchingAns = [item for item in otherGTAns if item['answer'] == resAns]
            gtAcc.append(min(1, float(len(matchingAns)) / 3))
        accQA.append(float(sum(gtAcc)) / len(gtAcc))
    return accQA


def gqa_eval(questions: dict, predictions: dict) -> dict:
    """GQA eval.py (LLaVA's gist edit: testdev_balanced_questions.json, no choices): the
    accuracy/binary/open lists and their averages x100."""
    scores = {"accuracy": [], "binary": [], "open": []}
    for qid, question in questions.items():
        if question["isBalanced"]:
            gold = question["answer"]
            predicted = predictions[qid]
            score = float(1 if predicted == gold else 0)
            scores["accuracy"].append(score)
            answerType = "open" if question["types"]["structural"] == "query" else "binary"
            scores[answerType].append(score)
    return {k: (float(sum(v)) / len(v) if v else 0) * 100 for k, v in scores.items()}


def convert_gqa(answers: list[dict]) -> dict:
    """LLaVA scripts/convert_gqa_for_eval.py."""
    return {a['question_id']: a['text'].rstrip('.').lower() for a in answers}


# --- MME: LLaVA eval.zip convert_answer_to_mme.py + MME eval_tool/calculation.py

def mme_reference(answers: list[dict], GT: dict) -> dict:
    results = {}
    for answer in answers:
        category = answer['question_id'].split('/')[0]
        file = answer['question_id'].split('/')[-1].split('.')[0] + '.txt'
        results.setdefault(category, []).append((file, answer['prompt'], answer['text']))
    files = {}
    for category, cate_tups in results.items():
        fp = io.StringIO()
        for file, prompt, answer in cate_tups:
            if 'Answer the question using a single word or phrase.' in prompt:
                prompt = prompt.replace('Answer the question using a single word or phrase.',
                                        '').strip()
            if 'Please answer yes or no.' not in prompt:
                prompt = prompt + ' Please answer yes or no.'
                if (category, file, prompt) not in GT:
                    prompt = prompt.replace(' Please answer yes or no.',
                                            '  Please answer yes or no.')
            gt_ans = GT[category, file, prompt]
            fp.write(f"{file}\t{prompt}\t{gt_ans}\t{answer}\n")
        files[category] = fp.getvalue()
    eval_type_dict = {
        "Perception": ["existence", "count", "position", "color", "posters", "celebrity",
                       "scene", "landmark", "artwork", "OCR"],
        "Cognition": ["commonsense_reasoning", "numerical_calculation", "text_translation",
                      "code_reasoning"]}

    def parse_pred_ans(pred_ans):
        if pred_ans in ["yes", "no"]:
            return pred_ans
        prefix_pred_ans = pred_ans[:4]
        if "yes" in prefix_pred_ans:
            return "yes"
        if "no" in prefix_pred_ans:
            return "no"
        return "other"

    out = {}
    for eval_type, task_name_list in eval_type_dict.items():
        scores = 0
        for task_name in task_name_list:
            if task_name not in files:
                continue
            lines = io.StringIO(files[task_name]).readlines()
            chunk_lines = [lines[i:i + 2] for i in range(0, len(lines), 2)]
            img_num = len(chunk_lines)
            acc_plus_correct_num = 0
            gts, preds = [], []
            for img_items in chunk_lines:
                img_correct_num = 0
                for img_item in img_items:
                    _img_name, _question, gt_ans, pred_ans = img_item.split("\t")
                    gt_ans = gt_ans.lower()
                    pred_ans = parse_pred_ans(pred_ans.lower())
                    gts.append(gt_ans)
                    preds.append(pred_ans)
                    if gt_ans == pred_ans:
                        img_correct_num += 1
                if img_correct_num == 2:
                    acc_plus_correct_num += 1
            label_map = {"yes": 1, "no": 0, "other": -1}
            acc = sum(label_map[g] == label_map[p] for g, p in zip(gts, preds)) / len(gts)
            task_score = acc * 100 + acc_plus_correct_num / img_num * 100
            out[task_name] = task_score
            scores += task_score
        out[eval_type] = scores
    return out


# --- VLMEvalKit vlmeval/utils/matching_util.py (can_infer_option / can_infer_text /
# can_infer, VERBOSE unset) and its MMBench CircularEval under the `exact_matching` policy.

def vlmeval_can_infer_option(answer, choices):
    if 'Failed to obtain answer via API' in answer:
        return False
    reject_to_answer = [
        "Sorry, I can't help with images of people yet.",
        "I can't process this file.",
        "I'm sorry, but without the image provided",
        'Cannot determine the answer'
    ]
    for err in reject_to_answer:
        if err in answer:
            return 'Z'

    def count_choice(splits, choices, prefix='', suffix=''):
        cnt = 0
        for c in choices:
            if prefix + c + suffix in splits:
                cnt += 1
        return cnt

    answer_mod = answer
    for c in '.()[],:;!*#{}':
        answer_mod = answer_mod.replace(c, ' ')
    splits = [x.strip() for x in answer_mod.split()]
    count = count_choice(splits, choices)
    if count == 1:
        for ch in choices:
            if ch in splits:
                return ch
    elif count == 0 and count_choice(splits, {'Z', ''}) == 1:
        return 'Z'
    return False


def vlmeval_can_infer_text(answer, choices):
    answer = answer.lower()
    for k in choices:
        choices[k] = str(choices[k]).lower()
    cands = []
    for k in choices:
        if choices[k] in answer:
            cands.append(k)
    if len(cands) == 1:
        return cands[0]
    return False


def vlmeval_can_infer(answer, choices):
    answer = str(answer)
    copt = vlmeval_can_infer_option(answer, choices)
    return copt if copt else vlmeval_can_infer_text(answer, choices)


# --- LLaVA scripts/convert_seed_for_submission.py `eval_single`

def seed_eval(data: dict, results: dict, eval_only_type=None) -> float:
    type_counts, correct_counts = {}, {}
    for question_data in data['questions']:
        if eval_only_type is not None and question_data['data_type'] != eval_only_type:
            continue
        data_type = question_data['question_type_id']
        type_counts[data_type] = type_counts.get(data_type, 0) + 1
        try:
            question_id = int(question_data['question_id'])
        except ValueError:
            question_id = question_data['question_id']
        if question_id not in results:
            correct_counts[data_type] = correct_counts.get(data_type, 0)
            continue
        row = results[question_id]
        if row['text'] == question_data['answer']:
            correct_counts[data_type] = correct_counts.get(data_type, 0) + 1
    total_count = total_correct = 0
    for data_type in sorted(type_counts.keys()):
        total_count += type_counts[data_type]
        total_correct += correct_counts.get(data_type, 0)
    return total_correct / total_count * 100


def write_json(path, data) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path


def write_jsonl(path, rows) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return path
