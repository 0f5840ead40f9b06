"""The BUILD.md stand-ins (tests/standins.py) have the real names and formats, and convert to an
sgv checkpoint the way the stage-1 command in BUILD.md does (components → sgv)."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sgv_jax.checkpoint_sgv import load_sgv
from sgv_jax.convert import importers
from sgv_jax.data.records import RecordFile
from sgv_jax.data.tokenize import load_tokenizer
from tests import standins

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return standins.build(str(tmp_path_factory.mktemp("standins")), n_pretrain=12, n_finetune=8)


def test_layout_matches_the_real_folders(built):
    out = os.path.dirname(built["clip"])
    for rel in ("clip-vit-large-patch14-336/config.json",
                "clip-vit-large-patch14-336/preprocessor_config.json",
                "vicuna-7b-v1.5/pytorch_model.bin.index.json",
                "vicuna-7b-v1.5/tokenizer.model", "vicuna-7b-v1.5/tokenizer_config.json",
                "llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5/mm_projector.bin",
                "data/" + standins.PT_JSON, "data/" + standins.SFT_JSON):
        assert os.path.isfile(os.path.join(out, rel)), rel
    with open(built["finetune_json"]) as f:
        records = json.load(f)
    assert any("image" not in r for r in records)  # text-only samples, as in the mix665k file
    with open(built["pretrain_json"]) as f:
        records += json.load(f)
    for r in records:
        if "image" in r:
            assert os.path.isfile(os.path.join(built["data"], r["image"])), r["image"]
    assert len(RecordFile(built["pretrain_json"])) == 12


def test_components_convert_to_sgv(built, tmp_path):
    source = importers.read_components(built["clip"], built["llm"], built["projector"])
    cfg, params = load_sgv(importers.to_sgv(source, str(tmp_path / "init"), progress=False))
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.num_image_tokens) == (28, 14, 4)
    assert cfg.text.vocab_size == standins.VOCAB
    projector = torch.load(built["projector"], weights_only=True)
    assert np.array_equal(np.asarray(params["projector"]["linear_2"]["bias"], np.float32),
                          projector["model.mm_projector.2.bias"].float().numpy())
    tok_dir = tmp_path / "init" / "tokenizer"
    assert sorted(os.listdir(tok_dir)) == ["preprocessor_config.json", "tokenizer.model",
                                           "tokenizer_config.json"]
    tok = load_tokenizer(str(tok_dir))
    assert tok.legacy is False and tok.vocab_size == standins.VOCAB


def test_clip_text_tokenizer_is_not_taken(tmp_path):
    paths = standins.build(str(tmp_path / "s"), n_pretrain=3, n_finetune=4, clip_tokenizer=True)
    source = importers.read_components(paths["clip"], paths["llm"], paths["projector"])
    importers.to_sgv(source, str(tmp_path / "init"), progress=False)
    assert "tokenizer.json" not in os.listdir(tmp_path / "init" / "tokenizer")
