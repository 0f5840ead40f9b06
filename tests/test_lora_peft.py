"""LoRA interop with PEFT on a tiny llava-hf model: import a PEFT adapter with the base, export
it again (PEFT format, LLaVA's LoRA folder), and merge it (LORA.md §4, §5)."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from safetensors.numpy import load_file

from sgv_jax.checkpoint_sgv import load_sgv
from sgv_jax.convert import exporters, importers
from sgv_jax.convert.state_dict import ConversionError
from sgv_jax.models.config import LORA_TARGETS
from sgv_jax.models.storage import flatten
from tests.hf_tiny import make_inputs
from tests.test_convert_helpers import hf_logits, jax_logits, save_llava_hf

pytestmark = pytest.mark.torch
ADAPTER_LOGIT_TOL = 1e-5  # the bound for import (fp32)
MERGED_LOGIT_TOL = 1e-4
RANK, ALPHA = 4, 12.0  # scale 3: a wrong scale cannot pass


def peft_model(base, seed=1):
    """PEFT LoRA on the decoder's seven linears, B made non-zero (PEFT inits it to zero)."""
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.05,
                             target_modules=r".*language_model.*\.(" + "|".join(LORA_TARGETS) + ")")
    model = peft.get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def load_hf(folder):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base, src = save_llava_hf(str(root / "base"))
    model = peft_model(base)
    model.save_pretrained(str(root / "adapter"))
    ids, mask, pixels = make_inputs(base.config, [19, 15], [True, False])
    want = hf_logits(model, ids, mask, pixels)
    source = importers.with_adapter(importers.read_llava_hf(src), str(root / "adapter"))
    ckpt = importers.to_sgv(source, str(root / "ckpt"), progress=False)
    return root, src, ckpt, (ids, mask, pixels), want


def test_imported_adapter_gives_peft_logits(setup):
    _, _, ckpt, (ids, mask, pixels), want = setup
    cfg, params = load_sgv(ckpt)
    assert cfg.lora.rank == RANK and cfg.lora.alpha == ALPHA and cfg.lora.targets == LORA_TARGETS
    got = jax_logits(params, cfg, ids, mask, pixels)
    np.testing.assert_allclose(got, want, atol=ADAPTER_LOGIT_TOL, rtol=0)


def test_exported_adapter_loads_in_peft_with_equal_logits(setup):
    root, _, ckpt, (ids, mask, pixels), want = setup
    out = str(root / "out_hf")
    exporters.export_llava_hf(ckpt, out, progress=False)
    base = load_hf(out)
    model = peft.PeftModel.from_pretrained(base, os.path.join(out, "adapter")).eval()
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert len(b) == 7 * base.config.text_config.num_hidden_layers
    assert all(bool((x != 0).any()) for x in b)
    np.testing.assert_allclose(hf_logits(model, ids, mask, pixels), want,
                               atol=ADAPTER_LOGIT_TOL, rtol=0)


def test_merged_export_is_a_plain_hf_model_with_equal_logits(setup):
    root, _, ckpt, (ids, mask, pixels), want = setup
    out = str(root / "out_merged")
    exporters.export_llava_hf(ckpt, out, progress=False, merge_lora=True)
    assert not os.path.exists(os.path.join(out, "adapter"))
    np.testing.assert_allclose(hf_logits(load_hf(out), ids, mask, pixels), want,
                               atol=MERGED_LOGIT_TOL, rtol=0)


