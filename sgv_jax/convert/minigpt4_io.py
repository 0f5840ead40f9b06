"""MiniGPT-4 files ↔ sgv checkpoints (MINIGPT4.md §4, §5).

Import (`--from minigpt4`): the four things a MiniGPT-4 user has — `eva_vit_g.pth`,
`blip2_pretrained_flant5xxl.pth` (`{'model': …}`), `pretrained_minigpt4.pth` (`{'model': …}`)
and a Vicuna v0 HF folder — checked against the model config (from `minigpt4.json`, else the
preset the Vicuna config picks) before any tensor is read, then streamed group by group.
`--from blip2-hf`: an HF `Blip2ForConditionalGeneration` folder with a LLaMA text model.
Export writes the same file sets back. `.pth` files are only read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np

from sgv_jax.checkpoint_sgv import iter_sgv_groups, read_param_index, read_sgv_config
from sgv_jax.convert import minigpt4_formats as mf
from sgv_jax.convert.hf_config import text_from_hf, text_to_hf
from sgv_jax.convert.importers import Source, _tokenizer_files
from sgv_jax.convert.minigpt4_hf import config_from_blip2_hf
from sgv_jax.convert.safetensors_out import ShardedWriter
from sgv_jax.convert.sources import WeightFiles, read_json
from sgv_jax.convert.state_dict import ConversionError, to_numpy
from sgv_jax.convert.streaming import Part
from sgv_jax.models.config import (
    MiniGPT4Config,
    QFormerConfig,
    VisionConfig,
    VLMConfig,
    get_preset,
)

FILES = {"eva_vit": "eva_vit_g.pth", "blip2": "blip2_pretrained_flant5xxl.pth",
         "minigpt4_ckpt": "pretrained_minigpt4.pth", "vicuna": "vicuna"}
CONFIG_NAME = "minigpt4.json"
# minigpt4.json's `model` keys (the original yaml / code names) → where they go.
VISION_KEYS = {"image_size": "image_size", "patch_size": "patch_size", "vit_width": "hidden_size",
               "vit_depth": "num_layers", "vit_heads": "num_heads", "vit_ln_eps": "layer_norm_eps"}
QFORMER_KEYS = {"num_query_token": "num_query_tokens", "qformer_hidden": "hidden_size",
                "qformer_layers": "num_layers", "qformer_heads": "num_heads",
                "qformer_intermediate": "intermediate_size",
                "cross_attention_freq": "cross_attention_freq", "qformer_ln_eps": "layer_norm_eps",
                "bert_max_position_embeddings": "max_position_embeddings"}
# Not model shapes: kept in the checkpoint's metadata for data / generation.
RECIPE_KEYS = ("max_txt_len", "end_sym", "prompt_template", "image_mean", "image_std")
OTHER_KEYS = ("vit_mlp_ratio", "vit_depth_in_ckpt", "ln_vision_eps")


class PthFile(WeightFiles):
    """One `.pth` state dict, or the `['model']` dict of a LAVIS/MiniGPT-4 checkpoint."""

    def __init__(self, path: str):  # not super().__init__: that looks for HF file names
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: missing (pass its flag or put it in --src)")
        self.location, self.files = path, [path]
        state = self._state()
        self.key_file = {k: path for k in state}
        self.shapes = {k: tuple(v.shape) for k, v in state.items()}

    def _state(self) -> dict:
        return _load_nested(self.files[0])

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[dict[str, Any]]:
        state = self._state()
        try:
            yield {k: (lambda k=k: to_numpy(state[k])) for k in state}
        finally:
            del state


def _load_nested(path: str) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # LAVIS's saver also stores optimizer / config / epoch
    bad = [k for k, v in state.items() if not hasattr(v, "shape")]
    if bad:
        raise TypeError(f"{path}: expected a state dict of tensors; {bad[:5]} are not tensors")
    return state


class SplitQkvFiles(WeightFiles):
    """An HF Blip2 folder seen with each `qkv.bias` as `q_bias` + `v_bias` (mf.split_qkv_bias)."""

    def __init__(self, inner: WeightFiles):  # not super().__init__: wraps a read folder
        self.inner, self.location, self.files = inner, inner.location, inner.files
        self.key_file, self.shapes = {}, {}
        for key, file in inner.key_file.items():
            m = mf.QKV_BIAS.match(key)
            parts = [(m.group(1) + "q_bias", m.group(1) + "v_bias")] if m else [(key,)]
            for k in parts[0]:
                self.key_file[k] = file
                self.shapes[k] = (inner.shapes[key][0] // 3,) if m else inner.shapes[key]

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[dict[str, Any]]:
        with self.inner.open(path) as getters:
            out = {}
            for key, get in getters.items():
                if mf.QKV_BIAS.match(key):
                    def split(get=get, key=key):
                        return mf.split_qkv_bias({key: get()}, self.location)
                    prefix = key[: -len("qkv.bias")]
                    out[prefix + "q_bias"] = lambda s=split, p=prefix: s()[p + "q_bias"]
                    out[prefix + "v_bias"] = lambda s=split, p=prefix: s()[p + "v_bias"]
                else:
                    out[key] = get
            yield out


def config_from_files(src: str | None, vicuna: str) -> tuple[MiniGPT4Config, dict]:
    """(model config, recipe fields) from `minigpt4.json` when present, else the preset that
    the Vicuna width picks; the Vicuna sizes always come from its config.json."""
    text = text_from_hf(read_json(vicuna))
    path = os.path.join(src, CONFIG_NAME) if src else None
    if not path or not os.path.isfile(path):
        presets = {4096: "minigpt4_7b", 5120: "minigpt4_13b"}
        if text.hidden_size not in presets:
            raise ConversionError(f"{vicuna}/config.json: hidden_size {text.hidden_size} is neither "
                                  f"Vicuna-7B (4096) nor 13B (5120); write {CONFIG_NAME} into --src "
                                  "with the architecture numbers")
        return get_preset(presets[text.hidden_size]).replace(text=text), {}
    with open(path) as f:
        model = json.load(f).get("model")
    if not isinstance(model, dict):
        raise ConversionError(f"{path}: expected a JSON object {{\"model\": {{...}}}}")
    known = {*VISION_KEYS, *QFORMER_KEYS, *RECIPE_KEYS, *OTHER_KEYS}
    unknown = sorted(set(model) - known)
    if unknown:
        raise ConversionError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
    base = get_preset("minigpt4_7b")
    vision = {**base.vision.__dict__, **{VISION_KEYS[k]: v for k, v in model.items() if k in VISION_KEYS}}
    if "vit_mlp_ratio" in model:  # Block: mlp_hidden_dim = int(dim * mlp_ratio)
        vision["intermediate_size"] = int(vision["hidden_size"] * model["vit_mlp_ratio"])
    qformer = {**base.qformer.__dict__, **{QFORMER_KEYS[k]: v for k, v in model.items() if k in QFORMER_KEYS}}
    cfg = MiniGPT4Config(vision=VisionConfig(**vision), qformer=QFormerConfig(**qformer), text=text,
                         ln_vision_eps=model.get("ln_vision_eps", base.ln_vision_eps))
    recipe = {k: model[k] for k in (*RECIPE_KEYS, "vit_depth_in_ckpt") if k in model}
    return cfg, recipe


def read_minigpt4(src: str | None, eva_vit: str | None = None, blip2: str | None = None,
                  minigpt4_ckpt: str | None = None, vicuna: str | None = None
                  ) -> tuple[Source, list[str]]:
    """The MiniGPT-4 file set as a Source, and notes on what is deliberately left unused."""
    given = {"eva_vit": eva_vit, "blip2": blip2, "minigpt4_ckpt": minigpt4_ckpt, "vicuna": vicuna}
    paths = {k: v or (os.path.join(src, FILES[k]) if src else None) for k, v in given.items()}
    missing = [f"--{k.replace('_', '-')}" for k, v in paths.items() if v is None]
    if missing:
        raise ConversionError(f"--from minigpt4 needs --src DIR or {', '.join(missing)}")
    cfg, recipe = config_from_files(src, paths["vicuna"])
    eva, b2, proj = PthFile(paths["eva_vit"]), PthFile(paths["blip2"]), PthFile(paths["minigpt4_ckpt"])
    notes = []
    unused_blocks = mf.unused_eva_blocks(eva.keys(), cfg.vision.num_layers)
    found_blocks = cfg.vision.num_layers + len({k.split(".")[1] for k in unused_blocks})
    if recipe.get("vit_depth_in_ckpt", found_blocks) != found_blocks:
        raise ConversionError(f"{paths['eva_vit']}: {found_blocks} blocks, but {CONFIG_NAME} says "
                              f"vit_depth_in_ckpt {recipe['vit_depth_in_ckpt']}")
    if unused_blocks:
        notes.append(f"{paths['eva_vit']}: blocks {cfg.vision.num_layers}..{found_blocks - 1} "
                     f"ignored (MiniGPT-4 builds {cfg.vision.num_layers} blocks, MINIGPT4.md §1.1)")
    skipped = sorted({k.split(".")[0] for k in b2.keys() if mf.BLIP2_SKIPPED.match(k)})
    if skipped:
        notes.append(f"{paths['blip2']}: {', '.join(s + '.*' for s in skipped)} ignored "
                     "(BLIP-2's FlanT5 projection; MiniGPT-4 uses llama_proj)")
    vicuna_files = WeightFiles(paths["vicuna"])
    parts = [
        Part(eva, mf.eva_table(cfg), f"{paths['eva_vit']} (EVA ViT-g)",
             skip=lambda k: k in set(unused_blocks)),
        Part(b2, mf.blip2_table(cfg), f"{paths['blip2']} (BLIP-2 Q-Former)",
             skip=lambda k: bool(mf.BLIP2_SKIPPED.match(k))),
        Part(proj, mf.minigpt4_table(cfg), f"{paths['minigpt4_ckpt']} (llama_proj)"),
        Part(vicuna_files, mf.vicuna_table(cfg), f"{paths['vicuna']} (Vicuna)"),
    ]
    extra = {"source": {"format": "minigpt4", **{k: os.path.abspath(v) for k, v in paths.items()}}}
    if recipe:
        extra["minigpt4"] = {k: v for k, v in recipe.items() if k != "vit_depth_in_ckpt"}
    return Source(cfg, parts, {}, _tokenizer_files(paths["vicuna"]), extra), notes


def read_blip2_hf(src: str) -> Source:
    c = read_json(src)
    cfg = config_from_blip2_hf(c)
    files = SplitQkvFiles(WeightFiles(src))
    part = Part(files, mf.blip2_hf_table(cfg), f"{src} (Blip2ForConditionalGeneration)")
    extra = {"source": {"format": "blip2-hf", "path": os.path.abspath(src)}}
    return Source(cfg, [part], {}, _tokenizer_files(src), extra)


# ----------------------------------------------------------------------------- export


def _load_config(ckpt: str) -> tuple[MiniGPT4Config, dict]:
    meta = read_sgv_config(ckpt)
    cfg = VLMConfig.from_dict(meta["model"])
    if not isinstance(cfg, MiniGPT4Config):
        raise ConversionError(f"{ckpt} holds a LLaVA-family model, not MiniGPT-4; use --to llava-hf")
    return cfg, meta


def _start(dst: str) -> str:
    if os.path.exists(dst):
        raise FileExistsError(f"{dst} already exists; choose a new destination or remove it")
    partial = os.path.abspath(dst) + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    return partial


def _their_plan(index: dict, by_path: dict, fuse: bool) -> list:
    plan = []
    for group in index.values():
        for path in sorted(group):
            if path not in by_path:
                continue
            key, tf = by_path[path]
            shape = tf.theirs_shape(tuple(group[path]["shape"]))
            if fuse and key.startswith("vision_model.") and key.endswith(".v_bias"):
                continue
            if fuse and key.startswith("vision_model.") and key.endswith(".q_bias"):
                key, shape = key[: -len("q_bias")] + "qkv.bias", (3 * shape[0],)
            plan.append((key, shape, group[path]["dtype"]))
    return plan


def _groups_theirs(ckpt: str, by_path: dict, fuse: bool, progress: bool):
    """{their key: tensor} per sgv group, in `_their_plan` order."""
    from tqdm import tqdm

    for _, flat in tqdm(iter_sgv_groups(ckpt), total=len(read_param_index(ckpt)), unit="group",
                        desc="exporting", disable=not progress):
        theirs = {by_path[p][0]: by_path[p][1].to_theirs(flat[p]) for p in sorted(flat) if p in by_path}
        yield mf.fuse_qkv_bias(theirs) if fuse else theirs


def _torch_save(state: dict, path: str, nested: bool) -> None:
    import torch

    def tensor(a):
        a = np.ascontiguousarray(a)
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)

    tensors = {k: tensor(v) for k, v in state.items()}
    torch.save({"model": tensors} if nested else tensors, path)


def export_minigpt4(ckpt: str, dst: str, progress: bool = True) -> list[str]:
    """`dst/` = eva_vit_g.pth, blip2_pretrained_flant5xxl.pth, pretrained_minigpt4.pth (the
    original code loads each with strict=False), vicuna/ (HF LLaMA folder + tokenizer) and
    minigpt4.json."""
    cfg, meta = _load_config(ckpt)
    index = read_param_index(ckpt)
    partial = _start(dst)
    vicuna_dir = os.path.join(partial, FILES["vicuna"])
    os.makedirs(vicuna_dir)
    tables = {"eva_vit": mf.eva_table(cfg), "blip2": mf.blip2_table(cfg),
              "minigpt4_ckpt": mf.minigpt4_table(cfg), "vicuna": mf.vicuna_table(cfg)}
    by_path = {p: (k, tf) for t in tables.values() for k, (p, tf) in t.items()}
    owner = {k: name for name, t in tables.items() for k in t}
    writer = ShardedWriter(vicuna_dir, _their_plan(index, {p: by_path[p] for p in by_path
                                                           if owner[by_path[p][0]] == "vicuna"},
                                                   False), 2 << 30)
    small: dict[str, dict] = {"eva_vit": {}, "blip2": {}, "minigpt4_ckpt": {}}
    for theirs in _groups_theirs(ckpt, by_path, False, progress):
        for key, value in theirs.items():
            if owner[key] == "vicuna":
                writer.write(key, value)
            else:
                small[owner[key]][key] = value
    writer.close()
    for name, state in small.items():
        order = list(tables[name])  # the original modules' parameter order
        _torch_save({k: state[k] for k in order}, os.path.join(partial, FILES[name]),
                    nested=name != "eva_vit")
    dtype = next(iter(next(iter(index.values())).values()))["dtype"]
    with open(os.path.join(vicuna_dir, "config.json"), "w") as f:
        json.dump({**text_to_hf(cfg.text), "architectures": ["LlamaForCausalLM"], "dtype": dtype},
                  f, indent=2)
    _copy_tokenizer(ckpt, vicuna_dir)
    with open(os.path.join(partial, CONFIG_NAME), "w") as f:
        json.dump({"model": minigpt4_json(cfg, meta.get("minigpt4", {}))}, f, indent=2)
    os.replace(partial, dst)
    return []


def minigpt4_json(cfg: MiniGPT4Config, recipe: dict) -> dict:
    v, q = cfg.vision.__dict__, cfg.qformer.__dict__
    out = {k: v[ours] for k, ours in VISION_KEYS.items()}
    out.update({k: q[ours] for k, ours in QFORMER_KEYS.items()})
    out["vit_mlp_ratio"] = cfg.vision.intermediate_size / cfg.vision.hidden_size
    out["ln_vision_eps"] = cfg.ln_vision_eps
    return {**out, **recipe}


def _copy_tokenizer(ckpt: str, dst: str) -> None:
    tok = os.path.join(ckpt, "tokenizer")
    if os.path.isdir(tok):
        for name in os.listdir(tok):
            shutil.copy(os.path.join(tok, name), os.path.join(dst, name))


def export_blip2_hf(ckpt: str, dst: str, progress: bool = True) -> list[str]:
    """An HF `Blip2ForConditionalGeneration` folder (LLaMA text model). HF has one eps for the
    ViT and post_layernorm (= ln_vision), so the export records `ln_vision_eps` in config.json
    too; transformers runs post_layernorm at the ViT's eps (a ~5e-6 drift, MINIGPT4.md §5.2)."""
    cfg, _ = _load_config(ckpt)
    index = read_param_index(ckpt)
    partial = _start(dst)
    by_path = {p: (k, tf) for k, (p, tf) in mf.blip2_hf_table(cfg).items()}
    writer = ShardedWriter(partial, _their_plan(index, by_path, True), 2 << 30)
    for theirs in _groups_theirs(ckpt, by_path, True, progress):
        for key, value in theirs.items():
            writer.write(key, value)
    writer.close()
    with open(os.path.join(partial, "config.json"), "w") as f:
        json.dump(blip2_hf_config(cfg), f, indent=2)
    _copy_tokenizer(ckpt, partial)
    os.replace(partial, dst)
    notes = []
    if cfg.ln_vision_eps != cfg.vision.layer_norm_eps:
        notes.append(f"transformers applies ln_vision (post_layernorm) with eps "
                     f"{cfg.vision.layer_norm_eps}, MiniGPT-4 with {cfg.ln_vision_eps} (§5.2)")
    return notes


