"""Export: sgv → llava-hf directory, or → original LLaVA / ShareGPT4V (LLM dir + `vision_tower/`).

The mapping tables are read backwards; groups stream out of the sgv checkpoint one at a time and
their tensors go straight into planned safetensors shards (`safetensors_out`). The destination is
built in `<dst>.partial` and renamed at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable

import numpy as np

from sgv_jax.checkpoint_sgv import iter_sgv_groups, read_param_index, read_sgv_config
from sgv_jax.convert import adapters, formats
from sgv_jax.convert.hf_config import original_from_vlm, vision_to_hf, vlm_to_llava_hf
from sgv_jax.convert.hf_files import (
    copy_tokenizer_for_original,
    image_processor_config,
    tokenizer_size,
    write_llava_hf_processor,
)
from sgv_jax.convert.safetensors_out import ShardedWriter
from sgv_jax.models.config import LoraConfig, VLMConfig

DEFAULT_SHARD_BYTES = 2 << 30
VOCAB_ROWS = ("language_model/embed_tokens/embedding", "language_model/lm_head/kernel")
RowFix = Callable[[str, np.ndarray], np.ndarray]  # (our path, their tensor) → tensor to write


def sample_new_rows(rows: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Append rows drawn from N(mean, 1e-5·cov) of the existing ones, as llava-hf's converter
    does when it grows the vocab for `<image>`/`<pad>` (REFERENCE §1.7, [TC])."""
    old = rows.astype(np.float64)
    mean = old.mean(axis=0)
    centered = old - mean
    cov = centered.T @ centered / len(old)
    new = rng.multivariate_normal(mean, 1e-5 * cov, size=total - len(old), method="eigh")
    return np.concatenate([rows, new.astype(rows.dtype)])


def _stream_out(ckpt: str, outputs: list[tuple[str, dict, ShardedWriter]], fix: RowFix,
                progress: bool, merge_lora: LoraConfig | None = None) -> None:
    """Write every parameter through its table (our path → (their key, transform)); with
    `merge_lora` each block's adapters are first folded into its kernels."""
    from tqdm import tqdm

    index = read_param_index(ckpt)
    total = sum(len(g) for g in index.values())
    with tqdm(total=total, unit="tensor", desc="exporting", disable=not progress,
              mininterval=1.0) as bar:
        for _, flat in iter_sgv_groups(ckpt):
            if merge_lora is not None:
                flat = adapters.merge_group(flat, merge_lora)
            for path in sorted(flat):
                for _, table, writer in outputs:
                    if path in table:
                        key, tf = table[path]
                        writer.write(key, fix(path, tf.to_theirs(flat[path])))
                bar.update(1)
    for _, _, writer in outputs:
        writer.close()


def _plan(index: dict, table: dict, shape_of: Callable[[str, tuple], tuple]) -> list:
    """(their key, their shape, dtype) in the order `_stream_out` produces them."""
    plan = []
    for group in index.values():
        for path in sorted(group):
            if path in table:
                key, tf = table[path]
                plan.append((key, shape_of(path, tf.theirs_shape(tuple(group[path]["shape"]))),
                             group[path]["dtype"]))
    return plan


def _by_path(table: dict) -> dict:
    return {path: (key, tf) for key, (path, tf) in table.items()}


def _start(dst: str) -> str:
    if os.path.exists(dst):
        raise FileExistsError(f"{dst} already exists; choose a new destination or remove it")
    partial = os.path.abspath(dst) + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    return partial


def _dtype_of(index: dict) -> str:
    dtypes = {leaf["dtype"] for g in index.values() for leaf in g.values()}
    return dtypes.pop() if len(dtypes) == 1 else "float32"


