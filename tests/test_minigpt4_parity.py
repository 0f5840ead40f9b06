"""MiniGPT-4 parity against HF Blip2VisionModel / Blip2QFormerModel / LlamaForCausalLM assembled
the MiniGPT-4 way (tests/minigpt4_tiny.py), fp32, through our blip2-hf loader: vision output,
Q-Former output, image embeddings and last-position logits within 1e-5, greedy tokens equal."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sgv_jax.convert.minigpt4_hf import from_blip2_hf_state_dict, to_blip2_hf_state_dict
from sgv_jax.generation import decode
from sgv_jax.generation.sampling import SamplingConfig
from sgv_jax.models import llava
from sgv_jax.models.config import get_preset
from sgv_jax.models.minigpt4 import MiniGPT4Model
from tests.minigpt4_tiny import NUM_QUERY, VOCAB, build_hf_minigpt4, random_pixels

pytestmark = pytest.mark.torch
TOL = 1e-5


@pytest.fixture(scope="module")
def models():
    hf = build_hf_minigpt4()
    cfg, params = from_blip2_hf_state_dict(hf.state_dict(), hf.config.to_dict())
    return hf, cfg, params


def mid_prompt_ids(seed: int) -> np.ndarray:
    """BOS + text + NUM_QUERY image tokens + text: the image mid-prompt, as MiniGPT-4 puts it."""
    rng = np.random.default_rng(seed)
    before, after = rng.integers(3, VOCAB - 1, 4), rng.integers(3, VOCAB - 1, 6)
    return np.concatenate([[1], before, np.full(NUM_QUERY, VOCAB - 1), after])[None]


def test_config_is_the_tiny_preset(models):
    _, cfg, _ = models
    # HF's LlamaConfig spells out head_dim (8); the preset leaves it derived.
    assert cfg.image_token_id == VOCAB - 1
    same = cfg.replace(text=dataclasses.replace(cfg.text, head_dim=None), image_token_id=-200)
    assert same == get_preset("minigpt4_tiny")
    assert isinstance(llava.from_params(cfg, models[2]), MiniGPT4Model)


@pytest.mark.slow
def test_vision_qformer_and_image_embeddings(models, highest_precision):
    hf, cfg, params = models
    pixels = random_pixels(2)
    with torch.no_grad():
        px = torch.tensor(pixels)
        vis = hf.vision_model(px, output_hidden_states=True)
        feats = hf.get_image_features(px).pooler_output
        qf = hf.qformer(query_embeds=hf.query_tokens.expand(2, -1, -1),
                        encoder_hidden_states=vis.last_hidden_state).last_hidden_state
    model = llava.from_params(cfg, params)
    ours = jnp.asarray(pixels.transpose(0, 2, 3, 1))
    out = {}
    projected = model.encode_image(ours, out=out)
    vit = model.vision_tower(ours)
    checks = {"vision output": (vit, vis.hidden_states[-1]),
              "ln_vision": (out["img/features"], vis.last_hidden_state),
              "Q-Former output": (out["img/qformer"], qf),
              "image embeddings": (projected, feats)}
    for name, (a, b) in checks.items():
        diff = np.abs(np.asarray(a) - b.numpy()).max()
        assert diff <= TOL, f"{name} differs by {diff}"


@pytest.mark.slow
def test_last_logits_and_greedy_tokens(models, highest_precision):
    hf, cfg, params = models
    ids, pixels = mid_prompt_ids(0), random_pixels(1, seed=1)
    with torch.no_grad():
        hf_logits = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels)).logits
        hf_tokens = hf.generate(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels),
                                max_new_tokens=8, do_sample=False, min_new_tokens=8)
    batch = {"input_ids": jnp.asarray(ids, jnp.int32),
             "attention_mask": jnp.ones(ids.shape, jnp.int32),
             "pixel_values": jnp.asarray(pixels.transpose(0, 2, 3, 1))}
    logits, _ = llava.forward(params, cfg, batch)
    diff = np.abs(np.asarray(logits)[0, -1] - hf_logits.numpy()[0, -1]).max()
    assert diff <= TOL, f"last-position logits differ by {diff}"
    tokens = decode.generate_tokens(params, cfg, batch, SamplingConfig(temperature=0.0),
                                    max_new_tokens=8, eos_ids=(), pad_id=0,
                                    key=jax.random.key(0))
    hf_new = hf_tokens.numpy()[0, -8:]
    np.testing.assert_array_equal(np.asarray(tokens)[0, :8], hf_new)


def test_blip2_hf_state_dict_round_trip_bitwise(models):
    hf, cfg, params = models
    back = to_blip2_hf_state_dict(params, cfg)
    theirs = {k: v.numpy() for k, v in hf.state_dict().items()}
    assert set(back) == set(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
