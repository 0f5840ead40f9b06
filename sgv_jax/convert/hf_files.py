"""Non-weight files of exported directories: tokenizer, image processor, llava-hf processor."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from sgv_jax.constants import CLIP_MEAN, CLIP_STD, DEFAULT_IMAGE_TOKEN
from sgv_jax.models.config import VLMConfig

PAD_TOKEN = "<pad>"  # llava-hf's pad token (REFERENCE §1.7)


def image_processor_config(cfg: VLMConfig) -> dict[str, Any]:
    """CLIPImageProcessor settings of CLIP-L/14-336 at this model's image size (§3.7)."""
    size = cfg.vision.image_size
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
            "size": {"shortest_edge": size}, "resample": 3, "do_center_crop": True,
            "crop_size": {"height": size, "width": size}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD), "do_convert_rgb": True}


def _has_tokenizer(tok_dir: str | None) -> bool:
    return bool(tok_dir) and any(os.path.isfile(os.path.join(tok_dir, n))
                                 for n in ("tokenizer.json", "tokenizer.model"))


def tokenizer_size(tok_dir: str | None) -> int | None:
    """How many ids the checkpoint's tokenizer uses (None without tokenizer files)."""
    if not _has_tokenizer(tok_dir):
        return None
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tok_dir))


def write_llava_hf_processor(tok_dir: str | None, dst: str, cfg: VLMConfig, image_id: int,
                             pad_id: int | None, add_tokens: bool) -> list[str]:
    """Tokenizer (with `<image>`/`<pad>` added when the vocab was padded) + a LlavaProcessor whose
    `patch_size`, `num_additional_image_tokens=1` and strategy expand `<image>` to exactly the
    model's image token count (§1.7; a missing field gives 575 tokens, §6). Returns notes."""
    from transformers import (
        AddedToken,
        AutoTokenizer,
        CLIPImageProcessor,
        LlavaProcessor,
    )

    has_image_config = tok_dir and any(os.path.isfile(os.path.join(tok_dir, n)) for n in
                                       ("preprocessor_config.json", "processor_config.json"))
    if has_image_config:
        from transformers import AutoImageProcessor

        image_processor = AutoImageProcessor.from_pretrained(tok_dir)
    else:
        image_processor = CLIPImageProcessor(**image_processor_config(cfg))
    if not _has_tokenizer(tok_dir):
        image_processor.save_pretrained(dst)
        return ["no tokenizer files in the checkpoint: wrote the image processor only"]
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    if add_tokens:
        if len(tokenizer) != image_id:
            raise ValueError(f"{tok_dir}: tokenizer has {len(tokenizer)} tokens, so <image> would "
                             f"get id {len(tokenizer)}, not the model's {image_id}; export with "
                             "the tokenizer the model was trained with")
        tokenizer.add_tokens([AddedToken(DEFAULT_IMAGE_TOKEN, special=True, normalized=False)],
                             special_tokens=True)
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    got = tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    if got != image_id:
        raise ValueError(f"{tok_dir}: tokenizer maps {DEFAULT_IMAGE_TOKEN} to {got}, the model's "
                         f"image_token_index is {image_id}")
    if pad_id is not None and tokenizer.pad_token_id != pad_id:
        raise ValueError(f"{tok_dir}: tokenizer pad id {tokenizer.pad_token_id}, expected {pad_id}")
    select = {"patch": "default", "cls_patch": "full"}[cfg.vision_feature_select]
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=cfg.vision.patch_size, vision_feature_select_strategy=select,
                               num_additional_image_tokens=1, image_token=DEFAULT_IMAGE_TOKEN)
    processor.save_pretrained(dst)
    return []


def copy_tokenizer_for_original(tok_dir: str | None, dst: str, vocab_size: int) -> list[str]:
    """Copy tokenizer files into an original-format LLM dir, dropping tokens with ids ≥
    `vocab_size` (llava-hf's `<image>`, `<pad>`: the original uses -200 and no pad, §2.4)."""
    if not _has_tokenizer(tok_dir):
        return ["no tokenizer files in the checkpoint: none written"]
    for name in ("tokenizer.model", "special_tokens_map.json"):
        if os.path.isfile(os.path.join(tok_dir, name)):
            shutil.copy2(os.path.join(tok_dir, name), os.path.join(dst, name))
    dropped: set[str] = set()
    path = os.path.join(tok_dir, "tokenizer.json")
    if os.path.isfile(path):
        with open(path) as f:
            tok = json.load(f)
        dropped |= {t["content"] for t in tok.get("added_tokens", []) if t["id"] >= vocab_size}
        tok["added_tokens"] = [t for t in tok.get("added_tokens", []) if t["id"] < vocab_size]
        with open(os.path.join(dst, "tokenizer.json"), "w") as f:
            json.dump(tok, f, ensure_ascii=False)
    path = os.path.join(tok_dir, "tokenizer_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            config = json.load(f)
        decoder = config.get("added_tokens_decoder", {})
        dropped |= {t["content"] for i, t in decoder.items() if int(i) >= vocab_size}
        config["added_tokens_decoder"] = {i: t for i, t in decoder.items() if int(i) < vocab_size}
        for field in ("pad_token", "extra_special_tokens", "additional_special_tokens"):
            value = config.get(field)
            if isinstance(value, list):
                config[field] = [v for v in value if v not in dropped]
            elif isinstance(value, str) and value in dropped:
                config[field] = None
        config.pop("processor_class", None)
        with open(os.path.join(dst, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
    return [f"dropped tokens {sorted(dropped)} (ids ≥ {vocab_size})"] if dropped else []
