"""Shared builders for the generation tests (no tests here): a tiny model sized to the tiny
sentencepiece tokenizer of the data tests, a Generator, an sgv checkpoint and image folders."""

from __future__ import annotations

import dataclasses
import os

import jax

from sgv_jax.data.tokenize import load_tokenizer
from sgv_jax.generation.generator import Generator
from sgv_jax.models import get_preset, llava
from tests.test_data_helpers import tiny_tokenizer_path, write_hf_dir, write_image

TOKENIZER_VOCAB = 400  # test_data_helpers.train_tokenizer's default


def tiny_cfg(vocab_size: int = TOKENIZER_VOCAB):
    """The `tiny` preset with a vocabulary that covers the test tokenizer."""
    cfg = get_preset("tiny")
    return cfg.replace(text=dataclasses.replace(cfg.text, vocab_size=vocab_size))


def tokenizer_dir(folder: str) -> str:
    return write_hf_dir(os.path.join(folder, "tok"), tiny_tokenizer_path(), legacy=None)


def tiny_generator(seed: int = 0, **kwargs) -> Generator:
    cfg = tiny_cfg()
    params = llava.init(cfg, jax.random.key(seed))
    return Generator.from_params(cfg, params, load_tokenizer(tiny_tokenizer_path()), **kwargs)


def write_checkpoint(folder: str, seed: int = 0, vocab_size: int = TOKENIZER_VOCAB) -> str:
    from sgv_jax.checkpoint_sgv import save_sgv

    cfg = tiny_cfg(vocab_size)
    params = llava.init(cfg, jax.random.key(seed))
    return save_sgv(os.path.join(folder, "ckpt"), cfg, params, tokenizer_dir=tokenizer_dir(folder))


def write_images(folder: str, n: int, corrupt: tuple[int, ...] = ()) -> list[str]:
    """img_000.png ... in two sub-folders; the `corrupt` indices hold bytes that are no image."""
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"part{i % 2}", f"img_{i:03d}.png")
        if i in corrupt:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(b"\x89PNG\r\n\x1a\n not really a png")
        else:
            write_image(path, 30 + i, 24 + 2 * i, seed=i)
        paths.append(path)
    return paths
