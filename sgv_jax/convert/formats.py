"""Weight-format mapping tables: our parameter path ↔ their key ↔ transform.

Read each table top to bottom like a spec. Keys are relative to a component (CLIP vision model,
LLaMA body, projector); a *layout* says under which prefixes a format stores each component, so
the llava-hf old/new layouts, original LLaVA/ShareGPT4V and bare CLIP/LLaMA directories share the
same rows. Every transform has an inverse, so export is the same table read backwards.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from sgv_jax.models.config import VLMConfig
from sgv_jax.models.projector import projector_depth


@dataclasses.dataclass(frozen=True)
class Transform:
    name: str
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_theirs: Callable[[np.ndarray], np.ndarray]
    # Their shape from ours without touching data (export plans shard files before reading).
    theirs_shape: Callable[[tuple], tuple] = tuple


IDENTITY = Transform("identity", lambda w: w, lambda w: w)
# torch nn.Linear weight [out, in] ↔ our kernel [in, out].
LINEAR = Transform("linear", lambda w: np.ascontiguousarray(w.T), lambda w: np.ascontiguousarray(w.T),
                   lambda s: tuple(reversed(s)))
# torch Conv2d weight [out, in, kh, kw] ↔ our kernel [kh, kw, in, out].
CONV = Transform("conv",
                 lambda w: np.ascontiguousarray(w.transpose(2, 3, 1, 0)),
                 lambda w: np.ascontiguousarray(w.transpose(3, 2, 0, 1)),
                 lambda s: (s[3], s[2], s[0], s[1]))

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
# ShareGPT4V deletes the tower before saving (§2.1): LLM + projector only.
ORIGINAL_LLAVA_NO_VISION = dataclasses.replace(ORIGINAL_LLAVA, name="original LLaVA (no vision tower)",
                                               vision=None)

# A `CLIPVisionModel`/`CLIPModel` dir, incl. ShareGPT4V's `vision_tower/` (§2.2, §2.5); transformers
# 5.24 writes `CLIPVisionModel` keys without the `vision_model.` prefix (REFERENCE §8).
CLIP_DIR = Layout("CLIP vision model", "vision_model.", None, None, None)
CLIP_DIR_FLAT = dataclasses.replace(CLIP_DIR, name="CLIP vision model (flat)", vision="")
# A `LlamaForCausalLM` dir (Vicuna, §2.6).
LLAMA_DIR = Layout("LLaMA causal LM", None, "model.", "lm_head.", None)
# LLaVA stage-1 `mm_projector.bin` (§2.1); the reference strips everything up to `mm_projector.`,
# so the prefix is detected (`detect_projector_layout`).
MM_PROJECTOR = Layout("mm_projector.bin", None, None, None, "model.mm_projector.",
                      projector_style="original")

# Keys of a full `CLIPModel` that are not the vision tower (§2.5): skipped, not errors.
CLIP_NON_VISION = re.compile(r"^(text_model\.|visual_projection\.|text_projection\.|logit_scale$)")


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


def count_layers(keys, prefix: str) -> int:
    """1 + the largest N among keys '{prefix}N.…' (0 when there are none)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for k in keys if (m := pattern.match(k))]
    return max(found) + 1 if found else 0


def detect_format(keys) -> str:
    """'llava-hf' | 'llava' | 'clip' | 'llama' | 'mm_projector' from key names alone."""
    keys = set(keys)
    if any(k.startswith(("language_model.", "model.language_model.")) for k in keys):
        return "llava-hf"
    if any(k.startswith("model.layers.") for k in keys):
        return "llava" if any(".mm_projector." in "." + k for k in keys) else "llama"
    if any("mm_projector." in k for k in keys):
        return "mm_projector"
    if any(k.startswith(("vision_model.", "embeddings.", "encoder.layers.")) for k in keys):
        return "clip"
    raise ValueError("unknown checkpoint format: no llava-hf, LLaVA, LLaMA, CLIP or mm_projector "
                     f"keys among {sorted(keys)[:8]}")


def detect_original_layout(keys) -> Layout:
    """Original LLaVA with or without the frozen tower copy in `model.vision_tower.…` (§2.1)."""
    has_tower = any(k.startswith(ORIGINAL_LLAVA.vision) for k in keys)
    return ORIGINAL_LLAVA if has_tower else ORIGINAL_LLAVA_NO_VISION


def detect_clip_layout(keys) -> Layout:
    return CLIP_DIR if any(k.startswith(CLIP_DIR.vision) for k in keys) else CLIP_DIR_FLAT


def detect_projector_layout(keys) -> Layout:
    """`mm_projector.bin` keys are `<anything>mm_projector.{0,2}.*`; keep their prefix."""
    prefixes = {k[:k.index("mm_projector.") + len("mm_projector.")] for k in keys
                if "mm_projector." in k}
    if len(prefixes) != 1:
        raise ValueError(f"expected keys '…mm_projector.N.weight' under one prefix, found "
                         f"prefixes {sorted(prefixes) or 'none'}")
    return dataclasses.replace(MM_PROJECTOR, projector=prefixes.pop())


def padded_vocab(vocab_size: int) -> tuple[int, int, int]:
    """(image id, pad id, padded vocab) the way llava-hf extends a LLaMA vocab (REFERENCE §1.7):
    `<image>` and `<pad>` appended, rows padded to a multiple of 64 (32000 → 32000, 32001, 32064)."""
    return vocab_size, vocab_size + 1, -(-(vocab_size + 2) // 64) * 64


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
