"""Weight-format mapping tables: our parameter path ↔ their key ↔ transform.

Read each table top to bottom like a spec. Keys are relative to a component (CLIP vision model,
LLaMA body, projector); a *layout* says under which prefixes a format stores each component, so
the llava-hf old/new layouts, original LLaVA/ShareGPT4V and bare CLIP/LLaMA directories share the
same rows. Every transform has an inverse, so export is the same table read backwards.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np

from sgv_jax.models.config import VLMConfig
from sgv_jax.models.projector import projector_depth


@dataclasses.dataclass(frozen=True)
class Transform:
    name: str
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_theirs: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform("identity", lambda w: w, lambda w: w)
# torch nn.Linear weight [out, in] ↔ our kernel [in, out].
LINEAR = Transform("linear", lambda w: np.ascontiguousarray(w.T), lambda w: np.ascontiguousarray(w.T))
# torch Conv2d weight [out, in, kh, kw] ↔ our kernel [kh, kw, in, out].
CONV = Transform("conv",
                 lambda w: np.ascontiguousarray(w.transpose(2, 3, 1, 0)),
                 lambda w: np.ascontiguousarray(w.transpose(3, 2, 0, 1)))

Row = tuple[str, str, Transform]  # (our path, their key, transform); '{i}' = layer index

CLIP_ROWS: list[Row] = [
    ("embeddings/class_embedding", "embeddings.class_embedding", IDENTITY),
    ("embeddings/patch_embedding/kernel", "embeddings.patch_embedding.weight", CONV),
    ("embeddings/position_embedding/embedding", "embeddings.position_embedding.weight", IDENTITY),
    ("pre_layrnorm/scale", "pre_layrnorm.weight", IDENTITY),
    ("pre_layrnorm/bias", "pre_layrnorm.bias", IDENTITY),
    *[(f"layers/{{i}}/self_attn/{m}/{w}", f"encoder.layers.{{i}}.self_attn.{m}.{t}", tf)
      for m in ("q_proj", "k_proj", "v_proj", "out_proj")
      for w, t, tf in (("kernel", "weight", LINEAR), ("bias", "bias", IDENTITY))],
    *[(f"layers/{{i}}/{n}/{w}", f"encoder.layers.{{i}}.{n}.{t}", IDENTITY)
      for n in ("layer_norm1", "layer_norm2") for w, t in (("scale", "weight"), ("bias", "bias"))],
    *[(f"layers/{{i}}/mlp/{m}/{w}", f"encoder.layers.{{i}}.mlp.{m}.{t}", tf)
      for m in ("fc1", "fc2")
      for w, t, tf in (("kernel", "weight", LINEAR), ("bias", "bias", IDENTITY))],
    ("post_layernorm/scale", "post_layernorm.weight", IDENTITY),
    ("post_layernorm/bias", "post_layernorm.bias", IDENTITY),
]

LLAMA_ROWS: list[Row] = [
    ("embed_tokens/embedding", "embed_tokens.weight", IDENTITY),
    *[(f"layers/{{i}}/self_attn/{m}/kernel", f"layers.{{i}}.self_attn.{m}.weight", LINEAR)
      for m in ("q_proj", "k_proj", "v_proj", "o_proj")],
    *[(f"layers/{{i}}/mlp/{m}/kernel", f"layers.{{i}}.mlp.{m}.weight", LINEAR)
      for m in ("gate_proj", "up_proj", "down_proj")],
    ("layers/{i}/input_layernorm/scale", "layers.{i}.input_layernorm.weight", IDENTITY),
    ("layers/{i}/post_attention_layernorm/scale", "layers.{i}.post_attention_layernorm.weight",
     IDENTITY),
    ("norm/scale", "norm.weight", IDENTITY),
]

LM_HEAD_ROW: Row = ("lm_head/kernel", "weight", LINEAR)


def projector_rows(cfg: VLMConfig, style: str) -> list[Row]:
    """'hf': linear_1, linear_2 …; 'original': mm_projector.0, .2, .4 … (GELUs sit between)."""
    rows = []
    for k in range(1, projector_depth(cfg.projector_type) + 1):
        theirs = f"linear_{k}" if style == "hf" else str(2 * (k - 1))
        rows.append((f"linear_{k}/kernel", f"{theirs}.weight", LINEAR))
        if cfg.projector_bias:
            rows.append((f"linear_{k}/bias", f"{theirs}.bias", IDENTITY))
    return rows


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a format keeps each component (None: not in this file set)."""

    name: str
    vision: str | None  # prefix before CLIP's own keys (which start at 'embeddings.', 'encoder.')
    llm: str | None  # prefix before LlamaModel keys ('embed_tokens.', 'layers.', 'norm.')
    lm_head: str | None  # prefix before 'weight'
    projector: str | None  # prefix before the projector rows
    projector_style: str = "hf"


