"""Builders for the conversion tests: tiny random HF models written to disk in every source format.

The original-format files are made from a tiny llava-hf model's tensors renamed per REFERENCE §2.1
(LLM keys `model.*`, `lm_head`, `model.mm_projector.{0,2}`) and §2.2 (a `vision_tower/` dir of
`vision_model.*` keys), so both sides of a parity test hold the same weights.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tests.hf_tiny import build_hf_llava, tiny_llava_config

HF_PREFIXES = (("model.language_model.", "model."),
               ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
               ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."))


def save_llava_hf(folder: str, seed: int = 0, **config_kw):
    """(torch model, dir) of a tiny random LlavaForConditionalGeneration saved with save_pretrained."""
    model = build_hf_llava(tiny_llava_config(**config_kw), seed)
    model.save_pretrained(folder)
    return model, folder


def original_state(model) -> tuple[dict, dict]:
    """(LLM state dict in original LLaVA names, CLIPVisionModel state dict with `vision_model.`)."""
    llm, vision = {}, {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().clone().contiguous()
        if key.startswith("model.vision_tower."):
            vision["vision_model." + key[len("model.vision_tower."):]] = tensor
            continue
        for ours, theirs in HF_PREFIXES:
            if key.startswith(ours):
                key = theirs + key[len(ours):]
        llm[key] = tensor
    return llm, vision


def original_config(model) -> dict:
    """config.json of an original LLM dir: LlamaConfig + mm_* fields (REFERENCE §2.3)."""
    c = model.config
    text = c.text_config.to_dict()
    text.update(model_type="llava_llama", architectures=["LlavaLlamaForCausalLM"],
                mm_vision_tower="Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12",
                mm_projector_type="mlp2x_gelu", mm_hidden_size=c.vision_config.hidden_size,
                mm_vision_select_layer=c.vision_feature_layer, mm_vision_select_feature="patch",
                mm_use_im_start_end=False, mm_use_im_patch_token=False)
    return text


def write_json(path: str, content: dict) -> None:
    with open(path, "w") as f:
        json.dump(content, f, indent=2)


def save_sharded_safetensors(folder: str, state: dict, n_shards: int = 2) -> None:
    """HF-style `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    keys = sorted(state)
    chunks = np.array_split(np.arange(len(keys)), n_shards)
    weight_map = {}
    for i, chunk in enumerate(chunks):
        name = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file({keys[j]: state[keys[j]] for j in chunk}, os.path.join(folder, name),
                  metadata={"format": "pt"})
        weight_map.update({keys[j]: name for j in chunk})
    write_json(os.path.join(folder, "model.safetensors.index.json"),
               {"metadata": {}, "weight_map": weight_map})


def save_original(folder: str, model, tower_in_checkpoint: bool = False,
                  separate_tower: bool = True) -> tuple[str, str | None]:
    """(LLM dir as 2 safetensors shards, ShareGPT4V `vision_tower/` dir as pytorch_model.bin)."""
    import torch

    llm, vision = original_state(model)
    if tower_in_checkpoint:  # LLaVA-1.5 keeps a frozen copy (§2.1)
        llm.update({"model.vision_tower.vision_tower." + k: v for k, v in vision.items()})
    save_sharded_safetensors(folder, llm)
    write_json(os.path.join(folder, "config.json"), original_config(model))
    if not separate_tower:
        return folder, None
    tower = os.path.join(folder, "vision_tower")
    os.makedirs(tower)
    torch.save(vision, os.path.join(tower, "pytorch_model.bin"))
    write_json(os.path.join(tower, "config.json"), model.config.vision_config.to_dict())
    return folder, tower


def hf_logits(model, ids: np.ndarray, mask: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    pixel_values=torch.tensor(pixels))
    return out.logits.numpy()


def jax_logits(params, cfg, ids: np.ndarray, mask: np.ndarray, pixels_nchw: np.ndarray):
    import jax.numpy as jnp

    from sgv_jax.models import llava

    batch = {"input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(mask),
             "pixel_values": jnp.asarray(pixels_nchw.transpose(0, 2, 3, 1))}
    logits, _ = llava.forward(params, cfg, batch)
    return np.asarray(logits)
