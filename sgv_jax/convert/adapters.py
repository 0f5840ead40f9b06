"""LoRA adapter files (PEFT's `adapter_config.json` + `adapter_model.safetensors|.bin`, as LLaVA-1.5
writes them) ↔ the adapters of an sgv checkpoint (LORA.md §4).

One more mapping table, streamed like the base tables: PEFT key
`base_model.model.<llm prefix>layers.{i}.<module>.lora_A.weight [r, in]` ↔ our per-block path
`language_model/layers/{i}/<module>/lora_a [in, r]` (a transpose; B likewise). The LLM prefix is
the wrapped model's: `model.` for LLaVA's `LlavaLlamaForCausalLM`, `model.language_model.` (or the
old `language_model.model.`) for transformers' `LlavaForConditionalGeneration`.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from sgv_jax.convert import formats
from sgv_jax.convert.sources import WeightFiles
from sgv_jax.convert.state_dict import ConversionError
from sgv_jax.convert.streaming import Part
from sgv_jax.models.config import LORA_TARGETS, LoraConfig, VLMConfig

PEFT_PREFIX = "base_model.model."
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # PEFT reads them in this order
MODULE_PATH = {name: ("self_attn." if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj"))
                      else "mlp.") + name for name in LORA_TARGETS}
_KEY = re.compile(r"^(.*?)layers\.\d+\.(self_attn|mlp)\.(\w+)\.lora_[AB]\.weight$")
# adapter_config.json fields whose non-default values this model cannot represent (LORA.md §4.9).
_UNSUPPORTED = {"use_rslora": False, "use_dora": False, "bias": "none", "modules_to_save": None,
                "fan_in_fan_out": False, "rank_pattern": {}, "alpha_pattern": {}}


def lora_rows(targets: tuple[str, ...]) -> list[formats.Row]:
    rows = []
    for name in targets:
        module = MODULE_PATH[name].replace(".", "/")
        for ours, theirs in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
            rows.append((f"layers/{{i}}/{module}/{ours}",
                         f"layers.{{i}}.{MODULE_PATH[name]}.{theirs}.weight", formats.LINEAR))
    return rows


def adapter_table(cfg: VLMConfig, llm_prefix: str) -> dict:
    """{PEFT key: (our per-block path, transform)} for `cfg.lora`."""
    return formats.expand(lora_rows(cfg.lora.targets), cfg.text.num_layers, "language_model/",
                          PEFT_PREFIX + llm_prefix)


def adapter_file(adapter_dir: str) -> str:
    for name in ADAPTER_FILES:
        if os.path.isfile(os.path.join(adapter_dir, name)):
            return os.path.join(adapter_dir, name)
    raise FileNotFoundError(f"{adapter_dir}: no adapter weights (looked for "
                            f"{', '.join(ADAPTER_FILES)})")


def read_adapter_config(adapter_dir: str, targets: tuple[str, ...]) -> LoraConfig:
    """rank, alpha, dropout from `adapter_config.json`; what the model cannot run is refused."""
    path = os.path.join(adapter_dir, "adapter_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: an adapter folder holds adapter_config.json "
                                "and adapter_model.safetensors (or .bin)")
    with open(path) as f:
        c = json.load(f)
    if c.get("peft_type", "LORA") != "LORA":
        raise ConversionError(f"{path}: peft_type {c['peft_type']!r}; only LORA adapters load")
    bad = [f"{k}={c[k]!r}" for k, default in _UNSUPPORTED.items()
           if k in c and c[k] not in (default, None, False, {}, "none")]
    if bad:
        raise ConversionError(f"{path}: {', '.join(bad)} not supported (plain LoRA with scale "
                              "alpha/r, no bias, no extra trained modules: LORA.md §1.2)")
    return LoraConfig(int(c["r"]), float(c["lora_alpha"]), float(c.get("lora_dropout", 0.0)),
                      targets)


def adapter_part(adapter_dir: str, cfg: VLMConfig) -> tuple[VLMConfig, Part]:
    """(the base config with the adapter's LoRA, the Part that maps its file). Keys outside the
    seven decoder linears (CLIP, projector, lm_head, …) are refused by name when checked."""
    files = WeightFiles(adapter_file(adapter_dir))
    prefixes, targets = set(), set()
    for key in files.key_file:
        m = _KEY.match(key)
        if m and m.group(3) in LORA_TARGETS and m.group(1).startswith(PEFT_PREFIX):
            prefixes.add(m.group(1)[len(PEFT_PREFIX):])
            targets.add(m.group(3))
    llm_prefixes = [p for p in prefixes if not any(v in p for v in ("vision", "projector"))]
    if len(llm_prefixes) != 1:
        raise ConversionError(f"{files.location}: expected LoRA keys "
                              f"'{PEFT_PREFIX}<model>.layers.N.<module>.lora_A.weight' under one "
                              f"language-model prefix, found {sorted(prefixes) or 'none'}")
    ordered = tuple(t for t in LORA_TARGETS if t in targets)
    lora = read_adapter_config(adapter_dir, ordered)
    cfg = cfg.replace(lora=lora)
    part = Part(files, adapter_table(cfg, llm_prefixes[0]), f"{files.location} (LoRA adapter)")
    return cfg, part


def adapter_config_json(lora: LoraConfig, base: str, target_regex: str | None) -> dict:
    """PEFT's `adapter_config.json` with the published LLaVA-1.5 fields (LORA.md §4.2)."""
    return {"alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": base,
            "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
            "init_lora_weights": True, "layers_pattern": None, "layers_to_transform": None,
            "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "modules_to_save": None,
            "peft_type": "LORA", "r": lora.rank, "rank_pattern": {}, "revision": None,
            "target_modules": target_regex or list(lora.targets), "task_type": "CAUSAL_LM"}


def merge_group(flat: dict[str, np.ndarray], lora: LoraConfig) -> dict[str, np.ndarray]:
    """One storage group with its adapters folded in (kernel + scale · a @ b in fp32, cast to
    the kernel's dtype: PEFT's merge_and_unload, LORA.md §5) and removed."""
    out = {p: v for p, v in flat.items() if not p.endswith(("/lora_a", "/lora_b"))}
    for path, a in flat.items():
        if path.endswith("/lora_a"):
            module = path[:-len("/lora_a")]
            kernel = flat[module + "/kernel"]
            b = flat[module + "/lora_b"]
            delta = lora.scale * (a.astype(np.float32) @ b.astype(np.float32))
            out[module + "/kernel"] = (kernel.astype(np.float32) + delta).astype(kernel.dtype)
    return out
