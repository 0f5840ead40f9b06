"""MiniGPT-4 mapping tables (MINIGPT4.md §4, §5.1): our path ↔ their key ↔ transform, for the
original files (`eva_vit_g.pth`, `blip2_pretrained_flant5xxl.pth`, `pretrained_minigpt4.pth`,
the Vicuna folder) and for HF `Blip2ForConditionalGeneration` with a LLaMA text model.

Read top to bottom like a spec. Two quirks are not 1:1 renames and live in named helpers:
HF fuses the ViT's `q_bias`/`v_bias` into one `qkv.bias = cat(q, 0, v)` (`split_qkv_bias` /
`fuse_qkv_bias`), and the original's `cls_token`/`pos_embed`/`query_tokens` carry a leading 1.
"""

from __future__ import annotations

import re

import numpy as np

from sgv_jax.convert.formats import (
    CONV,
    IDENTITY,
    LINEAR,
    LLAMA_ROWS,
    LM_HEAD_ROW,
    Row,
    Transform,
)
from sgv_jax.models.config import MiniGPT4Config

# [1, ...] in torch (cls_token [1,1,D], pos_embed [1,N,D], query_tokens [1,Q,D]) ↔ ours without it.
LEADING_ONE = Transform("drop leading 1", lambda w: w.reshape(w.shape[1:]), lambda w: w[None],
                        lambda s: (1, *s))
# cls_token [1, 1, D] ↔ our class_embedding [D].
CLS = Transform("cls [1,1,D]", lambda w: w.reshape(w.shape[-1]), lambda w: w.reshape(1, 1, -1),
                lambda s: (1, 1, *s))


def _weight_bias(ours: str, theirs: str) -> list[Row]:
    return [(f"{ours}/kernel", f"{theirs}.weight", LINEAR), (f"{ours}/bias", f"{theirs}.bias", IDENTITY)]


def _norm(ours: str, theirs: str) -> list[Row]:
    return [(f"{ours}/scale", f"{theirs}.weight", IDENTITY), (f"{ours}/bias", f"{theirs}.bias", IDENTITY)]


# EVA ViT-g as `eva_vit_g.pth` names it (LAVIS eva_vit.py VisionTransformer).
EVA_ORIGINAL_ROWS: list[Row] = [
    ("embeddings/class_embedding", "cls_token", CLS),
    ("embeddings/position_embedding", "pos_embed", LEADING_ONE),
    ("embeddings/patch_embedding/kernel", "patch_embed.proj.weight", CONV),
    ("embeddings/patch_embedding/bias", "patch_embed.proj.bias", IDENTITY),
    *_norm("layers/{i}/layer_norm1", "blocks.{i}.norm1"),
    ("layers/{i}/self_attn/qkv/kernel", "blocks.{i}.attn.qkv.weight", LINEAR),
    ("layers/{i}/self_attn/q_bias", "blocks.{i}.attn.q_bias", IDENTITY),
    ("layers/{i}/self_attn/v_bias", "blocks.{i}.attn.v_bias", IDENTITY),
    *_weight_bias("layers/{i}/self_attn/projection", "blocks.{i}.attn.proj"),
    *_norm("layers/{i}/layer_norm2", "blocks.{i}.norm2"),
    *_weight_bias("layers/{i}/mlp/fc1", "blocks.{i}.mlp.fc1"),
    *_weight_bias("layers/{i}/mlp/fc2", "blocks.{i}.mlp.fc2"),
]

