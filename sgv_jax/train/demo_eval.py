"""The demo's evaluation: greedy answers to held-out questions, accuracy per question kind,
and a short report (loss curves and a grid of images with the model's answers, as PNG)."""

from __future__ import annotations

import json
import os
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm
from PIL import Image, ImageDraw

from sgv_jax.constants import IMAGE_TOKEN_INDEX
from sgv_jax.data import images, templates, tokenize
from sgv_jax.models import llava
from sgv_jax.models.config import VLMConfig
from sgv_jax.train.metrics import read_metrics


def question_prompts(questions: list[dict], tokenizer, num_image_tokens: int) -> np.ndarray:
    """Left-padded v1 prompts ending in 'ASSISTANT:' with the image expanded. [N, L]"""
    rows = []
    for q in questions:
        prompt = templates.render_v1(["<image>\n" + q["question"], None])
        ids = tokenize.tokenizer_image_token(prompt, tokenizer)
        expanded = []
        for i in ids:
            expanded.extend([IMAGE_TOKEN_INDEX] * num_image_tokens if i == IMAGE_TOKEN_INDEX else [i])
        rows.append(expanded)
    width = max(map(len, rows))
    out = np.full((len(rows), width), tokenizer.pad_id, np.int32)
    mask = np.zeros_like(out)
    for r, ids in enumerate(rows):
        out[r, width - len(ids):] = ids
        mask[r, width - len(ids):] = 1
    return out, mask


def greedy_answers(params, cfg: VLMConfig, ids, mask, pixels, eos_id: int, max_new: int = 6,
                   batch_size: int = 100) -> list[list[int]]:
    """Greedy decoding by re-running the forward pass (answers are a few tokens long)."""

    @jax.jit
    def next_token(p, ids, mask, pixels):
        positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels,
                 "positions": positions}
        logits, _ = llava.forward(p, cfg, batch)
        return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

    answers = []
    for start in range(0, len(ids), batch_size):
        b_ids, b_mask = ids[start:start + batch_size], mask[start:start + batch_size]
        b_pix = pixels[start:start + batch_size]
        tokens = []
        for _ in range(max_new):
            tok = np.asarray(next_token(params, b_ids, b_mask, b_pix))
            tokens.append(tok)
            b_ids = np.concatenate([b_ids, tok[:, None]], axis=1)
            b_mask = np.concatenate([b_mask, np.ones_like(tok[:, None])], axis=1)
        for row in np.stack(tokens, axis=1).tolist():
            answers.append(row[:row.index(eos_id)] if eos_id in row else row)
    return answers


def evaluate(params, cfg: VLMConfig, answers_file: str, image_folder: str, tokenizer_dir: str
             ) -> tuple[dict[str, float], list[dict]]:
    with open(answers_file) as f:
        questions = [json.loads(line) for line in f]
    tokenizer = tokenize.load_tokenizer(tokenizer_dir)
    decoder = spm.SentencePieceProcessor(model_file=tokenizer.model_file)
    ids, mask = question_prompts(questions, tokenizer, cfg.num_image_tokens)
    process = images.ImageProcessor(images.ImageConfig(size=cfg.vision.image_size, aspect="pad"))
    pixels = np.stack([process(images.load_image(os.path.join(image_folder, q["image"])))
                       for q in questions])
    outputs = greedy_answers(params, cfg, ids, mask, pixels, tokenizer.eos_id)
    correct, total = defaultdict(int), defaultdict(int)
    results = []
    for q, out in zip(questions, outputs):
        text = decoder.decode(out).strip()
        ok = text.lower().rstrip(".") == q["answer"]
        correct[q["kind"]] += ok
        total[q["kind"]] += 1
        results.append({**q, "prediction": text, "correct": bool(ok)})
    acc = {f"accuracy/{k}": correct[k] / total[k] for k in total}
    acc["accuracy"] = sum(correct.values()) / max(sum(total.values()), 1)
    return acc, results


def plot_losses(workdirs: dict[str, str], path: str, size=(640, 320)) -> None:
    """Training (and eval) loss per stage as a small line chart."""
    w, h = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    series = []
    colors = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    for name, wd in workdirs.items():
        rows = read_metrics(wd)
        for key in ("loss", "eval_loss"):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                series.append((f"{name} {key}", pts))
    if not series:
        image.save(path)
        return
    max_step = max(s for _, pts in series for s, _ in pts)
    max_loss = max(v for _, pts in series for _, v in pts)
    left, bottom, top = 50, h - 30, 20
    draw.line([(left, top), (left, bottom), (w - 10, bottom)], fill="black")
    draw.text((5, top), f"{max_loss:.2f}", fill="black")
    draw.text((5, bottom - 10), "0", fill="black")
    draw.text((w - 60, bottom + 8), f"step {max_step}", fill="black")
    for k, (label, pts) in enumerate(series):
        xy = [(left + (w - 60) * s / max(max_step, 1), bottom - (bottom - top) * v / max_loss)
              for s, v in pts]
        color = colors[k % len(colors)]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        draw.text((w - 200, top + 14 * k), label, fill=color)
    image.save(path)


def answer_grid(results: list[dict], image_folder: str, path: str, n: int = 12) -> None:
    """Held-out images (upscaled) with question kind, model answer and truth."""
    cell_w, cell_h, scale = 160, 150, 3
    shown = results[:n]
    cols = 4
    rows = (len(shown) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for i, r in enumerate(shown):
        x, y = (i % cols) * cell_w, (i // cols) * cell_h
        img = Image.open(os.path.join(image_folder, r["image"])).convert("RGB")
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        grid.paste(img, (x + 5, y + 5))
        mark = "ok" if r["correct"] else "WRONG"
        draw.text((x + 5, y + 105), f"{r['kind']}: {r['prediction']}", fill="black")
        draw.text((x + 5, y + 120), f"truth: {r['answer']} [{mark}]",
                  fill=(0, 120, 0) if r["correct"] else (200, 0, 0))
    grid.save(path)
