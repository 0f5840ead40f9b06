"""The embedded demo dataset: coloured shapes at positions, deterministic from a seed.

Each 32x32 image holds one shape (circle, square, triangle, cross) of one colour (red, green,
blue, yellow) in one quadrant, with jittered size/offset and background noise. Stage 1 trains on
captions ("a red circle at the top left."), stage 2 on three-turn question/answer
conversations; held-out images measure answer accuracy (chance: 25% per question).
"""

from __future__ import annotations

import json
import os
import random

import jax
import numpy as np
from PIL import Image, ImageDraw

from sgv_jax.data.templates import VICUNA_V1
from sgv_jax.paths import local_mirror

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
          "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}
QUESTIONS = {
    "color": "What color is the shape?",
    "shape": "What shape is in the image?",
    "position": "Where is the shape?",
}
IMAGE_SIZE = 32
SPLITS = {"train": 3000, "eval": 200}
# Tokens of the demo tokenizer; the `demo` preset's vocab has 512 rows, so the 12 unused rows
# after the last token take llava-hf's `<image>` and `<pad>` on export (exporters.py).
TOKENIZER_VOCAB = 500


def draw(color: str, shape: str, position: str, rng: random.Random) -> Image.Image:
    noise = np.random.default_rng(rng.getrandbits(32)).integers(90, 140, (IMAGE_SIZE, IMAGE_SIZE, 3))
    image = Image.fromarray(noise.astype(np.uint8))
    canvas = ImageDraw.Draw(image)
    half = IMAGE_SIZE // 2
    qx, qy = POSITIONS[position]
    size = 12  # fixed, so each of the four patches a shape touches shows a fixed fragment
    cx = qx * half + half // 2 + rng.randint(-1, 1)
    cy = qy * half + half // 2 + rng.randint(-1, 1)
    x0, y0, x1, y1 = cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2
    fill = COLORS[color]
    if shape == "circle":
        canvas.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        canvas.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        canvas.polygon([(cx, y0), (x0, y1), (x1, y1)], fill=fill)
    else:
        w = max(2, size // 4)
        canvas.rectangle((cx - w // 2, y0, cx + w // 2, y1), fill=fill)
        canvas.rectangle((x0, cy - w // 2, x1, cy + w // 2), fill=fill)
    return image


def caption(color: str, shape: str, position: str) -> str:
    return f"a {color} {shape} at the {position}."


def generate(out_dir: str, seed: int = 0) -> dict[str, str]:
    """Writes images, the four record files, answers and a tokenizer under out_dir (once)."""
    paths = {name: os.path.join(out_dir, f"{name}.json") for name in
             ("pretrain_train", "pretrain_eval", "finetune_train", "finetune_eval")}
    paths["answers"] = os.path.join(out_dir, "eval_answers.jsonl")
    paths["tokenizer"] = os.path.join(out_dir, "tokenizer")
    paths["image_folder"] = out_dir
    done = os.path.join(out_dir, ".complete")
    if os.path.exists(done):
        return paths
    rng = random.Random(seed)
    answers = []
    for split, count in SPLITS.items():
        os.makedirs(os.path.join(out_dir, "images", split), exist_ok=True)
        captions, conversations = [], []
        for i in range(count):
            color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
            position = rng.choice(list(POSITIONS))
            rel = f"images/{split}/{i:05d}.png"
            draw(color, shape, position, rng).save(os.path.join(out_dir, rel))
            rid = f"{split}-{i:05d}"
            captions.append({"id": rid, "image": rel, "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."},
                {"from": "gpt", "value": caption(color, shape, position)}]})
            truth = {"color": color, "shape": shape, "position": position}
            order = rng.sample(list(QUESTIONS), len(QUESTIONS))
            turns = []
            for k, kind in enumerate(order):
                question = QUESTIONS[kind]
                turns.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + question})
                turns.append({"from": "gpt", "value": truth[kind]})
                if split == "eval":
                    answers.append({"id": rid, "image": rel, "kind": kind, "question": question,
                                    "answer": truth[kind]})
            conversations.append({"id": rid, "image": rel, "conversations": turns})
        for name, records in (("pretrain", captions), ("finetune", conversations)):
            with open(paths[f"{name}_{split}"], "w") as f:
                json.dump(records, f)
    with open(paths["answers"], "w") as f:
        f.writelines(json.dumps(a) + "\n" for a in answers)
    train_tokenizer(paths["tokenizer"])
    open(done, "w").close()
    return paths


def train_tokenizer(out_dir: str, extra_lines: tuple[str, ...] = ()) -> None:
    """A LLaMA-like BPE sentencepiece model over the demo's words (REFERENCE §8 settings)."""
    import sentencepiece as spm

    os.makedirs(out_dir, exist_ok=True)
    lines = [VICUNA_V1.system, "USER: ASSISTANT:", "Describe the image.", *QUESTIONS.values(),
             *extra_lines]
    for color in COLORS:
        for shape in SHAPES:
            for position in POSITIONS:
                lines += [caption(color, shape, position), color, shape, position]
    corpus = os.path.join(out_dir, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(lines * 4) + "\n")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(out_dir, "tokenizer"), model_type="bpe",
        vocab_size=TOKENIZER_VOCAB, hard_vocab_limit=True, byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    os.remove(corpus)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"legacy": True, "add_bos_token": True, "add_eos_token": False}, f)


def resolve_demo_data(config, workdir: str) -> None:
    """Fill the empty data fields of a demo config with the synthetic dataset, generated once
    into `data.demo_dir` (default WORKDIR/demo_data)."""
    if config.get("minigpt4") is not None:
        from sgv_jax.demo.minigpt4_data import resolve_minigpt4_demo_data

        return resolve_minigpt4_demo_data(config, workdir)
    stage = "pretrain" if config.data.template == "plain" else "finetune"
    demo_dir = config.data.demo_dir or local_mirror(workdir, "demo_data")
    if jax.process_index() == 0:
        from sgv_jax.data.records import build_index

        generated = generate(demo_dir, seed=0)
        for name in ("pretrain_train", "pretrain_eval", "finetune_train", "finetune_eval"):
            build_index(generated[name])  # once, before other hosts open the files
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("demo_data")
    paths = generate(demo_dir, seed=0)
    with config.unlocked():
        config.data.train_file = config.data.train_file or paths[f"{stage}_train"]
        config.data.eval_file = config.data.eval_file or paths[f"{stage}_eval"]
        config.data.image_folder = config.data.image_folder or paths["image_folder"]
        config.data.tokenizer = config.data.tokenizer or paths["tokenizer"]