# The same as HF's Blip2VisionModel names it; `q_bias`/`v_bias` are the halves of `qkv.bias`
# (split before the table is applied, fused after it is read backwards).
EVA_HF_ROWS: list[Row] = [
    ("embeddings/class_embedding", "embeddings.class_embedding", CLS),
    ("embeddings/position_embedding", "embeddings.position_embedding", LEADING_ONE),
    ("embeddings/patch_embedding/kernel", "embeddings.patch_embedding.weight", CONV),
    ("embeddings/patch_embedding/bias", "embeddings.patch_embedding.bias", IDENTITY),
    *_norm("layers/{i}/layer_norm1", "encoder.layers.{i}.layer_norm1"),
    ("layers/{i}/self_attn/qkv/kernel", "encoder.layers.{i}.self_attn.qkv.weight", LINEAR),
    ("layers/{i}/self_attn/q_bias", "encoder.layers.{i}.self_attn.q_bias", IDENTITY),
    ("layers/{i}/self_attn/v_bias", "encoder.layers.{i}.self_attn.v_bias", IDENTITY),
    *_weight_bias("layers/{i}/self_attn/projection", "encoder.layers.{i}.self_attn.projection"),
    *_norm("layers/{i}/layer_norm2", "encoder.layers.{i}.layer_norm2"),
    *_weight_bias("layers/{i}/mlp/fc1", "encoder.layers.{i}.mlp.fc1"),
    *_weight_bias("layers/{i}/mlp/fc2", "encoder.layers.{i}.mlp.fc2"),
]


def qformer_rows(cfg: MiniGPT4Config, style: str) -> list[Row]:
    """Q-Former rows, layers expanded (cross-attention only where the layer has it).
    style 'original': LAVIS `Qformer.bert.*` (`attention.self`); 'hf': `qformer.*`
    (`attention.attention`, embeddings' LayerNorm renamed `layernorm`)."""
    inner = "self" if style == "original" else "attention"
    rows = _norm("embeddings/layernorm", "embeddings.LayerNorm" if style == "original" else "layernorm")
    for i in range(cfg.qformer.num_layers):
        blocks = [("self_attn", "attention")]
        if cfg.qformer.has_cross_attention(i):
            blocks.append(("cross_attn", "crossattention"))
        for ours, theirs in blocks:
            o, t = f"layer_{i}/{ours}", f"encoder.layer.{i}.{theirs}"
            for m in ("query", "key", "value"):
                rows += _weight_bias(f"{o}/{m}", f"{t}.{inner}.{m}")
            rows += _weight_bias(f"{o}/dense", f"{t}.output.dense")
            rows += _norm(f"{o}/norm", f"{t}.output.LayerNorm")
        o, t = f"layer_{i}/mlp", f"encoder.layer.{i}"
        rows += _weight_bias(f"{o}/fc1", f"{t}.intermediate_query.dense")
        rows += _weight_bias(f"{o}/fc2", f"{t}.output_query.dense")
        rows += _norm(f"{o}/norm", f"{t}.output_query.LayerNorm")
    return rows


def expand(rows: list[Row], num_layers: int, ours_prefix: str, theirs_prefix: str
           ) -> dict[str, tuple[str, Transform]]:
    """{their full key: (our full path, transform)}, '{i}' expanded over the layers."""
    table = {}
    for ours, theirs, tf in rows:
        for i in range(num_layers) if "{i}" in ours else [None]:
            o, t = (ours, theirs) if i is None else (ours.replace("{i}", str(i)), theirs.replace("{i}", str(i)))
            table[theirs_prefix + t] = (ours_prefix + o, tf)
    return table


# --- the original files, one table each (MINIGPT4.md §4)

def eva_table(cfg: MiniGPT4Config) -> dict[str, tuple[str, Transform]]:
    """`eva_vit_g.pth` (a plain state dict)."""
    return expand(EVA_ORIGINAL_ROWS, cfg.vision.num_layers, "vision_tower/", "")


def blip2_table(cfg: MiniGPT4Config) -> dict[str, tuple[str, Transform]]:
    """`blip2_pretrained_flant5xxl.pth` `['model']`: ln_vision, query tokens, Q-Former."""
    table = expand(_norm("vision_tower/ln_vision", "ln_vision"), 0, "", "")
    table["query_tokens"] = ("qformer/embeddings/query_tokens", LEADING_ONE)
    table.update(expand(qformer_rows(cfg, "original"), 0, "qformer/", "Qformer.bert."))
    return table


