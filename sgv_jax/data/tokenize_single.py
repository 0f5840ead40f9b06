"""Ids and labels for the single-separator ("###") templates: LLaVA's v0 and MiniGPT-4's
stage-2 layout, each with its reference's exact masking (v1 and plain live in tokenize.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from sgv_jax.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from sgv_jax.data import minigpt4_prompts, templates
from sgv_jax.data.tokenize import Tokenizer, tokenizer_image_token

# llava/train/train.py `_add_speaker_and_signal`: every turn is "### " + role + ": " + text + "\n".
V0_BEGIN_SIGNAL, V0_END_SIGNAL = "### ", "\n"


def _ignore(labels: list[int], start: int, stop: int) -> None:
    """`target[start:stop] = IGNORE_INDEX` with torch's slice clamping."""
    for i in range(max(start, 0), min(stop, len(labels))):
        labels[i] = IGNORE_INDEX


def preprocess_v0(messages: Sequence[str], has_image: bool, tokenizer: Tokenizer,
                  template: templates.Template = templates.LLAVA_V0) -> tuple[list[int], list[int]]:
    """LLaVA's `preprocess` for versions without their own branch (v0; llava/train/train.py):
    header `system + "\\n\\n"`, each turn `### Role: text\\n`, a closing `### `; labels copy the
    ids, then `_mask_targets` masks the header and each human turn but its first 2 tokens.
    Turn lengths are measured one string at a time, each with its own BOS, exactly as the
    reference measures them (so the masked spans drift by one token per turn, as they do there).
    `messages` alternate human/gpt starting with human."""
    header = template.system + "\n\n"
    turns = [V0_BEGIN_SIGNAL + template.roles[i % 2] + ": " + m + V0_END_SIGNAL
             for i, m in enumerate(messages)]
    conversation = header + "".join(turns) + V0_BEGIN_SIGNAL

    def tok(text: str) -> list[int]:
        return tokenizer_image_token(text, tokenizer) if has_image else tokenizer.encode(text)

    ids = tok(conversation)
    labels = list(ids)
    lengths = [len(tok(text)) for text in [header, *turns]]
    cur = lengths[0]
    _ignore(labels, 0, cur)
    for i, length in enumerate(lengths[1:]):
        if i % 2 == 0:  # speaker "human"
            _ignore(labels, cur + 2, cur + length)
        cur += length
    return ids, labels


def preprocess_minigpt4(messages: Sequence[str], tokenizer: Tokenizer, end_sym: str = "###",
                        max_txt_len: int = 160) -> tuple[list[int], list[int]]:
    """MiniGPT-4's stage-2 sample (MINIGPT4.md §3.1) from a one-round image record: the
    instruction `<Img><ImageHere></Img> question` in `###Human: {} ###Assistant: `, split at
    the image and each segment tokenized without BOS (`prompt_wrap`), the answer + `end_sym`
    tokenized the same way and cut to `max_txt_len` tokens, one BOS in front
    (`concat_emb_input_output`); labels are the answer and `end_sym` only. Defaults are
    minigpt4_stage2_finetune.yaml's (§3.2). The image is one IMAGE_TOKEN_INDEX, expanded later
    like LLaVA's."""
    question = messages[0].replace(DEFAULT_IMAGE_TOKEN, "").strip()
    prompt = minigpt4_prompts.train_prompt(f"{minigpt4_prompts.IMAGE_PLACEHOLDER} {question}")

    def encode(text: str) -> list[int]:  # add_special_tokens=False
        ids = tokenizer.encode(text)
        return ids[1:] if ids[:1] == [tokenizer.bos_id] else ids

    prompt_ids = minigpt4_prompts.segment_ids(prompt, encode, tokenizer.bos_id,
                                              IMAGE_TOKEN_INDEX, 1)
    answer_ids = encode(messages[1] + end_sym)[:max_txt_len]
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids
