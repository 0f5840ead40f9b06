"""The embedded demo data for MiniGPT-4's two stages, in the original's formats (MINIGPT4.md
§3.4), drawn like the LLaVA demo's (coloured shapes, demo/data.py):

    stage1/NNNNN.tar      webdataset shards of {key}.jpg + {key}.json {"caption": ...}
    cc_sbu_align/filter_cap.json + cc_sbu_align/image/{image_id}.jpg   (stage 2)
    tokenizer/            a tiny LLaMA-like sentencepiece model that knows the templates
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile

import jax

from sgv_jax.data.minigpt4_prompts import TRAIN_TEMPLATE
from sgv_jax.data.minigpt4_samples import ALIGNMENT_PROMPTS
from sgv_jax.demo.data import COLORS, POSITIONS, SHAPES, caption, draw, train_tokenizer
from sgv_jax.paths import local_mirror

STAGE1_SAMPLES, SHARD_SIZE = 3000, 500
STAGE2_SAMPLES = 1000


def detailed_caption(color: str, shape: str, position: str) -> str:
    """Stage 2's answer: a longer description (cc_sbu_align's captions are paragraphs)."""
    return f"The image shows a {color} {shape} in the {position} corner of a grey background."


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def generate(out_dir: str, seed: int = 0) -> dict[str, str]:
    """Writes both stages' data and a tokenizer under out_dir (once); returns their paths."""
    paths = {"stage1": os.path.join(out_dir, "stage1"),
             "filter_cap": os.path.join(out_dir, "cc_sbu_align", "filter_cap.json"),
             "image_folder": os.path.join(out_dir, "cc_sbu_align", "image"),
             "tokenizer": os.path.join(out_dir, "tokenizer")}
    done = os.path.join(out_dir, ".complete")
    if os.path.exists(done):
        return paths
    rng = random.Random(seed)
    os.makedirs(paths["stage1"], exist_ok=True)
    os.makedirs(paths["image_folder"], exist_ok=True)

    def draw_one():
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        position = rng.choice(list(POSITIONS))
        return draw(color, shape, position, rng), (color, shape, position)

    for first in range(0, STAGE1_SAMPLES, SHARD_SIZE):
        with tarfile.open(os.path.join(paths["stage1"], f"{first // SHARD_SIZE:05d}.tar"), "w") as tar:
            for i in range(first, min(first + SHARD_SIZE, STAGE1_SAMPLES)):
                image, truth = draw_one()
                _add(tar, f"{i:09d}.jpg", _jpeg(image))
                _add(tar, f"{i:09d}.json", json.dumps({"caption": caption(*truth),
                                                       "key": f"{i:09d}"}).encode())
    annotations = []
    for i in range(STAGE2_SAMPLES):
        image, truth = draw_one()
        image.save(os.path.join(paths["image_folder"], f"{i}.jpg"), quality=95)
        annotations.append({"image_id": str(i), "caption": detailed_caption(*truth)})
    with open(paths["filter_cap"], "w") as f:
        json.dump({"annotations": annotations}, f)
    lines = [TRAIN_TEMPLATE.format(p) for p in ALIGNMENT_PROMPTS]
    lines += [detailed_caption(c, s, p) + "###" for c in COLORS for s in SHAPES for p in POSITIONS]
    train_tokenizer(paths["tokenizer"], tuple(lines))
    open(done, "w").close()
    return paths


def resolve_minigpt4_demo_data(config, workdir: str) -> None:
    """Fill the empty data fields of a MiniGPT-4 demo config (stage 1: the shards; stage 2:
    cc_sbu_align), generated once into `data.demo_dir` (default WORKDIR/demo_data)."""
    demo_dir = config.data.demo_dir or local_mirror(workdir, "demo_data")
    demo_dir = os.path.join(demo_dir, "minigpt4")
    if jax.process_index() == 0:
        generate(demo_dir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("minigpt4_demo_data")
    paths = generate(demo_dir)
    stage1 = config.minigpt4.stage == 1
    with config.unlocked():
        config.data.train_file = config.data.train_file or (
            paths["stage1"] if stage1 else paths["filter_cap"])
        config.data.image_folder = config.data.image_folder or ("" if stage1 else paths["image_folder"])
        config.data.tokenizer = config.data.tokenizer or paths["tokenizer"]
