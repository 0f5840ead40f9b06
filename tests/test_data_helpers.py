"""Shared builders for the data tests: a tiny LLaMA-like tokenizer, records, images.

No tests here. The tokenizer follows REFERENCE.md §8 (BPE, byte fallback, identity
normalisation, dummy prefix, unk/bos/eos = 0/1/2) and is cached under the temp dir, so every
test module reuses one trained model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np
import sentencepiece as spm
from PIL import Image

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's questions.")

_CORPUS = [
        SYSTEM,
        "USER: What is in the picture? ASSISTANT: A black cat sits on a red sofa.",
        "USER: Describe the image in detail. ASSISTANT: Two dogs run across a green field.",
        "USER: What colour is the car? ASSISTANT: The car is blue and parked near 42 trees.",
        "Render clearly the scene: a small house, a tall tower, the sea and 7 boats.",
        "Hello there! How are you today? I am fine, thank you very much.",
        "The quick brown fox jumps over the lazy dog.\nNew line here.\n",
]


def train_tokenizer(folder: str, vocab_size: int = 400, lines: list[str] | None = None,
                                        input_sentence_size: int = 0) -> str:
    """Trains (once per content) a LLaMA-like sentencepiece BPE model; returns its path."""
    lines = lines or _CORPUS * 20
    key = hashlib.sha1(("\n".join(lines) + str(vocab_size)).encode()).hexdigest()[:12]
    prefix = os.path.join(folder, f"sp_{vocab_size}_{key}")
    if os.path.isfile(prefix + ".model"):
        return prefix + ".model"
    os.makedirs(folder, exist_ok=True)
    text_file = prefix + ".txt"
    with open(text_file, "w") as f:
        f.write("\n".join(lines))
    spm.SentencePieceTrainer.train(
            input=text_file, model_prefix=prefix + f".tmp{os.getpid()}", model_type="bpe",
            vocab_size=vocab_size, byte_fallback=True, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
            allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
            minloglevel=2, num_threads=1)
    for ext in (".model", ".vocab"):
        os.replace(prefix + f".tmp{os.getpid()}" + ext, prefix + ext)
    return prefix + ".model"


def tiny_tokenizer_path() -> str:
    return train_tokenizer(os.path.join(tempfile.gettempdir(), "sgv_jax_data_tests"))


def write_hf_dir(folder: str, model_file: str, legacy: bool | None) -> str:
    """A tokenizer directory as Vicuna ships one: tokenizer.model + tokenizer_config.json.
    (Not via LlamaTokenizer(vocab_file=...).save_pretrained: REFERENCE.md §8 warns it breaks.)"""
    os.makedirs(folder, exist_ok=True)
    with open(model_file, "rb") as src, open(os.path.join(folder, "tokenizer.model"), "wb") as dst:
        dst.write(src.read())
    special = {"__type": "AddedToken", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    config = {
            "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
            "bos_token": {"content": "<s>", **special}, "eos_token": {"content": "</s>", **special},
            "unk_token": {"content": "<unk>", **special}, "pad_token": None,
            "model_max_length": 2048, "padding_side": "right", "tokenizer_class": "LlamaTokenizer",
    }
    if legacy is not None:
        config["legacy"] = legacy
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return folder


def write_image(path: str, width: int, height: int, seed: int = 0, fmt: str = "PNG") -> str:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def write_records(path: str, records: list, jsonl: bool = False) -> str:
    with open(path, "w") as f:
        if jsonl:
            f.write("".join(json.dumps(r) + "\n" for r in records))
        else:
            json.dump(records, f, indent=1)
    return path


def v1_record(rid: str, turns: list[str], image: str | None = None) -> dict:
    record = {"id": rid, "conversations": [
            {"from": ("human", "gpt")[i % 2], "value": v} for i, v in enumerate(turns)]}
    if image is not None:
        record["image"] = image
    return record
