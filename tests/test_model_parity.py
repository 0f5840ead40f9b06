"""Parity of the Flax-free JAX model against HF transformers' LlavaForConditionalGeneration
(PyTorch CPU, fp32, eager attention), through our own llava-hf loader."""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sgv_jax.convert.llava_hf import from_llava_hf_state_dict
from sgv_jax.models import llava
from tests.hf_tiny import build_hf_llava, make_inputs, tiny_llava_config

pytestmark = pytest.mark.torch

FEATURE_TOL = 1e-5
LOGIT_TOL = 1e-4


def run_both(hf_config, lengths, with_image, seed=0):
    model = build_hf_llava(hf_config, seed)
    cfg, params = from_llava_hf_state_dict(model.state_dict(), hf_config.to_dict())
    ids, mask, pixels = make_inputs(hf_config, lengths, with_image, seed)

    with torch.no_grad():
        hf_out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       pixel_values=torch.tensor(pixels) if len(pixels) else None)
        hf_feats = None
        if len(pixels):
            hidden = model.model.vision_tower(torch.tensor(pixels), output_hidden_states=True)
            hf_feats = hidden.hidden_states[hf_config.vision_feature_layer]
            if hf_config.vision_feature_select_strategy == "default":
                hf_feats = hf_feats[:, 1:]

    # Ours: NHWC, one image slot per sample (zeros for text-only samples).
    size = hf_config.vision_config.image_size
    ours_pixels = np.zeros((len(lengths), size, size, 3), np.float32)
    image_rows = np.flatnonzero(with_image)
    ours_pixels[image_rows] = pixels.transpose(0, 2, 3, 1)
    batch = {"input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(mask),
             "pixel_values": jnp.asarray(ours_pixels)}
    logits, out = llava.forward(params, cfg, batch)
    return hf_out.logits.numpy(), np.asarray(logits), hf_feats, out, mask, image_rows


def assert_parity(hf_config, lengths, with_image):
    hf_logits, logits, hf_feats, out, mask, image_rows = run_both(hf_config, lengths, with_image)
    if hf_feats is not None:
        feat_diff = np.abs(np.asarray(out["img/features"])[image_rows] - hf_feats.numpy()).max()
        assert feat_diff <= FEATURE_TOL, f"vision features differ by {feat_diff}"
    real = mask.astype(bool)  # padded positions are not compared
    diff = np.abs(logits - hf_logits)[real].max()
    assert diff <= LOGIT_TOL, f"logits differ by {diff}"


def test_parity_mha(highest_precision):
    assert_parity(tiny_llava_config(num_kv_heads=5), [7], [True])


def test_parity_gqa_two_kv_heads(highest_precision):
    assert_parity(tiny_llava_config(num_kv_heads=2), [6, 6], [True, True])


def test_parity_mixed_batch_text_only_and_right_padding(highest_precision):
    assert_parity(tiny_llava_config(), [8, 5], [True, False])


# Layer 0 (pre_layrnorm output) is valid for us but HF 5.24 fails on it (hidden_states None).
@pytest.mark.parametrize("layer", [-3, 1])
def test_parity_non_default_vision_feature_layer(highest_precision, layer):
    assert_parity(tiny_llava_config(vision_feature_layer=layer), [5], [True])


def test_parity_full_select_strategy_keeps_cls(highest_precision):
    assert_parity(tiny_llava_config(strategy="full"), [5], [True])