def minigpt4_table(cfg: MiniGPT4Config) -> dict[str, tuple[str, Transform]]:
    """`pretrained_minigpt4.pth` `['model']`: the trained projection."""
    return expand(_weight_bias("projector/linear_1", "llama_proj"), 0, "", "")


def vicuna_table(cfg: MiniGPT4Config) -> dict[str, tuple[str, Transform]]:
    """The Vicuna folder (`LlamaForCausalLM`)."""
    table = expand(LLAMA_ROWS, cfg.text.num_layers, "language_model/", "model.")
    if not cfg.text.tie_word_embeddings:
        table.update(expand([LM_HEAD_ROW], 0, "language_model/", "lm_head."))
    return table


# Keys the original files hold that the model does not use, with the reason said to the user.
BLIP2_SKIPPED = re.compile(r"^(t5_proj\.|opt_proj\.|visual_encoder\.)")  # FlanT5/OPT projection
EVA_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def unused_eva_blocks(keys, num_layers: int) -> list[str]:
    """Keys of ViT blocks past `num_layers`: the checkpoint's last block, which LAVIS builds
    no module for (`depth=39`, `strict=False`, MINIGPT4.md §1.1)."""
    return [k for k in keys if (m := EVA_BLOCK.match(k)) and int(m.group(1)) >= num_layers]


# --- HF Blip2ForConditionalGeneration (MINIGPT4.md §5.1)

def blip2_hf_table(cfg: MiniGPT4Config) -> dict[str, tuple[str, Transform]]:
    table = expand(EVA_HF_ROWS, cfg.vision.num_layers, "vision_tower/", "vision_model.")
    # HF's post_layernorm is MiniGPT-4's ln_vision (HF carries eps 1e-6, the original 1e-5, §5.2).
    table.update(expand(_norm("vision_tower/ln_vision", "vision_model.post_layernorm"), 0, "", ""))
    table["query_tokens"] = ("qformer/embeddings/query_tokens", LEADING_ONE)
    table.update(expand(qformer_rows(cfg, "hf"), 0, "qformer/", "qformer."))
    table.update(expand(_weight_bias("projector/linear_1", "language_projection"), 0, "", ""))
    table.update(expand(LLAMA_ROWS, cfg.text.num_layers, "language_model/", "language_model.model."))
    if not cfg.text.tie_word_embeddings:
        table.update(expand([LM_HEAD_ROW], 0, "language_model/", "language_model.lm_head."))
    return table


QKV_BIAS = re.compile(r"^(vision_model\.encoder\.layers\.\d+\.self_attn\.)qkv\.bias$")


def split_qkv_bias(state: dict, source: str) -> dict:
    """HF's `qkv.bias` → `q_bias`, `v_bias`; its k third must be zero (the original has no k
    bias, §5.2: HF keeps it trainable, so a fine-tuned HF model may not be MiniGPT-4)."""
    out = {}
    for key, value in state.items():
        m = QKV_BIAS.match(key)
        if not m:
            out[key] = value
            continue
        q, k, v = np.split(np.asarray(value), 3)
        if np.any(k != 0):
            raise ValueError(f"{source}: {key} has a non-zero key third (max |k| = "
                             f"{float(np.abs(k).max()):.3g}); EVA ViT-g has no k bias, so this "
                             "model cannot be represented exactly")
        out[m.group(1) + "q_bias"], out[m.group(1) + "v_bias"] = q, v
    return out


def fuse_qkv_bias(state: dict) -> dict:
    """The inverse of `split_qkv_bias` (`cat(q_bias, zeros, v_bias)`, HF's converter)."""
    out = {}
    for key, value in state.items():
        if key.endswith(".self_attn.q_bias") and key.startswith("vision_model."):
            prefix = key[: -len("q_bias")]
            v = state[prefix + "v_bias"]
            out[prefix + "qkv.bias"] = np.concatenate([value, np.zeros_like(value), v])
        elif not (key.endswith(".self_attn.v_bias") and key.startswith("vision_model.")):
            out[key] = value
    return out