def blip2_hf_config(cfg: MiniGPT4Config) -> dict:
    v, q = cfg.vision, cfg.qformer
    image_id = cfg.image_token_id if cfg.image_token_id >= 0 else None
    return {
        "model_type": "blip-2", "architectures": ["Blip2ForConditionalGeneration"],
        "num_query_tokens": q.num_query_tokens, "image_token_index": image_id,
        "ln_vision_eps": cfg.ln_vision_eps,
        "vision_config": {"model_type": "blip_2_vision_model", "hidden_size": v.hidden_size,
                          "intermediate_size": v.intermediate_size,
                          "num_hidden_layers": v.num_layers, "num_attention_heads": v.num_heads,
                          "patch_size": v.patch_size, "image_size": v.image_size,
                          "layer_norm_eps": v.layer_norm_eps, "hidden_act": v.hidden_act,
                          "qkv_bias": True},
        "qformer_config": {"model_type": "blip_2_qformer", "hidden_size": q.hidden_size,
                           "intermediate_size": q.intermediate_size,
                           "num_hidden_layers": q.num_layers, "num_attention_heads": q.num_heads,
                           "cross_attention_frequency": q.cross_attention_freq,
                           "layer_norm_eps": q.layer_norm_eps, "encoder_hidden_size": v.hidden_size,
                           "max_position_embeddings": q.max_position_embeddings},
        "text_config": text_to_hf(cfg.text),
    }
