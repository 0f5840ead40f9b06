"""components → sgv: CLIP dir + LLaMA dir (+ mm_projector.bin) land unchanged in the checkpoint."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sgv_jax.checkpoint_sgv import load_sgv, read_sgv_config
from sgv_jax.convert import importers
from tests.hf_tiny import tiny_llava_config

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModel, LlamaForCausalLM

    root = tmp_path_factory.mktemp("components")
    config = tiny_llava_config()
    torch.manual_seed(3)
    vision = CLIPVisionModel(config.vision_config)
    vision.save_pretrained(root / "clip_vision")  # 5.24: flat keys (REFERENCE §8)
    full = CLIPModel(CLIPConfig(vision_config=config.vision_config.to_dict(),
                                text_config={"hidden_size": 16, "intermediate_size": 20,
                                             "num_hidden_layers": 1, "num_attention_heads": 2}))
    full.save_pretrained(root / "clip_full")  # `vision_model.*` + text tower to skip
    llm = LlamaForCausalLM(config.text_config)
    llm.save_pretrained(root / "vicuna")
    # LLaVA stage-1 `mm_projector.bin` (REFERENCE §2.1): Linear(24→40), GELU, Linear(40→40).
    d_vis, d = config.vision_config.hidden_size, config.text_config.hidden_size
    projector = {"model.mm_projector.0.weight": torch.randn(d, d_vis),
                 "model.mm_projector.0.bias": torch.randn(d),
                 "model.mm_projector.2.weight": torch.randn(d, d),
                 "model.mm_projector.2.bias": torch.randn(d)}
    torch.save(projector, root / "mm_projector.bin")
    return root, vision, full, llm, projector


def test_vision_llm_and_projector_equal_their_sources(sources, tmp_path):
    root, vision, _, llm, projector = sources
    source = importers.read_components(str(root / "clip_vision"), str(root / "vicuna"),
                                       str(root / "mm_projector.bin"))
    cfg, params = load_sgv(importers.to_sgv(source, str(tmp_path / "ckpt"), progress=False))
    vt, lm, pr = params["vision_tower"], params["language_model"], params["projector"]
    v_state, l_state = vision.state_dict(), llm.state_dict()
    assert np.array_equal(vt["embeddings"]["patch_embedding"]["kernel"],
                          v_state["embeddings.patch_embedding.weight"]
                          .numpy().transpose(2, 3, 1, 0))
    assert np.array_equal(vt["layers"]["self_attn"]["k_proj"]["bias"][2],
                          v_state["encoder.layers.2.self_attn.k_proj.bias"].numpy())
    assert np.array_equal(lm["embed_tokens"]["embedding"], l_state["model.embed_tokens.weight"])
    assert np.array_equal(lm["layers"]["mlp"]["down_proj"]["kernel"][1],
                          l_state["model.layers.1.mlp.down_proj.weight"].numpy().T)
    assert np.array_equal(lm["lm_head"]["kernel"], l_state["lm_head.weight"].numpy().T)
    for k, theirs in (("linear_1", "0"), ("linear_2", "2")):
        assert np.array_equal(pr[k]["kernel"], projector[f"model.mm_projector.{theirs}.weight"].T)
        assert np.array_equal(pr[k]["bias"], projector[f"model.mm_projector.{theirs}.bias"])
    assert cfg.image_token_id == -200 and cfg.projector_type == "mlp2x_gelu"


def test_full_clip_model_uses_only_the_vision_weights(sources, tmp_path):
    root, _, full, _, _ = sources
    source = importers.read_components(str(root / "clip_full"), str(root / "vicuna"))
    _, params = load_sgv(importers.to_sgv(source, str(tmp_path / "ckpt"), progress=False))
    assert np.array_equal(params["vision_tower"]["post_layernorm"]["scale"],
                          full.state_dict()["vision_model.post_layernorm.weight"].numpy())


def test_without_projector_it_is_initialised_from_the_seed(sources, tmp_path):
    root = sources[0]

    def projector(seed, name):
        source = importers.read_components(str(root / "clip_vision"), str(root / "vicuna"),
                                           seed=seed)
        path = importers.to_sgv(source, str(tmp_path / name), progress=False)
        assert read_sgv_config(path)["source"]["projector_seed"] == seed
        return np.asarray(load_sgv(path)[1]["projector"]["linear_2"]["kernel"])

    a, b, c = projector(0, "a"), projector(0, "b"), projector(1, "c")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.01 < a.std() < 0.03  # HF initializer_range 0.02


def test_tokenizer_files_come_from_the_llm_dir(sources, tmp_path):
    root = sources[0]
    from tests.test_data_helpers import tiny_tokenizer_path, write_hf_dir

    llm_dir = tmp_path / "vicuna_tok"
    write_hf_dir(str(llm_dir), tiny_tokenizer_path(), legacy=False)
    for name in os.listdir(root / "vicuna"):
        os.symlink(root / "vicuna" / name, llm_dir / name)
    source = importers.read_components(str(root / "clip_vision"), str(llm_dir))
    ckpt = importers.to_sgv(source, str(tmp_path / "ckpt"), progress=False)
    assert sorted(os.listdir(os.path.join(ckpt, "tokenizer"))) == \
        ["tokenizer.model", "tokenizer_config.json"]
