"""MiniGPT-4's two training inputs as host-sharded, checkpointable grain pipelines, built
exactly like the LLaVA JSON path (pipeline.py: shuffle → repeat → host slice → map →
CountingBatch → DataIterator), so skips are counted and the iterator state resumes.

    stage 1: webdataset shards (image + caption), caption through blip_caption, no prompt,
             max_txt_len 32, end_sym "\\n" (MINIGPT4.md §3.1-§3.4)
    stage 2: cc_sbu_align (`filter_cap.json` + `image/{image_id}.jpg`), raw caption, one
             instruction of alignment.txt in `###Human: {} ###Assistant: `, max_txt_len 160,
             end_sym "###"

Randomness (the stage-2 instruction, the training crop) is drawn from a Generator seeded by
(seed, host, position in this host's stream), so a resumed run draws what an uninterrupted one
would. The original draws one instruction per batch (shared by its samples); here each sample
draws its own: the same distribution, and no batch-level state in the per-example map.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from sgv_jax.constants import CLIP_MEAN, CLIP_STD
from sgv_jax.data import batching, images, minigpt4_prompts, minigpt4_samples, tokenize
from sgv_jax.data.pipeline import DataIterator, batched_iterator, load_record_image
from sgv_jax.data.validate import BadRecord
from sgv_jax.data.webdataset import WebDatasetShards

STAGES = (1, 2)


class CCSBUAlign:
    """Stage-2 records: `{"annotations": [{"image_id", "caption"}, ...]}` (cc_sbu_dataset.py)."""

    def __init__(self, filter_cap: str, image_folder: str):
        with open(filter_cap, encoding="utf-8") as f:
            data = json.load(f)
        try:
            annotations = data["annotations"]
            self.records = [(str(a["image_id"]), a["caption"]) for a in annotations]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{filter_cap}: expected {{'annotations': [{{'image_id': ..., "
                             f"'caption': ...}}]}} as cc_sbu_align ships it; missing {e}") from None
        self.image_folder = image_folder

    def __len__(self) -> int:
        return len(self.records)

    def read(self, index: int):
        image_id, caption = self.records[index]
        image = load_record_image(self.image_folder, f"{image_id}.jpg", image_id)
        return image_id, image, caption


class MiniGPT4ExampleMaker:
    """(position, record index) -> one padded example, or a skip marker."""

    def __init__(self, source, tokenizer, image_config: images.ImageConfig, stage: int,
                 instructions: tuple[str, ...], max_txt_len: int, end_sym: str,
                 num_image_tokens: int, max_length: int, seed: int, shard_index: int,
                 strict: bool = False):
        self.source = source
        self.tokenizer = tokenizer
        self.process_image = images.ImageProcessor(image_config)
        self.stage = stage
        self.instructions = instructions
        self.max_txt_len = max_txt_len
        self.end_sym = end_sym
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.seed = seed
        self.shard_index = shard_index
        self.strict = strict

    def __call__(self, position: int, index: int) -> dict[str, Any]:
        try:
            return self.make(int(position), int(index))
        except BadRecord as e:
            if self.strict:
                raise
            return batching.skip_marker(e.reason, e.record_id)

    def make(self, position: int, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, self.shard_index, position))
        _, image, caption = self.source.read(index)
        if self.stage == 1:
            answer, prompt = minigpt4_samples.blip_caption(caption), None
        else:
            answer, prompt = caption, minigpt4_samples.stage2_prompt(self.instructions, rng)
        example = minigpt4_samples.encode_sample(
            self.tokenizer, answer, prompt=prompt, end_sym=self.end_sym,
            max_txt_len=self.max_txt_len, num_image_tokens=self.num_image_tokens,
            max_length=self.max_length)
        example["pixel_values"] = self.process_image(image, rng)
        example["has_image"] = np.asarray(True)
        return example


def required_length(tokenizer, stage: int, instructions: tuple[str, ...], max_txt_len: int,
                    num_image_tokens: int) -> int:
    """Tokens of the longest sample: BOS + prompt + image + max_txt_len answer tokens."""
    prompt = 0
    if stage == 2:
        prompt = max(sum(len(minigpt4_samples.encode_plain(tokenizer, s))
                         for s in minigpt4_prompts.split_at_image(
                             minigpt4_prompts.train_prompt(line)))
                     for line in instructions)
    return 1 + prompt + num_image_tokens + max_txt_len


def make_dataset(
        stage: int,
        train_file: str,
        image_folder: str,
        tokenizer: str | tokenize.Tokenizer,
        *,
        instructions: tuple[str, ...] = minigpt4_samples.ALIGNMENT_PROMPTS,
        max_txt_len: int,
        end_sym: str,
        aspect: str = "random_resized_crop",
        image_size: int = 224,
        image_mean: tuple[float, float, float] = CLIP_MEAN,
        image_std: tuple[float, float, float] = CLIP_STD,
        num_image_tokens: int = 32,
        max_length: int,
        global_batch_size: int,
        seed: int = 0,
        num_epochs: int | None = 1,
        shard_index: int | None = None,
        shard_count: int | None = None,
        worker_count: int = 0,
        worker_buffer_size: int = 2,
        strict: bool = False,
) -> DataIterator:
    """This host's batch iterator over stage-1 shards (`train_file`: a folder or glob of .tar)
    or stage-2 cc_sbu_align (`train_file`: filter_cap.json, `image_folder`: its image/)."""
    if stage not in STAGES:
        raise ValueError(f"MiniGPT-4 stage {stage!r}: use 1 (webdataset shards) or 2 (cc_sbu_align)")
    if shard_index is None or shard_count is None:
        import jax  # only here: the data modules themselves do not need jax
        shard_index, shard_count = jax.process_index(), jax.process_count()
    if global_batch_size % shard_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the "
                         f"{shard_count} hosts")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = tokenize.load_tokenizer(tokenizer)
    need = required_length(tokenizer, stage, instructions, max_txt_len, num_image_tokens)
    if max_length < need:
        raise ValueError(f"data.max_length {max_length} is shorter than the longest MiniGPT-4 "
                         f"stage-{stage} sample ({need} tokens: BOS + prompt + "
                         f"{num_image_tokens} image + {max_txt_len} answer); raise it to {need}")
    source = WebDatasetShards(train_file) if stage == 1 else CCSBUAlign(train_file, image_folder)
    maker = MiniGPT4ExampleMaker(
        source, tokenizer, images.ImageConfig(size=image_size, aspect=aspect,
                                              mean=tuple(image_mean), std=tuple(image_std)),
        stage, tuple(instructions), max_txt_len, end_sym, num_image_tokens, max_length, seed,
        shard_index, strict)
    return batched_iterator(len(source), maker, seed, num_epochs, shard_index, shard_count,
                            global_batch_size, worker_count, worker_buffer_size,
                            with_position=True)


def count_records(stage: int, train_file: str, image_folder: str = "") -> int:
    source = WebDatasetShards(train_file) if stage == 1 else CCSBUAlign(train_file, image_folder)
    return len(source)
