"""Ids and labels per record against expectations written from the template definition.

The expectations use raw sentencepiece and the template strings of REFERENCE.md §3.1 typed
out here, not our rendering or masking code. They rely on sentencepiece splitting at spaces:
"...ASSISTANT: A cat." encodes as encode("...ASSISTANT:") + encode("A cat.") (the dummy
prefix stands in for the space), which is what makes the reference's "- 2" arithmetic right.
"""

import numpy as np
import pytest
import sentencepiece as spm

from sgv_jax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from sgv_jax.data import encode, templates, tokenize
from sgv_jax.data.validate import BadRecord
from tests.test_data_helpers import SYSTEM, tiny_tokenizer_path, v1_record

M = IGNORE_INDEX
IMG = IMAGE_TOKEN_INDEX
V1 = templates.get_template("v1")
PLAIN = templates.get_template("plain")


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=tiny_tokenizer_path())


@pytest.fixture(scope="module")
def tok():
    return tokenize.load_tokenizer(tiny_tokenizer_path())


def test_v1_multi_turn_with_image(sp, tok):
    record = v1_record("r1", ["What is in the picture?\n<image>", "A black cat.",
                              "Colour?", "Black."], image="a.png")
    prefix = sp.encode(SYSTEM + " USER: ")
    instr1 = sp.encode("\nWhat is in the picture? ASSISTANT:")  # chunk after <image>
    ans1 = sp.encode("A black cat.") + [2]
    instr2 = sp.encode("USER: Colour? ASSISTANT:")  # legacy: new chunk after </s>
    ans2 = sp.encode("Black.") + [2]
    ids = [1] + prefix + [IMG] + instr1 + ans1 + instr2 + ans2
    labels = [M] * (2 + len(prefix) + len(instr1)) + ans1 + [M] * len(instr2) + ans2

    out = encode.encode_record(record, tok, V1, num_image_tokens=4)
    assert out["input_ids"] == ids
    assert out["labels"] == labels
    assert out["image"] == "a.png" and out["id"] == "r1"


def test_v1_text_only_drops_leading_gpt_turn(sp, tok):
    record = {"id": "t", "conversations": [
        {"from": "gpt", "value": "ignored"}, {"from": "human", "value": "Hello there!"},
        {"from": "gpt", "value": "I am fine, thank you."}]}
    instr = sp.encode(SYSTEM + " USER: Hello there! ASSISTANT:")
    ans = sp.encode("I am fine, thank you.") + [2]
    out = encode.encode_record(record, tok, V1, num_image_tokens=4)
    assert out["input_ids"] == [1] + instr + ans
    assert out["labels"] == [M] * (1 + len(instr)) + ans
    assert out["image"] is None
    np.testing.assert_array_equal(out["expanded_input_ids"], out["input_ids"])


def test_plain_drops_instruction_and_trains_caption_newline(sp, tok):
    record = v1_record("p", ["Describe this.\n<image>", "A small house."], image="b.jpg")
    caption = sp.encode("A small house.\n")
    out = encode.encode_record(record, tok, PLAIN, num_image_tokens=3)
    assert out["input_ids"] == [1, IMG] + caption
    assert out["labels"] == [M, M] + caption
    np.testing.assert_array_equal(out["expanded_input_ids"], [1, IMG, IMG, IMG] + caption)
    np.testing.assert_array_equal(out["expanded_labels"], [M, M, M, M] + caption)


def test_expand_image_tokens_masks_image_positions():
    ids, labels = encode.expand_image_tokens([1, 5, IMG, 6, 7], [M, 5, IMG, 6, 7], 3)
    np.testing.assert_array_equal(ids, [1, 5, IMG, IMG, IMG, 6, 7])
    np.testing.assert_array_equal(labels, [M, 5, M, M, M, 6, 7])
    assert ids.dtype == labels.dtype == np.int32


def test_truncate_keeps_prefix_and_rejects_cut_image_run():
    ids = np.array([1, IMG, IMG, 8, 9], np.int32)
    out_ids, _ = encode.truncate(ids, ids, 4)
    np.testing.assert_array_equal(out_ids, [1, IMG, IMG, 8])
    with pytest.raises(BadRecord, match="image_truncated") as e:
        encode.truncate(ids, ids, 2, record_id="long")
    assert e.value.record_id == "long"


