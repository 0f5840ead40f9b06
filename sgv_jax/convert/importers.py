"""Import: llava-hf dirs, original LLaVA / ShareGPT4V dirs, CLIP + LLaMA (+ mm_projector.bin) → sgv.

Each reader builds the model config from the source's config.json files, checks it against the
weights (layer counts, shapes) before reading any tensor, and returns a `Source`; `to_sgv`
streams it into an sgv checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from flax import nnx

from sgv_jax.checkpoint_sgv import save_sgv
from sgv_jax.convert import formats
from sgv_jax.convert.hf_config import (
    KNOWN_TOWERS,
    text_from_hf,
    vision_from_hf,
    vlm_from_llava_hf,
    vlm_from_original,
)
from sgv_jax.convert.sources import WeightFiles, read_json
from sgv_jax.convert.state_dict import ConversionError
from sgv_jax.convert.streaming import Part, check_parts, stream_groups
from sgv_jax.models.config import VLMConfig
from sgv_jax.models.projector import Projector
from sgv_jax.models.storage import flatten, storage_shapes

# Tokenizer and processor files worth carrying along (HF names).
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.json",
                   "chat_template.jinja", "processor_config.json", "preprocessor_config.json")


@dataclasses.dataclass
class Source:
    cfg: VLMConfig
    parts: list[Part]
    fresh: dict[str, np.ndarray]  # parameters initialised here (no projector given)
    tokenizer_files: list[str]
    extra: dict[str, Any]


def check_layer_counts(keys, layout: formats.Layout, cfg: VLMConfig, config_path: str,
                       weights: str) -> None:
    """A config that disagrees with the weights is reported, not guessed around (issue 3)."""
    problems = []
    if layout.vision is not None:
        found = formats.count_layers(keys, layout.vision + "encoder.layers.")
        if found != cfg.vision.num_layers:
            problems.append(f"vision num_hidden_layers is {cfg.vision.num_layers} but the weights "
                            f"have {found} blocks ('{layout.vision}encoder.layers.N')")
    if layout.llm is not None:
        found = formats.count_layers(keys, layout.llm + "layers.")
        if found != cfg.text.num_layers:
            problems.append(f"text num_hidden_layers is {cfg.text.num_layers} but the weights "
                            f"have {found} layers ('{layout.llm}layers.N')")
    if problems:
        raise ConversionError(f"{config_path} disagrees with the weights in {weights}: "
                              + "; ".join(problems))


def _tokenizer_files(text_dir: str | None, vision_dir: str | None = None) -> list[str]:
    """Tokenizer files come from the language model's folder only: a CLIP folder also holds a
    (text) `tokenizer.json` that must not shadow LLaMA's. From the vision folder we take just
    the image processor config."""
    found = [os.path.join(text_dir, n) for n in TOKENIZER_FILES
             if text_dir and os.path.isfile(os.path.join(text_dir, n))]
    names = {os.path.basename(f) for f in found}
    processor = os.path.join(vision_dir, "preprocessor_config.json") if vision_dir else None
    if processor and os.path.isfile(processor) and "preprocessor_config.json" not in names:
        found.append(processor)
    return found


def _part(files: WeightFiles, cfg: VLMConfig, layout: formats.Layout, config_path: str,
          skip=lambda key: False) -> Part:
    check_layer_counts([k for k in files.key_file if not skip(k)], layout, cfg, config_path,
                       files.location)
    return Part(files, formats.key_table(cfg, layout), f"{files.location} ({layout.name})", skip)


def read_llava_hf(src: str) -> Source:
    hf = read_json(src)
    cfg = vlm_from_llava_hf(hf)
    files = WeightFiles(src)
    layout = formats.detect_llava_hf_layout(files.keys())
    part = _part(files, cfg, layout, os.path.join(src, "config.json"))
    extra = {"source": {"format": "llava-hf", "path": os.path.abspath(src)},
             "hf_image_token_index": cfg.image_token_id}
    return Source(cfg, [part], {}, _tokenizer_files(src), extra)


def read_llava(src: str, vision_tower: str | None = None) -> Source:
    """Original LLaVA / ShareGPT4V: LLM dir (+ its own `vision_tower/` CLIP dir, §2.1–2.2)."""
    config_path = os.path.join(src, "config.json")
    c = read_json(src)
    files = WeightFiles(src)
    kind = formats.detect_format(files.keys())
    if kind != "llava":
        raise ConversionError(f"{src} holds {kind} weights, not an original LLaVA checkpoint "
                              f"(no 'model.layers.*' + 'model.mm_projector.*' keys); use "
                              f"--from {'components' if kind in ('clip', 'llama') else kind}")
    layout = formats.detect_original_layout(files.keys())
    tower_copy = formats.ORIGINAL_LLAVA.vision
    if vision_tower is not None:
        vt_files = WeightFiles(vision_tower)
        vision = vision_from_hf(read_json(vision_tower))
        cfg = vlm_from_original(c, vision, config_path)
        # The separate tower is the fine-tuned one (§2.2); a frozen copy in the LM is unused.
        llm_part = _part(files, cfg, formats.ORIGINAL_LLAVA_NO_VISION, config_path,
                         skip=lambda k: k.startswith(tower_copy))
        vt_layout = formats.detect_clip_layout(vt_files.keys())
        parts = [llm_part, _part(vt_files, cfg, vt_layout, os.path.join(vision_tower, "config.json"),
                                 skip=lambda k: bool(formats.CLIP_NON_VISION.search(k)))]
    elif layout.vision is not None:
        name = c.get("mm_vision_tower")
        if name not in KNOWN_TOWERS:
            raise ConversionError(f"{config_path}: mm_vision_tower {name!r} is not a known tower "
                                  f"({', '.join(KNOWN_TOWERS)}); pass --vision-tower DIR with "
                                  "that tower's config.json")
        cfg = vlm_from_original(c, KNOWN_TOWERS[name], config_path)
        parts = [_part(files, cfg, layout, config_path)]
    else:
        local = os.path.join(src, "vision_tower")
        hint = f" ({local} exists: pass --vision-tower {local})" if os.path.isdir(local) else ""
        raise ConversionError(
            f"{src} has no vision tower weights (no '{tower_copy}*' keys) and --vision-tower was "
            f"not given. ShareGPT4V deletes the tower from the LLM checkpoint and keeps its "
            f"fine-tuned CLIP in a separate `vision_tower/` folder (published as "
            f"Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12; this config's mm_vision_tower "
            f"is {c.get('mm_vision_tower')!r}): pass --vision-tower DIR{hint}.")
    extra = {"source": {"format": "llava", "path": os.path.abspath(src),
                        "vision_tower": vision_tower and os.path.abspath(vision_tower)}}
    return Source(cfg, parts, {}, _tokenizer_files(src, vision_tower), extra)


def read_components(clip: str, llm: str, projector: str | None = None, seed: int = 0,
                    projector_type: str = "mlp2x_gelu") -> Source:
    """CLIP dir (CLIPModel or CLIPVisionModel) + LlamaForCausalLM dir + optional mm_projector.bin;
    without it the projector is initialised from `seed` (stage-1 start, REFERENCE §4.1)."""
    projector_layout = None
    if projector is not None:  # cheap to check first: a wrong file fails before the big reads
        proj_files = WeightFiles(projector)
        try:
            projector_layout = formats.detect_projector_layout(proj_files.keys())
        except ValueError as e:
            raise ConversionError(f"{projector}: {e}") from None
    vision = vision_from_hf(read_json(clip))
    cfg = VLMConfig(vision=vision, text=text_from_hf(read_json(llm)), projector_type=projector_type)
    clip_files, llm_files = WeightFiles(clip), WeightFiles(llm)
    parts = [
        _part(clip_files, cfg, formats.detect_clip_layout(clip_files.keys()),
              os.path.join(clip, "config.json"),
              skip=lambda k: bool(formats.CLIP_NON_VISION.search(k))),
        _part(llm_files, cfg, formats.LLAMA_DIR, os.path.join(llm, "config.json")),
    ]
    fresh = {}
    if projector_layout is not None:
        parts.append(Part(proj_files, formats.key_table(cfg, projector_layout),
                          f"{projector} ({projector_layout.name})"))
    else:
        with nnx.use_eager_sharding(False):
            fresh_projector = Projector(cfg.projector_type, cfg.vision.hidden_size,
                                        cfg.text.hidden_size, cfg.projector_bias, nnx.Rngs(seed))
        params = {"projector": nnx.to_pure_dict(nnx.state(fresh_projector))}
        fresh = {p: np.asarray(v) for p, v in flatten(params).items()}
    extra = {"source": {"format": "components", "clip": os.path.abspath(clip),
                        "llm": os.path.abspath(llm),
                        "projector": projector and os.path.abspath(projector),
                        "projector_seed": None if projector else seed}}
    return Source(cfg, parts, fresh, _tokenizer_files(llm, clip), extra)


def with_adapter(source: Source, adapter_dir: str) -> Source:
    """The source plus a PEFT LoRA adapter folder, checked against the base by name and shape."""
    from sgv_jax.convert.adapters import adapter_part

    cfg, part = adapter_part(adapter_dir, source.cfg)
    extra = {**source.extra, "adapter": os.path.abspath(adapter_dir)}
    return dataclasses.replace(source, cfg=cfg, parts=[*source.parts, part], extra=extra)


def read_llava_lora(lora_dir: str, base: str, vision_tower: str | None = None) -> Source:
    """LLaVA's LoRA folder (`adapter_*`, `non_lora_trainables.bin`, config.json; LORA.md §4.1)
    over a full LLaVA base checkpoint (the `--model-base` of LLaVA's builder, §4.10): the
    projector comes from `non_lora_trainables.bin`, the adapters from the adapter file."""
    from sgv_jax.convert.adapters import adapter_part

    source = read_llava(base, vision_tower)
    trainables = os.path.join(lora_dir, "non_lora_trainables.bin")
    if not os.path.isfile(trainables):
        raise FileNotFoundError(f"{trainables} is missing: LLaVA's LoRA folder keeps the trained "
                                "projector there (LORA.md §4.4)")
    proj_files = WeightFiles(trainables)
    try:
        layout = formats.detect_projector_layout(proj_files.keys())
    except ValueError as e:
        raise ConversionError(f"{trainables}: {e}") from None
    cfg, part = adapter_part(lora_dir, source.cfg)
    projector_table = formats.key_table(cfg, layout)
    # The projector now comes from the LoRA folder, not the base.
    base_parts = [dataclasses.replace(p, skip=lambda k, old=p.skip: old(k) or ".mm_projector." in k,
                                      table={k: v for k, v in p.table.items()
                                             if not v[0].startswith("projector/")})
                  for p in source.parts]
    parts = [*base_parts, Part(proj_files, projector_table, f"{trainables} (projector)"), part]
    extra = {**source.extra, "adapter": os.path.abspath(lora_dir)}
    return dataclasses.replace(source, cfg=cfg, parts=parts, extra=extra)


def to_sgv(source: Source, dst: str, dtype=None, progress: bool = True) -> str:
    """Check everything, then stream the source into an sgv checkpoint at `dst`."""
    expected = storage_shapes(source.cfg)
    check_parts(source.parts, expected, source.fresh)
    groups = stream_groups(source.parts, expected, dtype, source.fresh, progress)
    return save_sgv(dst, source.cfg, groups, tokenizer_dir=source.tokenizer_files,
                    extra=source.extra)