def export_llava_hf(ckpt: str, dst: str, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                    seed: int = 0, progress: bool = True, merge_lora: bool = False) -> list[str]:
    """A `LlavaForConditionalGeneration` directory (old on-disk layout, as the published llava-hf
    files). A model whose images use -200 (not a vocab id) gets llava-hf's `<image>`/`<pad>`
    tokens: after the tokenizer's last token, in a vocab padded to a multiple of 64 (§1.7), or,
    when the vocab already has two unused rows after the tokenizer's tokens (a padded vocab, as
    the demo's 500 tokens in 512 rows), in those rows. A checkpoint with LoRA adapters also
    gets `dst/adapter/` in PEFT's format (loads with `PeftModel.from_pretrained` onto the
    exported base), or with `merge_lora` the adapters folded into the weights. Returns notes."""
    meta = read_sgv_config(ckpt)
    cfg = VLMConfig.from_dict(meta["model"])
    index = read_param_index(ckpt)
    vocab = cfg.text.vocab_size
    add_tokens = not 0 <= cfg.image_token_id < vocab
    tokens = tokenizer_size(_tok_dir(ckpt)) if add_tokens else None
    if add_tokens and tokens is not None and tokens + 2 <= vocab:
        image_id, pad_id, new_vocab = tokens, tokens + 1, vocab  # rows no token id ever used
    elif add_tokens:
        image_id, pad_id, new_vocab = formats.padded_vocab(vocab)
    else:
        image_id, pad_id, new_vocab = cfg.image_token_id, None, vocab
    grow = new_vocab > vocab
    if add_tokens:
        text = dataclasses.replace(cfg.text, vocab_size=new_vocab, pad_token_id=pad_id)
        hf_cfg = vlm_to_llava_hf(cfg.replace(text=text, image_token_id=image_id), image_id)
    else:
        hf_cfg = vlm_to_llava_hf(cfg, image_id)
    hf_cfg["dtype"] = _dtype_of(index)
    if pad_id is not None:
        hf_cfg["pad_token_id"] = pad_id  # as llava-hf's converter sets it ([TC])
    rng = np.random.default_rng(seed)

    def shape_of(path, shape):
        return (new_vocab, shape[1]) if grow and path in VOCAB_ROWS else shape

    def fix(path, tensor):
        return sample_new_rows(tensor, new_vocab, rng) if grow and path in VOCAB_ROWS else tensor

    partial = _start(dst)
    table = _by_path(formats.key_table(cfg, formats.LLAVA_HF_OLD))
    writer = ShardedWriter(partial, _plan(index, table, shape_of), max_shard_bytes)
    outputs = [("weights", table, writer)]
    adapter_out = cfg.lora is not None and not merge_lora
    if adapter_out:
        # transformers 5 names the decoder `model.language_model.` whatever the file layout;
        # the regex keeps PEFT off CLIP's own q/k/v_proj (suffix matching, LORA.md §1.1).
        outputs.append(_adapter_output(index, cfg, partial, "adapter", LLAVA_HF_LLM))
    _stream_out(ckpt, outputs, fix, progress, cfg.lora if merge_lora else None)
    if adapter_out:
        regex = r".*language_model.*\.(" + "|".join(cfg.lora.targets) + ")"
        _write_json(os.path.join(partial, "adapter", "adapter_config.json"),
                    adapters.adapter_config_json(cfg.lora, os.path.abspath(dst), regex))
    with open(os.path.join(partial, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2)
    notes = write_llava_hf_processor(_tok_dir(ckpt), partial, cfg, image_id, pad_id, add_tokens)
    if grow:
        notes.append(f"images used id {cfg.image_token_id}: added <image>={image_id}, "
                     f"<pad>={pad_id}, vocab {vocab} → {new_vocab}")
    elif add_tokens:
        notes.append(f"images used id {cfg.image_token_id}: added <image>={image_id}, "
                     f"<pad>={pad_id} in unused rows (the tokenizer has {tokens} tokens, the "
                     f"vocab {vocab} rows; vocab unchanged)")
    if merge_lora and cfg.lora is not None:
        notes.append(f"LoRA adapters (rank {cfg.lora.rank}) merged into the weights")
    os.replace(partial, dst)  # only a complete export gets the real name
    return notes


LLAVA_HF_LLM = "model.language_model."
LLAVA_LLM = "model."


def _write_json(path: str, content: dict) -> None:
    with open(path, "w") as f:
        json.dump(content, f, indent=2)


def _adapter_output(index: dict, cfg: VLMConfig, root: str, sub: str, llm_prefix: str):
    """The PEFT adapter file as one more output table (`root/sub/adapter_model.safetensors`)."""
    os.makedirs(os.path.join(root, sub), exist_ok=True)
    table = _by_path(adapters.adapter_table(cfg, llm_prefix))
    plan = _plan(index, table, lambda path, shape: shape)
    return ("adapter", table, ShardedWriter(os.path.join(root, sub), plan, 1 << 62,
                                            stem="adapter_model"))


def export_llava(ckpt: str, dst: str, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 progress: bool = True, merge_lora: bool = False) -> list[str]:
    """Original LLaVA / ShareGPT4V: `dst/` = LLM + projector (`LlavaLlamaForCausalLM` keys,
    mm_* config, §2.1/§2.3), `dst/vision_tower/` = a `CLIPVisionModel` dir (§2.2). A model from
    llava-hf (image id 32000) gets its vocab cut back to the ids below the image token (§2.4).
    A checkpoint with LoRA adapters (unless `merge_lora`) gives LLaVA's LoRA folder instead
    (LORA.md §4.8): `dst/` = config.json, adapter_config.json, adapter_model.safetensors,
    non_lora_trainables.bin (the projector, a torch pickle), and the base in `dst/base/` (LLM
    dir + `vision_tower/`), loaded by LLaVA's builder with `--model-base dst/base`."""
    if merge_lora or VLMConfig.from_dict(read_sgv_config(ckpt)["model"]).lora is None:
        return _export_llava_full(ckpt, dst, max_shard_bytes, progress, merge_lora)
    return _export_llava_lora(ckpt, dst, max_shard_bytes, progress)


def _export_llava_lora(ckpt: str, dst: str, max_shard_bytes: int, progress: bool) -> list[str]:
    import torch

    cfg = VLMConfig.from_dict(read_sgv_config(ckpt)["model"])
    partial = _start(dst)
    base = os.path.join(dst, "base")
    notes = _export_llava_full(ckpt, os.path.join(partial, "base"), max_shard_bytes, progress,
                               False, final_dst=base)
    index = read_param_index(ckpt)
    out = _adapter_output(index, cfg, partial, "", LLAVA_LLM)
    projector = {}
    proj_table = _by_path(formats.key_table(cfg, dataclasses.replace(
        formats.MM_PROJECTOR, projector="base_model.model.model.mm_projector.")))
    for _, flat in iter_sgv_groups(ckpt):
        for path in sorted(flat):
            if path in out[1]:
                key, tf = out[1][path]
                out[2].write(key, tf.to_theirs(flat[path]))
            if path in proj_table:
                key, tf = proj_table[path]
                projector[key] = torch.from_numpy(np.ascontiguousarray(
                    tf.to_theirs(flat[path]).astype(np.float32)))
    out[2].close()
    torch.save(projector, os.path.join(partial, "non_lora_trainables.bin"))
    with open(os.path.join(partial, "base", "config.json")) as f:
        llm_config = json.load(f)
    _write_json(os.path.join(partial, "config.json"), llm_config)
    _write_json(os.path.join(partial, "adapter_config.json"),
                adapters.adapter_config_json(cfg.lora, os.path.abspath(base), None))
    os.replace(partial, dst)
    name = os.path.basename(os.path.abspath(dst)).lower()
    if "llava" not in name or "lora" not in name:
        notes.append(f"LLaVA's builder picks its LoRA branch by folder name: rename {dst} to a "
                     "name with both 'llava' and 'lora' (LORA.md §4.8)")
    return notes


def _export_llava_full(ckpt: str, dst: str, max_shard_bytes: int, progress: bool,
                       merge_lora: bool, final_dst: str | None = None) -> list[str]:
    meta = read_sgv_config(ckpt)
    cfg = VLMConfig.from_dict(meta["model"])
    index = read_param_index(ckpt)
    vocab = cfg.image_token_id if 0 <= cfg.image_token_id < cfg.text.vocab_size \
        else cfg.text.vocab_size
    notes = [] if vocab == cfg.text.vocab_size else \
        [f"vocab cut from {cfg.text.vocab_size} to {vocab} rows (ids from the image token on)"]

    def shape_of(path, shape):
        return (vocab, shape[1]) if path in VOCAB_ROWS else shape

    def fix(path, tensor):
        return tensor[:vocab] if path in VOCAB_ROWS else tensor

    partial = _start(dst)
    tower_dir = os.path.join(partial, "vision_tower")
    os.makedirs(tower_dir)
    llm_table = _by_path(formats.key_table(cfg, formats.ORIGINAL_LLAVA_NO_VISION))
    clip_table = _by_path(formats.key_table(cfg, formats.CLIP_DIR))
    outputs = [("llm", llm_table, ShardedWriter(partial, _plan(index, llm_table, shape_of),
                                                max_shard_bytes)),
               ("clip", clip_table, ShardedWriter(tower_dir, _plan(index, clip_table, shape_of),
                                                  max_shard_bytes))]
    _stream_out(ckpt, outputs, fix, progress, cfg.lora if merge_lora else None)
    text = dataclasses.replace(cfg.text, vocab_size=vocab)
    final_tower = os.path.join(os.path.abspath(final_dst or dst), "vision_tower")
    llm_config = {**original_from_vlm(cfg.replace(text=text), final_tower),
                  "dtype": _dtype_of(index)}
    tower_config = {**vision_to_hf(cfg.vision), "architectures": ["CLIPVisionModel"],
                    "dtype": _dtype_of(index)}
    for path, content in ((os.path.join(partial, "config.json"), llm_config),
                          (os.path.join(tower_dir, "config.json"), tower_config),
                          (os.path.join(tower_dir, "preprocessor_config.json"),
                           _source_image_config(ckpt) or image_processor_config(cfg))):
        with open(path, "w") as f:
            json.dump(content, f, indent=2)
    notes += copy_tokenizer_for_original(_tok_dir(ckpt), partial, vocab)
    os.replace(partial, dst)  # only a complete export gets the real name
    return notes


def _source_image_config(ckpt: str) -> dict | None:
    path = os.path.join(ckpt, "tokenizer", "preprocessor_config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _tok_dir(ckpt: str) -> str | None:
    path = os.path.join(ckpt, "tokenizer")
    return path if os.path.isdir(path) else None
