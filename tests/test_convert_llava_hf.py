"""llava-hf → sgv → llava-hf: bit-identical tensors, a clean `from_pretrained`, equal logits."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors.numpy import load_file

from sgv_jax.checkpoint_sgv import load_sgv, read_sgv_config
from sgv_jax.convert import exporters, importers
from tests.hf_tiny import make_inputs
from tests.test_convert_helpers import hf_logits, jax_logits, save_llava_hf

pytestmark = pytest.mark.torch
ROUNDTRIP_LOGIT_TOL = 1e-5
JAX_LOGIT_TOL = 1e-4


def load_hf(folder):
    from transformers import LlavaForConditionalGeneration

    model, info = LlavaForConditionalGeneration.from_pretrained(
        folder, attn_implementation="eager", output_loading_info=True, dtype=torch.float32)
    return model.eval(), info


def all_tensors(folder):
    tensors = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(folder, name)))
    return tensors


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava_hf")
    model, src = save_llava_hf(str(root / "src"))
    ckpt = importers.to_sgv(importers.read_llava_hf(src), str(root / "ckpt"), progress=False)
    # Small shards so the exported dir is sharded with an index, like the published 7B.
    exporters.export_llava_hf(ckpt, str(root / "out"), max_shard_bytes=40_000, progress=False)
    return model, src, ckpt, str(root / "out")


def test_every_tensor_is_bit_identical_with_the_same_dtype(roundtrip):
    _, src, _, out = roundtrip
    before, after = all_tensors(src), all_tensors(out)
    # transformers 5.24 writes `vision_tower.*` without `vision_model.` (REFERENCE §8); the
    # export uses the published layout `vision_tower.vision_model.*`.
    renamed = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v
               for k, v in before.items()}
    assert sorted(renamed) == sorted(after)
    for key, value in renamed.items():
        assert after[key].dtype == value.dtype, key
        assert np.array_equal(after[key], value), key
    assert os.path.isfile(os.path.join(out, "model.safetensors.index.json"))


def test_export_loads_cleanly_and_gives_the_same_logits(roundtrip):
    model, _, _, out = roundtrip
    loaded, info = load_hf(out)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info[kind], (kind, info[kind])
    assert loaded.config.image_token_index == model.config.image_token_index
    ids, mask, pixels = make_inputs(model.config, [6, 4], [True, True])
    diff = np.abs(hf_logits(loaded, ids, mask, pixels) - hf_logits(model, ids, mask, pixels))
    assert diff.max() <= ROUNDTRIP_LOGIT_TOL


def test_sgv_checkpoint_runs_in_jax_like_hf(roundtrip, highest_precision):
    model, _, ckpt, _ = roundtrip
    cfg, params = load_sgv(ckpt)
    meta = read_sgv_config(ckpt)
    assert meta["format"] == "sgv" and meta["dtype"] == "float32"
    assert meta["hf_image_token_index"] == model.config.image_token_index
    ids, mask, pixels = make_inputs(model.config, [7], [True])
    diff = np.abs(jax_logits(params, cfg, ids, mask, pixels) - hf_logits(model, ids, mask, pixels))
    assert diff.max() <= JAX_LOGIT_TOL


def test_bf16_conversion_casts_every_parameter(roundtrip, tmp_path):
    _, src, _, _ = roundtrip
    ckpt = importers.to_sgv(importers.read_llava_hf(src), str(tmp_path / "bf16"), "bfloat16",
                            progress=False)
    _, params = load_sgv(ckpt)
    import jax

    assert {str(x.dtype) for x in jax.tree.leaves(params)} == {"bfloat16"}
    assert read_sgv_config(ckpt)["dtype"] == "bfloat16"


def sgv_tensors(ckpt):
    from sgv_jax.checkpoint_sgv import iter_sgv_groups

    return {p: v for _, g in iter_sgv_groups(ckpt) for p, v in g.items()}


@pytest.mark.parametrize("rename", [
    {},  # our export: published old layout with `vision_tower.vision_model.`
    {"language_model.model.": "model.language_model.", "language_model.lm_head.": "lm_head.",
     "vision_tower.": "model.vision_tower.", "multi_modal_projector.": "model.multi_modal_projector."},
], ids=["old-nested-clip", "new-layout"])
def test_both_on_disk_layouts_import_to_the_same_parameters(roundtrip, tmp_path, rename):
    import shutil

    from safetensors.numpy import save_file

    _, _, ckpt, out = roundtrip
    src = tmp_path / "src"
    shutil.copytree(out, src)
    if rename:
        for name in os.listdir(src):
            if name.endswith(".safetensors"):
                renamed = {}
                for key, value in load_file(os.path.join(src, name)).items():
                    old = next((o for o in rename if key.startswith(o)), None)
                    renamed[rename[old] + key[len(old):] if old else key] = value
                save_file(renamed, os.path.join(src, name), metadata={"format": "pt"})
        os.remove(src / "model.safetensors.index.json")  # now names stale keys; files suffice
    again = importers.to_sgv(importers.read_llava_hf(str(src)), str(tmp_path / "ckpt"),
                             progress=False)
    first, second = sgv_tensors(ckpt), sgv_tensors(again)
    assert first.keys() == second.keys()
    assert all(np.array_equal(v, second[p]) for p, v in first.items())