def test_llava_export_writes_the_lora_folder_llava_builder_reads(setup):
    root, _, ckpt, _, _ = setup
    out = str(root / "llava-tiny-lora")
    exporters.export_llava(ckpt, out, progress=False)
    assert {"config.json", "adapter_config.json", "adapter_model.safetensors",
            "non_lora_trainables.bin", "base"} <= set(os.listdir(out))
    cfg, _ = load_sgv(ckpt)
    d, f, n = cfg.text.hidden_size, cfg.text.intermediate_size, cfg.text.num_layers
    shapes = {k: v.shape for k, v in load_file(os.path.join(out, "adapter_model.safetensors")).items()}
    # LORA.md §4.3's key table, at the tiny shapes.
    want = {}
    for i in range(n):
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            want[f"base_model.model.model.layers.{i}.self_attn.{m}.lora_A.weight"] = (RANK, d)
            want[f"base_model.model.model.layers.{i}.self_attn.{m}.lora_B.weight"] = (d, RANK)
        for m, (fan_in, fan_out) in (("gate_proj", (d, f)), ("up_proj", (d, f)),
                                     ("down_proj", (f, d))):
            want[f"base_model.model.model.layers.{i}.mlp.{m}.lora_A.weight"] = (RANK, fan_in)
            want[f"base_model.model.model.layers.{i}.mlp.{m}.lora_B.weight"] = (fan_out, RANK)
    assert shapes == want
    projector = torch.load(os.path.join(out, "non_lora_trainables.bin"), weights_only=True)
    assert {k: tuple(v.shape) for k, v in projector.items()} == {
        "base_model.model.model.mm_projector.0.weight": (d, cfg.vision.hidden_size),
        "base_model.model.model.mm_projector.0.bias": (d,),
        "base_model.model.model.mm_projector.2.weight": (d, d),
        "base_model.model.model.mm_projector.2.bias": (d,)}
    with open(os.path.join(out, "adapter_config.json")) as fh:
        adapter_config = json.load(fh)
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (RANK, ALPHA)
    assert sorted(adapter_config["target_modules"]) == sorted(LORA_TARGETS)
    with open(os.path.join(out, "config.json")) as fh:
        assert json.load(fh)["model_type"] == "llava_llama"


def test_llava_lora_folder_imports_back_with_base(setup, tmp_path):
    root, _, ckpt, _, _ = setup
    out = str(root / "llava-tiny-lora")
    if not os.path.isdir(out):
        exporters.export_llava(ckpt, out, progress=False)
    source = importers.read_llava_lora(out, os.path.join(out, "base"),
                                       os.path.join(out, "base", "vision_tower"))
    cfg, params = load_sgv(importers.to_sgv(source, str(tmp_path / "back"), progress=False))
    want_cfg, want = load_sgv(ckpt)
    assert cfg.lora == want_cfg.lora
    got, want = flatten(params), flatten(want)
    for path in want:  # adapters and projector exact; the vocab was cut to the text ids (§2.4)
        if "lora_" in path or path.startswith("projector/"):
            np.testing.assert_array_equal(got[path], want[path], err_msg=path)


def test_adapter_with_a_wrong_rank_shape_is_refused_by_name(setup, tmp_path):
    root, src, _, _, _ = setup
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((root / "adapter" / "adapter_config.json").read_text())
    config["r"] = RANK + 1
    (bad / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(str(root / "adapter" / "adapter_model.safetensors"))
    from safetensors.numpy import save_file

    save_file(tensors, str(bad / "adapter_model.safetensors"))
    source = importers.with_adapter(importers.read_llava_hf(src), str(bad))
    with pytest.raises(ConversionError, match=r"lora_A\.weight: expected \(5, "):
        importers.to_sgv(source, str(tmp_path / "ck"), progress=False)


def test_adapter_on_the_vision_tower_is_refused_by_name(setup, tmp_path):
    root, src, _, _, _ = setup
    bad = tmp_path / "vis"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((root / "adapter" / "adapter_config.json").read_text())
    tensors = load_file(str(root / "adapter" / "adapter_model.safetensors"))
    tensors["base_model.model.model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj"
            ".lora_A.weight"] = np.zeros((RANK, 24), np.float32)
    from safetensors.numpy import save_file

    save_file(tensors, str(bad / "adapter_model.safetensors"))
    source = importers.with_adapter(importers.read_llava_hf(src), str(bad))
    with pytest.raises(ConversionError, match="vision_tower"):
        importers.to_sgv(source, str(tmp_path / "ck"), progress=False)