LLAVA_HF_OLD = Layout("llava-hf (old layout)", "vision_tower.vision_model.", "language_model.model.",
                      "language_model.lm_head.", "multi_modal_projector.")
# transformers 5.x save_pretrained drops the `vision_model.` prefix (REFERENCE §8).
LLAVA_HF_OLD_FLAT_CLIP = dataclasses.replace(LLAVA_HF_OLD, name="llava-hf (old layout, flat CLIP)",
                                             vision="vision_tower.")
LLAVA_HF_NEW = Layout("llava-hf (new layout)", "model.vision_tower.vision_model.",
                      "model.language_model.", "lm_head.", "model.multi_modal_projector.")
LLAVA_HF_NEW_FLAT_CLIP = dataclasses.replace(LLAVA_HF_NEW, name="llava-hf (new layout, flat CLIP)",
                                             vision="model.vision_tower.")
LLAVA_HF_LAYOUTS = (LLAVA_HF_OLD, LLAVA_HF_OLD_FLAT_CLIP, LLAVA_HF_NEW, LLAVA_HF_NEW_FLAT_CLIP)

# Original LLaVA / ShareGPT4V (`LlavaLlamaForCausalLM`, §2.1); the tower may be absent.
ORIGINAL_LLAVA = Layout("original LLaVA", "model.vision_tower.vision_tower.vision_model.", "model.",
                        "lm_head.", "model.mm_projector.", projector_style="original")


def expand(rows: list[Row], num_layers: int, ours_prefix: str, theirs_prefix: str
           ) -> dict[str, tuple[str, Transform]]:
    """{their full key: (our full path, transform)} with '{i}' expanded over the layers."""
    table = {}
    for ours, theirs, tf in rows:
        indices = range(num_layers) if "{i}" in ours else [None]
        for i in indices:
            o = ours.replace("{i}", str(i)) if i is not None else ours
            t = theirs.replace("{i}", str(i)) if i is not None else theirs
            table[theirs_prefix + t] = (ours_prefix + o, tf)
    return table


def key_table(cfg: VLMConfig, layout: Layout) -> dict[str, tuple[str, Transform]]:
    """The full mapping for one layout and model config."""
    table = {}
    if layout.vision is not None:
        table.update(expand(CLIP_ROWS, cfg.vision.num_layers, "vision_tower/", layout.vision))
    if layout.projector is not None:
        table.update(expand(projector_rows(cfg, layout.projector_style), 0, "projector/",
                            layout.projector))
    if layout.llm is not None:
        table.update(expand(LLAMA_ROWS, cfg.text.num_layers, "language_model/", layout.llm))
    if layout.lm_head is not None and not cfg.text.tie_word_embeddings:
        table.update(expand([LM_HEAD_ROW], 0, "language_model/", layout.lm_head))
    return table


# Buffers some files carry that hold no parameters (§2.1, §2.5).
IGNORED_KEYS = re.compile(r"(\.rotary_emb\.inv_freq|embeddings\.position_ids)$")


def detect_llava_hf_layout(keys) -> Layout:
    """Which llava-hf layout a key set uses, from its key names alone."""
    keys = set(keys)
    new = any(k.startswith("model.language_model.") for k in keys)
    probe = "model.vision_tower.vision_model." if new else "vision_tower.vision_model."
    nested_clip = any(k.startswith(probe) for k in keys)
    if new:
        return LLAVA_HF_NEW if nested_clip else LLAVA_HF_NEW_FLAT_CLIP
    if not any(k.startswith("language_model.") for k in keys):
        raise ValueError("not a llava-hf checkpoint: no key starts with 'language_model.' or "
                         "'model.language_model.'")
    return LLAVA_HF_OLD if nested_clip else LLAVA_HF_OLD_FLAT_CLIP
