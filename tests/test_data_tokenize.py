"""The tokenizer against transformers 4.31's slow LlamaTokenizer, the one the reference used.

transformers 5 has no slow tokenizer, so the expected ids below were produced once with
transformers 4.31.0 + sentencepiece 0.2.3 (`AutoTokenizer.from_pretrained(dir,
use_fast=False)` on `write_hf_dir(..., legacy)` of the tiny test model) and written here. The
tiny model's vocabulary is deterministic for the pinned sentencepiece; the fingerprint test
says so first if that ever changes. A 317-string randomised comparison against 4.31 (both
`legacy` values, plus `tokenizer_image_token`) also gave no difference when this was written.
"""

import hashlib
import pickle

import pytest
import sentencepiece as spm

from sgv_jax.constants import IMAGE_TOKEN_INDEX
from sgv_jax.data import tokenize
from tests.test_data_helpers import SYSTEM, tiny_tokenizer_path, write_hf_dir

VOCAB_FINGERPRINT = "3c57d609fa1f5b12"

STRINGS = [
    "Hello there!</s>USER: hi", "x </s>y", "<s>Hi</s>", "<unk>a", "  two  spaces ",
    "\nWhat is in the picture? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT: Black.</s>",
    SYSTEM + " USER: ", "日本語 é \u2581 underline\ttab", "", "ASSISTANT: 42.</s></s>x",
]
_TAIL = [2, 299, 371, 353, 70, 311, 271, 359, 384, 301, 371, 353, 69, 308, 302, 368, 2]
_SYSTEM_IDS = [
    1, 272, 265, 294, 273, 352, 372, 354, 270, 259, 265, 365, 359, 358, 322, 337, 280, 267, 259,
    359, 314, 286, 348, 342, 266, 288, 320, 358, 375, 270, 346, 340, 368, 298, 340, 318, 358, 387,
    275, 325, 362, 379, 374, 365, 362, 377, 339, 304, 377, 280, 291, 311, 307, 354, 267, 356, 372,
    263, 356, 328, 262, 337, 392, 356, 327, 275, 314, 312, 356, 368, 299, 371, 353]
_UNICODE_IDS = [1, 353, 233, 154, 168, 233, 159, 175, 235, 173, 161, 353, 198, 172, 353, 353, 353,
                365, 360, 366, 263, 362, 358, 287, 12, 277, 373]
_PICTURE = [1, 353, 13, 389, 294, 296, 326, 262, 291, 358, 349, 365, 264, 384, 301, 371, 272, 265,
            269, 368]
EXPECTED_431 = {
    True: [
        [1, 316, 320, 361, 262, 264, 391, 2, 299, 371, 353, 363, 358], [1, 353, 398, 353, 2, 319],
        [1, 1, 316, 358, 2], [1, 0, 259], [1, 353, 353, 260, 372, 361, 353, 274, 379, 355, 364,
                                           275, 353],
        _PICTURE + _TAIL, _SYSTEM_IDS, _UNICODE_IDS, [1],
        [1, 301, 371, 353, 394, 393, 368, 2, 2, 353, 398]],
    # Non-legacy: the piece after `</s>` loses its `▁`; "USER" alone is no piece -> <unk> (0).
    False: [
        [1, 316, 320, 361, 262, 264, 391, 2, 0, 371, 353, 363, 358], [1, 353, 398, 353, 2, 376],
        [1, 1, 388, 358, 2], [1, 0, 355], [1, 353, 353, 260, 372, 361, 353, 274, 379, 355, 364,
                                           275, 353],
        _PICTURE + [2, 0] + _TAIL[2:], _SYSTEM_IDS, _UNICODE_IDS, [1],
        [1, 301, 371, 353, 394, 393, 368, 2, 2, 398]],
}


@pytest.fixture(scope="module")
def model_file():
    return tiny_tokenizer_path()


def test_tiny_vocabulary_is_the_one_the_expectations_were_made_with(model_file):
    sp = spm.SentencePieceProcessor(model_file=model_file)
    pieces = "\n".join(sp.id_to_piece(i) for i in range(sp.get_piece_size()))
    assert hashlib.sha1(pieces.encode()).hexdigest()[:16] == VOCAB_FINGERPRINT


@pytest.mark.parametrize("legacy", [True, False])
def test_ids_equal_transformers_431_slow_tokenizer(model_file, tmp_path, legacy):
    tok = tokenize.load_tokenizer(write_hf_dir(str(tmp_path / "hf"), model_file, legacy))
    assert tok.legacy is legacy
    for text, expected in zip(STRINGS, EXPECTED_431[legacy], strict=True):
        assert tok.encode(text) == expected, text


def test_bare_model_file_defaults_to_legacy_with_bos(model_file):
    tok = tokenize.load_tokenizer(model_file)
    assert (tok.legacy, tok.bos_id, tok.eos_id, tok.pad_id) == (True, 1, 2, 0)
    assert tok.encode(STRINGS[0]) == EXPECTED_431[True][0]


def test_config_without_legacy_key_is_legacy_as_in_431(model_file, tmp_path):
    assert tokenize.load_tokenizer(write_hf_dir(str(tmp_path), model_file, None)).legacy


def test_tokenizer_image_token_splits_chunks_and_keeps_one_bos(model_file):
    tok = tokenize.load_tokenizer(model_file)
    sp = spm.SentencePieceProcessor(model_file=model_file)
    ids = tokenize.tokenizer_image_token("Hi <image>\nWhat?<image>", tok)
    assert ids == [1] + sp.encode("Hi ") + [IMAGE_TOKEN_INDEX] + sp.encode("\nWhat?") + [
        IMAGE_TOKEN_INDEX]
    assert tokenize.tokenizer_image_token("<image>", tok) == [1, IMAGE_TOKEN_INDEX]


def test_tokenizer_pickles_for_worker_processes(model_file):
    tok = tokenize.load_tokenizer(model_file)
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(STRINGS[5]) == tok.encode(STRINGS[5])


def test_missing_tokenizer_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        tokenize.load_tokenizer(tmp_path)