def test_pad_uses_length_for_attention_mask():
    ids = np.array([1, 0, 7], np.int32)  # an in-text <unk> (id 0 = pad) stays attended
    out = encode.pad(ids, np.array([M, 0, 7], np.int32), 5, pad_id=0)
    np.testing.assert_array_equal(out["input_ids"], [1, 0, 7, 0, 0])
    np.testing.assert_array_equal(out["labels"], [M, 0, 7, M, M])
    np.testing.assert_array_equal(out["attention_mask"], [1, 1, 1, 0, 0])


def test_fully_truncated_answer_is_rejected(tok):
    record = v1_record("cut", ["Hello there!", "I am fine."])
    with pytest.raises(BadRecord, match="no_target_tokens"):
        encode.encode_record(record, tok, V1, num_image_tokens=4, max_length=10)


class _NoPrefixAfterEos(tokenize.SentencePieceTokenizer):
    """The LLaVA#661 failure (REFERENCE.md §6): a tokenizer that encodes the text after `</s>`
    differently from the same text at the start of a round (here: one extra token)."""

    def encode(self, text):
        ids = super().encode(text)
        out = []
        for i in ids:
            out.append(i)
            if i == self.eos_id:
                out.append(self._sp.piece_to_id("\u2581"))
        return out


def test_tokenization_mismatch_is_detected(tok):
    bad = _NoPrefixAfterEos(tok.model_file)
    record = v1_record("mm", ["<image>\nHi?", "Hello.", "And?", "Fine."], image="c.png")
    with pytest.raises(BadRecord, match="tokenization_mismatch") as e:
        encode.encode_record(record, bad, V1, num_image_tokens=4)
    assert e.value.reason == "tokenization_mismatch" and e.value.record_id == "mm"
    # The faithful tokenizer adds up on the same record.
    assert encode.encode_record(record, tok, V1, num_image_tokens=4)["labels"][-1] == 2


def test_in_text_unk_counts_as_padding_like_the_reference(tok):
    # total_len = non-pad count (§3.4), so a literal <unk> makes the sample mismatch there too.
    record = v1_record("unk", ["Say <unk> please.", "No."])
    with pytest.raises(BadRecord, match="tokenization_mismatch"):
        encode.encode_record(record, tok, V1, num_image_tokens=4)


@pytest.mark.parametrize("turns, image, template, reason", [
    (["<image>\nHi?", "Yes."], None, V1, "image_token_without_image"),
    (["Hi?", "Yes."], "x.png", V1, "image_token_count"),
    (["<image>\nHi <image>?", "Yes <image>."], "x.png", V1, "image_token_count"),
    (["<image>\nHi?", "Yes.", "More?"], "x.png", PLAIN, "plain_format"),
    (["Hi?", "Yes."], None, PLAIN, "plain_format"),
])
def test_invalid_records_name_their_reason(tok, turns, image, template, reason):
    with pytest.raises(BadRecord, match=reason):
        encode.encode_record(v1_record("bad", turns, image), tok, template, num_image_tokens=4)


@pytest.mark.parametrize("record, reason", [
    ({"id": "a"}, "no_conversations"),
    ({"id": "a", "conversations": []}, "no_conversations"),
    ({"id": "a", "conversations": [{"from": "human"}]}, "bad_record"),
    ({"id": "a", "conversations": [{"from": "human", "value": "x"},
                                   {"from": "robot", "value": "y"}]}, "unknown_role"),
    ({"id": "a", "conversations": [{"from": "human", "value": "x"},
                                   {"from": "human", "value": "y"}]}, "wrong_alternation"),
    ({"id": "a", "image": 3, "conversations": [{"from": "human", "value": "x"}]}, "bad_record"),
    (["not", "a", "dict"], "bad_record"),
])
def test_malformed_records(tok, record, reason):
    with pytest.raises(BadRecord, match=reason):
        encode.encode_record(record, tok, V1, num_image_tokens=4)


def test_image_token_moves_to_front_of_turn():
    assert templates.move_image_token_first(" Look: <image> here ") == "<image>\nLook:  here"
    assert templates.move_image_token_first("no image") == "no image"
