"""Prompt text ↔ token batches for inference: templates, `<image>` expansion, left padding,
detokenization and stop strings. Pure functions (numpy), no device work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sgv_jax.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from sgv_jax.data import minigpt4_prompts, templates
from sgv_jax.data.encode import expand_image_tokens
from sgv_jax.data.tokenize import SentencePieceTokenizer, tokenizer_image_token

TEMPLATES = ("v1", "plain", "none", "v0", "llava_v0", "minigpt4", "minigpt4_2304")
MINIGPT4_TEMPLATES = ("minigpt4", "minigpt4_2304")

# Strings that end an answer besides EOS. v1 ends with sep2 `</s>`, which is EOS itself (§3.1,
# §4.6). `plain` trains on `<image>` + caption + "\n" with no EOS (§3.3), so "\n" ends it. v0
# stops on its separator "###" (LLaVA's KeywordsStoppingCriteria on `conv.sep`, SINGLE style).
# MiniGPT-4 stops on token ids, not text (`minigpt4_stop_ids`).
DEFAULT_STOP_STRINGS = {"v1": (), "plain": ("\n",), "none": (), "v0": ("###",),
                        "llava_v0": ("###",), "minigpt4": (), "minigpt4_2304": ()}


def default_template(cfg) -> str:
    """The template a checkpoint's model family answers in: MiniGPT-4's demo prompt for a
    MiniGPT-4 model, vicuna_v1 otherwise."""
    return "minigpt4" if getattr(cfg, "family", None) == "minigpt4" else "v1"


def build_prompt(template: str, text: str, has_image: bool) -> str:
    """The prompt string for one question.

    v1: the vicuna_v1 conversation with the image first in the user turn, ending in
    `ASSISTANT:` (§3.1, §3.2). v0 / llava_v0: LLaVA's `conv_llava_v0`, the same image placement,
    ending in `###Assistant:`. minigpt4 / minigpt4_2304: MiniGPT-4's demo prompt with the image
    as `<Img><ImageHere></Img>` before the question (MINIGPT4.md §2.1). plain: `<image>`
    followed by `text` verbatim (a caption prefix, usually empty), as stage-1 training saw it
    (§3.3). none: `text` as given, `<image>` (or `<ImageHere>`) marking the image.
    """
    if template in ("v1", "v0", "llava_v0") or template in MINIGPT4_TEMPLATES:
        return render_chat([text], has_image, template=template)
    if template == "plain":
        return (DEFAULT_IMAGE_TOKEN if has_image else "") + text
    if template == "none":
        return text
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")


def render_chat(turns: Sequence[str], has_image: bool, system: str | None = None,
                template: str = "v1") -> str:
    """Prompt for a conversation whose turns alternate user/assistant and end with a user turn.

    v1 / v0: the image (if any) leads the first user turn as `preprocess_multimodal` puts it;
    `system` replaces the template's system message (`conv.system`, §3.1) when given.
    minigpt4*: `Chat.upload_img` + `Chat.ask` (MINIGPT4.md §2.1), `system` ignored."""
    turns = list(turns)
    if template in MINIGPT4_TEMPLATES:
        pairs = [(q, a or None) for q, a in zip(turns[::2], [*turns[1::2], None])]
        return minigpt4_prompts.demo_prompt(pairs, template, has_image)
    if has_image:
        turns[0] = templates.move_image_token_first(DEFAULT_IMAGE_TOKEN + "\n" + turns[0])
    conv = templates.get_template(template)
    if system is not None:
        conv = dataclasses.replace(conv, system=system)
    render = templates.render_single if conv.style == "single" else templates.render_v1
    return render(turns + [""], conv)  # an empty message renders `ASSISTANT:` / `Assistant:`


def answer_text(template: str, text: str) -> str:
    """The answer as the template's reference prints it: MiniGPT-4's `Chat.answer` cut
    (`split('###')[0].split('Assistant:')[-1].strip()`, MINIGPT4.md §2.3); others as given."""
    return minigpt4_prompts.cut_answer(text) if template in MINIGPT4_TEMPLATES else text


def minigpt4_stop_ids(template: str, tokenizer: SentencePieceTokenizer) -> tuple[tuple[int, ...], ...]:
    """MiniGPT-4's `StoppingCriteriaSub(stops=[[835], [2277, 29937]])`: "###" as LLaMA's vocab
    encodes it, `▁###` or `##` `#` (MINIGPT4.md §2.3), looked up by piece in this tokenizer
    (so a tiny test vocabulary works too); sequences with a piece the vocabulary lacks are left
    out. Empty for other templates."""
    if template not in MINIGPT4_TEMPLATES:
        return ()
    out = []
    for pieces in minigpt4_prompts.STOP_PIECES:
        ids = [tokenizer.piece_id(p) for p in pieces]
        if all(i is not None for i in ids):
            out.append(tuple(ids))
    return tuple(out)


def encode_prompt(prompt: str, tokenizer: SentencePieceTokenizer, num_image_tokens: int,
                  has_image: bool, image_token_id: int = IMAGE_TOKEN_INDEX) -> np.ndarray:
    """Ids as the model consumes them: `tokenizer_image_token` (§1.6), then each `<image>`
    placeholder repeated once per image feature row (DESIGN.md "Image tokens"). A prompt that
    marks the image with MiniGPT-4's `<ImageHere>` is split there instead (`get_context_emb`:
    segments tokenized separately, BOS only on the first, MINIGPT4.md §2.2)."""
    if minigpt4_prompts.IMAGE_HERE in prompt:
        return _encode_minigpt4_prompt(prompt, tokenizer, num_image_tokens, has_image,
                                       image_token_id)
    n_images = prompt.count(DEFAULT_IMAGE_TOKEN)
    if has_image and n_images != 1:
        raise ValueError(f"prompt must mark the image with exactly one {DEFAULT_IMAGE_TOKEN!r}, "
                         f"found {n_images}: {prompt!r}")
    if not has_image and n_images:
        raise ValueError(f"prompt has {DEFAULT_IMAGE_TOKEN!r} but no image was given: {prompt!r}")
    ids, _ = expand_image_tokens(tokenizer_image_token(prompt, tokenizer), None, num_image_tokens)
    return np.where(ids == IMAGE_TOKEN_INDEX, image_token_id, ids).astype(np.int32)


def _encode_minigpt4_prompt(prompt: str, tokenizer: SentencePieceTokenizer,
                            num_image_tokens: int, has_image: bool, image_token_id: int
                            ) -> np.ndarray:
    n_images = prompt.count(minigpt4_prompts.IMAGE_HERE)
    if not has_image or n_images != 1:
        raise ValueError(f"prompt must mark the image with exactly one "
                         f"{minigpt4_prompts.IMAGE_HERE!r} and an image must be given; found "
                         f"{n_images} and {'an' if has_image else 'no'} image: {prompt!r}")

    def encode(segment: str) -> list[int]:  # add_special_tokens=False
        ids = tokenizer.encode(segment)
        return ids[1:] if ids[:1] == [tokenizer.bos_id] else ids

    ids = minigpt4_prompts.segment_ids(prompt, encode, tokenizer.bos_id, image_token_id,
                                       num_image_tokens)
    return np.asarray(ids, np.int32)


def cut_at_stop_ids(ids: Sequence[int], stop_ids: Sequence[Sequence[int]]) -> tuple[list[int], bool]:
    """`ids` up to and including the earliest complete stop sequence (the original's
    StoppingCriteria checks the tail after every token, so the first match ends it), and
    whether one was found."""
    ids = [int(i) for i in ids]
    for end in range(1, len(ids) + 1):
        if any(len(s) <= end and ids[end - len(s):end] == list(s) for s in stop_ids if s):
            return ids[:end], True
    return ids, False


def bucket_length(length: int, bucket: int) -> int:
    """Prompt lengths are rounded up to a multiple of `bucket`, so prompts of similar length
    share one compiled prefill/decode program."""
    return -(-length // bucket) * bucket


def left_pad(rows: Sequence[np.ndarray], pad_id: int, bucket: int = 1,
             batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) [B, L]: rows right-aligned so each row's last token is in the
    last column. Missing rows up to `batch_size` are copies of row 0 (results dropped)."""
    rows = list(rows) + [rows[0]] * ((batch_size or len(rows)) - len(rows))
    width = bucket_length(max(len(r) for r in rows), bucket)
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    return ids, mask


def decode_text(tokenizer: SentencePieceTokenizer, ids: Sequence[int]) -> str:
    """Generated text: the tokenizer's `decode(skip_special_tokens=True)`."""
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def generated_ids(row: np.ndarray, eos_ids: Sequence[int]) -> tuple[list[int], bool]:
    """One row of new tokens up to (excluding) the first EOS, and whether EOS was emitted."""
    ids = [int(t) for t in row]
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[:i], True
    return ids, False


def final_text(tokenizer: SentencePieceTokenizer, ids: Sequence[int],
               stop_strings: Sequence[str]) -> tuple[str, list[int], bool]:
    """The answer of generated ids (EOS excluded): (text cut before the earliest stop string and
    stripped, the ids up to the one that completes the stop string, whether one was found)."""
    ids = [int(i) for i in ids]
    text, stopped = cut_at_stop(decode_text(tokenizer, ids), stop_strings)
    if stopped:
        # Keep the tokens up to the one that completes the stop string.
        ids = next(ids[:k] for k in range(1, len(ids) + 1)
                   if cut_at_stop(decode_text(tokenizer, ids[:k]), stop_strings)[1])
    return text.strip(), ids, stopped
