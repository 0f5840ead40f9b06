"""MiniGPT-4 training samples: ids, labels and attention mask exactly as the original's
`prompt_wrap` + `concat_emb_input_output` lay out the embeddings (MINIGPT4.md §3.1).

    [BOS] [prompt before <ImageHere>] [Q image positions] [prompt after] [answer + end_sym] [pad]

Stage 1 has no prompt (`[BOS][image][caption\\n]`); stage 2 wraps one line of
`prompts/alignment.txt` in `###Human: {} ###Assistant: `. Each prompt segment and the answer are
tokenized on their own with `add_special_tokens=False` (so each gets sentencepiece's dummy
prefix); the answer + end_sym is truncated to `max_txt_len` tokens; labels are the answer
tokens only, with any token equal to the pad id masked as the original's
`masked_fill(ids == pad_token_id, -100)` does. Pure functions; no I/O.
"""

from __future__ import annotations

import re

import numpy as np

from sgv_jax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from sgv_jax.data import minigpt4_prompts as prompts

# prompts/alignment.txt of MiniGPT-4 (MINIGPT4.md §3.4): stage 2's instruction list.
ALIGNMENT_PROMPTS = (
    "<Img><ImageHere></Img> Describe this image in detail.",
    "<Img><ImageHere></Img> Take a look at this image and describe what you notice.",
    "<Img><ImageHere></Img> Please provide a detailed description of the picture.",
    "<Img><ImageHere></Img> Could you describe the contents of this image for me?",
)
# minigpt4_stage1_pretrain.yaml / minigpt4_stage2_finetune.yaml (MINIGPT4.md §3.2).
STAGE1 = {"max_txt_len": 32, "end_sym": "\n"}
STAGE2 = {"max_txt_len": 160, "end_sym": "###"}
CAPTION_MAX_WORDS = 50  # blip_caption's max_words (MINIGPT4.md §3.3)


def blip_caption(caption: str, max_words: int = CAPTION_MAX_WORDS) -> str:
    """LAVIS `BlipCaptionProcessor.pre_caption` (stage 1 captions only, MINIGPT4.md §3.3):
    lowercase, punctuation to spaces, collapse runs of whitespace, strip, keep max_words."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


def read_prompt_file(path: str) -> tuple[str, ...]:
    """The instruction lines of a prompts file (alignment.txt): those holding `<ImageHere>`,
    as the original's `[p for p in raw_prompts if "<ImageHere>" in p]` keeps them."""
    with open(path, encoding="utf-8") as f:
        lines = tuple(line for line in f.read().splitlines() if prompts.IMAGE_HERE in line)
    if not lines:
        raise ValueError(f"{path}: no line holds {prompts.IMAGE_HERE}; expected MiniGPT-4's "
                         "prompts/alignment.txt format (one instruction per line)")
    return lines


def encode_plain(tokenizer, text: str) -> list[int]:
    """`llama_tokenizer(text, add_special_tokens=False).input_ids`."""
    ids = tokenizer.encode(text)
    if getattr(tokenizer, "add_bos", False) and ids[:1] == [tokenizer.bos_id]:
        ids = ids[1:]
    if getattr(tokenizer, "add_eos", False) and ids[-1:] == [tokenizer.eos_id]:
        ids = ids[:-1]
    return ids


def encode_sample(tokenizer, answer: str, *, prompt: str | None, end_sym: str, max_txt_len: int,
                  num_image_tokens: int, max_length: int) -> dict[str, np.ndarray]:
    """One padded example (`input_ids`, `labels`, `attention_mask`, each [max_length] int32).

    `prompt`: the full training prompt holding one `<ImageHere>` (stage 2), or None (stage 1:
    the image positions alone). Raises ValueError when the sample does not fit max_length."""
    if prompt is None:
        before, after = [], []
    else:
        segments = prompts.split_at_image(prompt)
        if len(segments) != 2:
            raise ValueError(f"prompt {prompt!r} must hold exactly one {prompts.IMAGE_HERE}")
        before, after = (encode_plain(tokenizer, s) for s in segments)
    target = encode_plain(tokenizer, answer + end_sym)[:max_txt_len]
    ids = [tokenizer.bos_id, *before, *[IMAGE_TOKEN_INDEX] * num_image_tokens, *after, *target]
    if len(ids) > max_length:
        raise ValueError(f"{len(ids)} tokens do not fit max_length {max_length}")
    pad_id = tokenizer.pad_id
    labels = [IGNORE_INDEX] * (len(ids) - len(target)) + [
        IGNORE_INDEX if t == pad_id else t for t in target]
    fill = max_length - len(ids)
    return {"input_ids": np.asarray(ids + [pad_id] * fill, np.int32),
            "labels": np.asarray(labels + [IGNORE_INDEX] * fill, np.int32),
            "attention_mask": np.asarray([1] * len(ids) + [0] * fill, np.int32)}


def stage2_prompt(instructions: tuple[str, ...], rng: np.random.Generator) -> str:
    """One instruction drawn from the list, in the training template (§3.1)."""
    return prompts.train_prompt(instructions[int(rng.integers(len(instructions)))])
