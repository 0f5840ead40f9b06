"""`launch/convert.py --from minigpt4 / blip2-hf` and back: tiny original-format files written
here (MINIGPT4.md §4: plain `eva_vit_g.pth` with one extra unused block, `{'model': …}` BLIP-2
and MiniGPT-4 checkpoints with buffers and `t5_proj`, a Vicuna folder, `minigpt4.json`), the
same weights as the HF model the parity tests check, and bitwise round trips."""

import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from launch import convert as convert_cli
from sgv_jax.checkpoint_sgv import load_sgv
from sgv_jax.convert import minigpt4_formats as mf
from sgv_jax.convert.minigpt4_hf import from_blip2_hf_state_dict
from sgv_jax.convert.state_dict import state_dict_from_params
from tests.minigpt4_tiny import build_hf_minigpt4

pytestmark = pytest.mark.torch

TINY_JSON = {"image_size": 21, "patch_size": 7, "vit_width": 24, "vit_depth": 3,
             "vit_depth_in_ckpt": 4, "vit_heads": 2, "vit_mlp_ratio": 44 / 24, "vit_ln_eps": 1e-6,
             "ln_vision_eps": 1e-5, "num_query_token": 5, "qformer_hidden": 36,
             "qformer_layers": 4, "qformer_heads": 3, "qformer_intermediate": 52,
             "cross_attention_freq": 2, "qformer_ln_eps": 1e-12,
             "bert_max_position_embeddings": 16, "max_txt_len": 160, "end_sym": "###",
             "prompt_template": "###Human: {} ###Assistant: ",
             "image_mean": [0.48145466, 0.4578275, 0.40821073],
             "image_std": [0.26862954, 0.26130258, 0.27577711]}


def tensors(state):
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


@pytest.fixture(scope="module")
def original_dir(tmp_path_factory):
    """The four MiniGPT-4 files of the tiny HF model's weights, plus what real files also hold."""
    root = tmp_path_factory.mktemp("minigpt4")
    hf = build_hf_minigpt4()
    cfg, params = from_blip2_hf_state_dict(hf.state_dict(), hf.config.to_dict())
    rng = np.random.default_rng(0)
    eva = state_dict_from_params(params, mf.eva_table(cfg))
    for k in [k for k in eva if k.startswith("blocks.2.")]:  # the checkpoint's unused last block
        eva[k.replace("blocks.2.", "blocks.3.")] = rng.standard_normal(eva[k].shape).astype(np.float32)
    torch.save(tensors(eva), root / "eva_vit_g.pth")
    blip2 = state_dict_from_params(params, mf.blip2_table(cfg))
    blip2["t5_proj.weight"] = rng.standard_normal((8, 36)).astype(np.float32)
    blip2["t5_proj.bias"] = np.zeros(8, np.float32)
    blip2["Qformer.bert.embeddings.position_ids"] = np.arange(16)[None]
    torch.save({"model": tensors(blip2), "epoch": 3}, root / "blip2_pretrained_flant5xxl.pth")
    proj = state_dict_from_params(params, mf.minigpt4_table(cfg))
    proj["llama_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    torch.save({"model": tensors(proj)}, root / "pretrained_minigpt4.pth")
    hf.language_model.save_pretrained(root / "vicuna")
    (root / "minigpt4.json").write_text(json.dumps({"model": TINY_JSON}))
    return root, hf, cfg, params


def run_cli(*args):
    return convert_cli.main([*args, "--quiet"])


def same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_minigpt4_to_sgv_to_minigpt4_bitwise(original_dir, tmp_path, capsys):
    root, _, cfg, params = original_dir
    assert run_cli("--from", "minigpt4", "--src", str(root), "--to", "sgv",
                   "--dst", str(tmp_path / "ck")) == 0
    out = capsys.readouterr().out
    assert "blocks 3..3 ignored" in out and "t5_proj.* ignored" in out
    loaded_cfg, loaded = load_sgv(str(tmp_path / "ck"))
    assert loaded_cfg.vision == cfg.vision and loaded_cfg.qformer == cfg.qformer
    same_tree(loaded, params)  # the same weights as the HF model the parity tests check

    assert run_cli("--from", "sgv", "--src", str(tmp_path / "ck"), "--to", "minigpt4",
                   "--dst", str(tmp_path / "back")) == 0
    for name, nested in (("eva_vit_g.pth", False), ("blip2_pretrained_flant5xxl.pth", True),
                         ("pretrained_minigpt4.pth", True)):
        orig = torch.load(root / name, weights_only=True)
        back = torch.load(tmp_path / "back" / name, weights_only=True)
        orig, back = (orig["model"], back["model"]) if nested else (orig, back)
        dropped = {k for k in orig if k.startswith(("blocks.3.", "t5_proj.")) or "position_ids" in k
                   or "inv_freq" in k}
        assert set(back) == set(orig) - dropped, name
        for k, v in back.items():
            assert torch.equal(v, orig[k]), k
    from safetensors.numpy import load_file

    vicuna = load_file(str(tmp_path / "back" / "vicuna" / "model.safetensors"))
    theirs = load_file(str(root / "vicuna" / "model.safetensors"))
    assert set(vicuna) == set(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(vicuna[k], v)
    back_json = json.loads((tmp_path / "back" / "minigpt4.json").read_text())["model"]
    assert {k: back_json[k] for k in TINY_JSON if k != "vit_depth_in_ckpt"} == \
        {k: v for k, v in TINY_JSON.items() if k != "vit_depth_in_ckpt"}


def test_blip2_hf_to_sgv_to_blip2_hf_bitwise(original_dir, tmp_path):
    _, hf, _, params = original_dir
    hf.save_pretrained(tmp_path / "hf")
    assert run_cli("--from", "blip2-hf", "--src", str(tmp_path / "hf"), "--to", "sgv",
                   "--dst", str(tmp_path / "ck")) == 0
    same_tree(load_sgv(str(tmp_path / "ck"))[1], params)
    assert run_cli("--from", "sgv", "--src", str(tmp_path / "ck"), "--to", "blip2-hf",
                   "--dst", str(tmp_path / "out")) == 0
    from safetensors.numpy import load_file
    from transformers import Blip2ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    ours, theirs = load_file(str(tmp_path / "out" / "model.safetensors")), \
        load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(ours[k], v, err_msg=k)
    hf_logging.set_verbosity_warning()
    _, info = Blip2ForConditionalGeneration.from_pretrained(str(tmp_path / "out"),
                                                            output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_shape_mismatch_is_named(original_dir, tmp_path, capsys):
    root, *_ = original_dir
    bad = tmp_path / "bad"
    os.makedirs(bad)
    for name in ("eva_vit_g.pth", "blip2_pretrained_flant5xxl.pth", "pretrained_minigpt4.pth"):
        os.symlink(root / name, bad / name)
    os.symlink(root / "vicuna", bad / "vicuna")
    (bad / "minigpt4.json").write_text(json.dumps({"model": {**TINY_JSON, "qformer_intermediate": 50}}))
    assert run_cli("--from", "minigpt4", "--src", str(bad), "--to", "sgv",
                   "--dst", str(tmp_path / "ck")) == 1
    err = capsys.readouterr().err
    assert "intermediate_query.dense.weight: expected (50, 36), found (52, 36)" in err
