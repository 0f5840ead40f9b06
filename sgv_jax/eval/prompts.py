"""Prompt strings exactly as LLaVA's eval scripts build them (haotian-liu/LLaVA `llava/eval/`).

Each builder returns `(user_message, recorded_prompt)`: the first turn sent to the model (with
`<image>` where the script puts it) and the `prompt` field the script writes to the answers
file, which LLaVA's scoring scripts read back (`eval_science_qa.py` tests it for `<image>`,
`eval_textvqa.py` parses the question out of it, MME's converter keys the ground truth by it).
`conversation_prompt` wraps the message in the conversation template with
`Conversation.get_prompt` (SeparatorStyle.TWO) on a plain-string message: the text is not
stripped, unlike the training-time `preprocess_multimodal` (REFERENCE.md §3.1, §3.2).
"""

from __future__ import annotations

import dataclasses
import math

from sgv_jax.constants import DEFAULT_IMAGE_TOKEN
from sgv_jax.data import templates

# `llava/conversation.py`: conv_llava_v1 differs from conv_vicuna_v1 only in its system text.
LLAVA_V1 = dataclasses.replace(
    templates.VICUNA_V1, name="llava_v1",
    system="A chat between a curious human and an artificial intelligence assistant. "
           "The assistant gives helpful, detailed, and polite answers to the human's questions.")
CONV_MODES = {"vicuna_v1": templates.VICUNA_V1, "v1": templates.VICUNA_V1, "llava_v1": LLAVA_V1}

# `--single-pred-prompt` suffixes (model_vqa_science.py, model_vqa_mmbench.py).
SINGLE_PRED_EN = "Answer with the option's letter from the given choices directly."
SINGLE_PRED_CN = "请直接回答选项字母。"
MMBENCH_LETTERS = ("A", "B", "C", "D")


def conversation_prompt(user_message: str, conv_mode: str = "vicuna_v1") -> str:
    """`conv.append_message(USER, qs); conv.append_message(ASSISTANT, None); get_prompt()`."""
    if conv_mode not in CONV_MODES:
        raise ValueError(f"unknown conv mode {conv_mode!r}; expected one of {sorted(CONV_MODES)}")
    return templates.render_v1([user_message, ""], CONV_MODES[conv_mode])


def loader_message(line: dict) -> tuple[str, str]:
    """model_vqa_loader.py / model_vqa.py: the question file's `text`, image first."""
    return DEFAULT_IMAGE_TOKEN + "\n" + line["text"], line["text"]


def science_message(line: dict) -> tuple[str, str]:
    """model_vqa_science.py with `--single-pred-prompt` (scripts/v1_5/eval/sqa.sh)."""
    qs = line["conversations"][0]["value"].replace("<image>", "").strip()
    recorded = qs
    if "image" in line:
        qs = DEFAULT_IMAGE_TOKEN + "\n" + qs
        recorded = "<image>" + "\n" + recorded
    return qs + "\n" + SINGLE_PRED_EN, recorded + "\n" + SINGLE_PRED_EN


def is_none(value) -> bool:
    """model_vqa_mmbench.py `is_none`: None, NaN, 'nan', 'none' (any case) mean absent."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.lower() in ("nan", "none")


def mmbench_options(row: dict) -> list:
    """`get_options`: the A-D columns up to the first absent one."""
    options = []
    for letter in MMBENCH_LETTERS:
        if is_none(row.get(letter)):
            break
        options.append(row[letter])
    return options


def mmbench_message(row: dict, options: list, lang: str = "en") -> tuple[str, str]:
    """One round of model_vqa_mmbench.py with `--single-pred-prompt`: hint, question, then the
    (possibly rotated) options lettered A, B, ... in order."""
    question = row["question"]
    if not is_none(row.get("hint")):
        question = row["hint"] + "\n" + question
    for letter, option in zip(MMBENCH_LETTERS, options):
        question = question + "\n" + letter + ". " + str(option)
    suffix = SINGLE_PRED_CN if lang == "cn" else SINGLE_PRED_EN
    return DEFAULT_IMAGE_TOKEN + "\n" + question + "\n" + suffix, question


def rotations(options: list) -> list[list]:
    """The option orders of `--all-rounds`: round r shows options[r:] + options[:r]."""
    return [options[r:] + options[:r] for r in range(len(options))]


def qbench_message(item: dict, lang: str = "en") -> tuple[str, str]:
    """model_vqa_qbench.py (English): question, the options line, one `X. option` line each."""
    if lang != "en":
        raise ValueError("only the English Q-Bench prompt is implemented")
    message = item["question"] + "\nChoose between one of the options as follows:\n"
    for letter, answer in zip(["A.", "B.", "C.", "D."], item["candidates"]):
        message += f"{letter} {answer}\n"
    return DEFAULT_IMAGE_TOKEN + "\n" + message, message
