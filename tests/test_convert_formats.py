"""Format detection and mapping tables, on key lists alone (no files, no torch)."""

import numpy as np
import pytest

from sgv_jax.convert import formats
from sgv_jax.models.config import get_preset
from sgv_jax.models.storage import group_of, storage_shapes

CFG = get_preset("tiny")


def keys_of(layout):
    return list(formats.key_table(CFG, layout))


@pytest.mark.parametrize("layout", formats.LLAVA_HF_LAYOUTS, ids=lambda l: l.name)
def test_every_llava_hf_layout_is_recognised(layout):
    keys = keys_of(layout) + ["language_model.model.layers.0.self_attn.rotary_emb.inv_freq"
                              if layout.llm.startswith("language_model") else "lm_head.weight"]
    assert formats.detect_llava_hf_layout(keys) == layout
    assert formats.detect_format(keys) == "llava-hf"


def test_published_llava_hf_keys_use_the_nested_clip_prefix():
    keys = ["language_model.model.embed_tokens.weight", "language_model.lm_head.weight",
            "vision_tower.vision_model.embeddings.class_embedding",
            "multi_modal_projector.linear_1.weight"]
    assert formats.detect_llava_hf_layout(keys) is formats.LLAVA_HF_OLD


def test_not_llava_hf_is_an_error_naming_what_was_expected():
    with pytest.raises(ValueError, match="language_model"):
        formats.detect_llava_hf_layout(["model.layers.0.mlp.up_proj.weight"])


@pytest.mark.parametrize("layout, kind", [
    (formats.ORIGINAL_LLAVA, "llava"), (formats.ORIGINAL_LLAVA_NO_VISION, "llava"),
    (formats.LLAMA_DIR, "llama"), (formats.CLIP_DIR, "clip"), (formats.CLIP_DIR_FLAT, "clip"),
    (formats.MM_PROJECTOR, "mm_projector")])
def test_detect_format(layout, kind):
    assert formats.detect_format(keys_of(layout)) == kind


def test_unknown_keys_are_reported():
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        formats.detect_format(["foo.bar"])


def test_original_layout_with_and_without_the_tower_copy():
    assert formats.detect_original_layout(keys_of(formats.ORIGINAL_LLAVA)) is formats.ORIGINAL_LLAVA
    assert formats.detect_original_layout(keys_of(formats.ORIGINAL_LLAVA_NO_VISION)) \
        is formats.ORIGINAL_LLAVA_NO_VISION


def test_clip_layout_with_and_without_vision_model_prefix():
    assert formats.detect_clip_layout(keys_of(formats.CLIP_DIR)) is formats.CLIP_DIR
    assert formats.detect_clip_layout(keys_of(formats.CLIP_DIR_FLAT)) is formats.CLIP_DIR_FLAT
    full_clip = keys_of(formats.CLIP_DIR) + ["text_model.embeddings.token_embedding.weight",
                                             "visual_projection.weight", "logit_scale"]
    assert formats.detect_clip_layout(full_clip) is formats.CLIP_DIR
    assert all(formats.CLIP_NON_VISION.search(k) for k in full_clip[-3:])
    assert not any(formats.CLIP_NON_VISION.search(k) for k in keys_of(formats.CLIP_DIR))


@pytest.mark.parametrize("prefix", ["model.mm_projector.", "mm_projector.",
                                    "base_model.model.model.mm_projector."])
def test_projector_file_prefix_is_kept(prefix):
    keys = [prefix + "0.weight", prefix + "0.bias", prefix + "2.weight", prefix + "2.bias"]
    layout = formats.detect_projector_layout(keys)
    assert sorted(formats.key_table(CFG, layout)) == sorted(keys)


def test_projector_file_with_two_prefixes_is_rejected():
    with pytest.raises(ValueError, match="one prefix"):
        formats.detect_projector_layout(["a.mm_projector.0.weight", "b.mm_projector.0.weight"])


def test_every_table_covers_its_parameters_exactly_once():
    ours = set(storage_shapes(CFG))
    for layouts in ([formats.LLAVA_HF_OLD], [formats.ORIGINAL_LLAVA],
                    [formats.ORIGINAL_LLAVA_NO_VISION, formats.CLIP_DIR],
                    [formats.CLIP_DIR_FLAT, formats.LLAMA_DIR, formats.MM_PROJECTOR]):
        paths = [p for layout in layouts for p, _ in formats.key_table(CFG, layout).values()]
        assert len(paths) == len(set(paths)) and set(paths) == ours, layouts


def test_theirs_shape_matches_the_transform():
    shapes = storage_shapes(CFG)
    for key, (path, tf) in formats.key_table(CFG, formats.LLAVA_HF_OLD).items():
        shape = shapes[path]
        assert tf.theirs_shape(shape) == tf.to_theirs(np.zeros(shape)).shape, key
        assert tf.to_ours(tf.to_theirs(np.zeros(shape))).shape == shape, key


def test_groups_are_blocks_or_modules():
    assert group_of("language_model/layers/17/mlp/up_proj/kernel") == \
        "language_model.layers.17"
    assert group_of("vision_tower/layers/3/layer_norm1/bias") == "vision_tower.layers.3"
    assert group_of("language_model/embed_tokens/embedding") == \
        "language_model.embed_tokens"
    assert group_of("projector/linear_1/kernel") == "projector.linear_1"


def test_layer_count_from_keys():
    keys = keys_of(formats.LLAVA_HF_OLD)
    assert formats.count_layers(keys, "language_model.model.layers.") == CFG.text.num_layers
    assert formats.count_layers(keys, "vision_tower.vision_model.encoder.layers.") == \
        CFG.vision.num_layers
    assert formats.count_layers(keys, "nothing.") == 0


def test_llava_hf_vocab_padding_matches_the_reference():
    assert formats.padded_vocab(32000) == (32000, 32001, 32064)  # REFERENCE §1.7
    assert formats.padded_vocab(97) == (97, 98, 128)
