"""Original LLaVA / ShareGPT4V (LLM dir + separate `vision_tower/`) → sgv → llava-hf and → llava.

The tiny model has vocab 400 (the test tokenizer's size) and uses -200 for images, like
ShareGPT4V-7B with 32000; llava-hf export must add `<image>`=400, `<pad>`=401 and pad to 448.
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sgv_jax.checkpoint_sgv import iter_sgv_groups, load_sgv
from sgv_jax.constants import IMAGE_TOKEN_INDEX
from sgv_jax.convert import exporters, formats, importers
from tests.hf_tiny import build_hf_llava, make_inputs, tiny_llava_config
from tests.test_convert_helpers import hf_logits, jax_logits, save_original
from tests.test_data_helpers import tiny_tokenizer_path, write_hf_dir

pytestmark = pytest.mark.torch
VOCAB = 400  # = the tiny sentencepiece tokenizer's size
LOGIT_TOL = 1e-4


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("original")
    # Built with image id VOCAB-1 only so HF can build it; the original files drop that meaning.
    model = build_hf_llava(tiny_llava_config(vocab=VOCAB), seed=1)
    llm, tower = save_original(str(root / "sharegpt4v"), model)
    write_hf_dir(llm, tiny_tokenizer_path(), legacy=False)
    ckpt = importers.to_sgv(importers.read_llava(llm, tower), str(root / "ckpt"), progress=False)
    notes = exporters.export_llava_hf(ckpt, str(root / "hf"), progress=False)
    return model, ckpt, str(root / "hf"), notes, root


def test_llava_to_sgv_keeps_the_reference_image_id_and_vocab(converted):
    _, ckpt, _, _, _ = converted
    cfg, _ = load_sgv(ckpt)
    assert cfg.image_token_id == IMAGE_TOKEN_INDEX
    assert cfg.text.vocab_size == VOCAB
    assert os.path.isfile(os.path.join(ckpt, "tokenizer", "tokenizer.model"))


def test_llava_hf_export_pads_vocab_and_adds_image_and_pad_tokens(converted):
    from transformers import AutoProcessor

    _, _, hf, notes, _ = converted
    image_id, pad_id, padded = formats.padded_vocab(VOCAB)
    assert (image_id, pad_id, padded) == (400, 401, 448)
    from transformers import LlavaConfig

    config = LlavaConfig.from_pretrained(hf)
    assert config.image_token_index == image_id and config.text_config.vocab_size == padded
    processor = AutoProcessor.from_pretrained(hf)
    assert processor.tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [image_id, pad_id]
    ids = processor(text="USER: <image>\nhi", images=np.zeros((21, 21, 3), np.uint8))["input_ids"]
    assert list(np.ravel(ids)).count(image_id) == 9  # (21/7)^2 patches, CLS dropped
    assert notes and "vocab 400 → 448" in notes[-1]


def test_hf_logits_on_the_export_equal_the_jax_model(converted, highest_precision):
    from transformers import LlavaForConditionalGeneration

    model, ckpt, hf, _, _ = converted
    exported, info = LlavaForConditionalGeneration.from_pretrained(
        hf, attn_implementation="eager", output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, mask, pixels = make_inputs(model.config, [7, 5], [True, True])
    hf_ids = np.where(ids == model.config.image_token_index, exported.config.image_token_index, ids)
    ours_ids = np.where(ids == model.config.image_token_index, IMAGE_TOKEN_INDEX, ids)
    cfg, params = load_sgv(ckpt)
    theirs = hf_logits(exported.eval(), hf_ids, mask, pixels)[..., :VOCAB]  # new rows are random
    ours = jax_logits(params, cfg, ours_ids, mask, pixels)
    real = mask.astype(bool)
    assert np.abs(theirs - ours)[real].max() <= LOGIT_TOL


def test_padded_rows_follow_the_old_embeddings_statistics(converted):
    from safetensors import safe_open

    hf = converted[2]
    with safe_open(os.path.join(hf, "model.safetensors"), "np") as f:
        embed = f.get_tensor("language_model.model.embed_tokens.weight")
    assert embed.shape[0] == 448
    old, new = embed[:VOCAB], embed[VOCAB:]
    # N(mean, 1e-5·cov): new rows sit near the mean, far closer than the old rows' spread.
    assert np.abs(new - old.mean(0)).max() < 0.1 * np.abs(old - old.mean(0)).max()


def test_llava_export_round_trips_to_the_same_sgv_parameters(converted):
    _, ckpt, _, _, root = converted
    out = str(root / "llava_out")
    exporters.export_llava(ckpt, out, progress=False)
    assert os.path.isfile(os.path.join(out, "vision_tower", "config.json"))
    again = importers.to_sgv(importers.read_llava(out, os.path.join(out, "vision_tower")),
                             str(root / "ckpt2"), progress=False)
    first = {p: v for _, g in iter_sgv_groups(ckpt) for p, v in g.items()}
    second = {p: v for _, g in iter_sgv_groups(again) for p, v in g.items()}
    assert sorted(first) == sorted(second)
    for path, value in first.items():
        assert np.array_equal(value, second[path]), path


def test_frozen_tower_copy_in_the_llm_is_ignored_when_the_tower_dir_is_given(tmp_path):
    model = build_hf_llava(tiny_llava_config(), seed=2)
    llm, tower = save_original(str(tmp_path / "llava15"), model, tower_in_checkpoint=True)
    ckpt = importers.to_sgv(importers.read_llava(llm, tower), str(tmp_path / "ckpt"),
                            progress=False)
    _, params = load_sgv(ckpt)
    hf = model.state_dict()["model.vision_tower.encoder.layers.0.mlp.fc1.weight"].numpy()
    assert np.array_equal(np.asarray(params["vision_tower"]["layers"]["mlp"]["fc1"]["kernel"][0]),
                          hf.T)


def test_tower_copy_alone_needs_a_known_mm_vision_tower(tmp_path):
    model = build_hf_llava(tiny_llava_config(), seed=2)
    llm, _ = save_original(str(tmp_path / "llava15"), model, tower_in_checkpoint=True,
                           separate_tower=False)
    with pytest.raises(Exception, match="mm_vision_tower 'Lin-Chen/.*--vision-tower"):
        importers.read_llava(llm)
