"""Logits processors: HF semantics on fixed vectors; stop strings and text helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgv_jax.generation import prompts
from sgv_jax.generation.sampling import (
    SamplingConfig,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    choose_token,
    process_logits,
)

LOGITS = np.asarray([[1.5, -0.5, 0.2, 3.0, -2.0, 0.0, 0.7, 2.9],
                     [0.1, 0.4, -1.0, 0.4, 2.0, -0.3, 1.0, 0.05]], np.float32)
HISTORY = np.asarray([[1, 3, 3, 5], [2, 4, 7, 7]])  # tokens already in each sequence


def seen_mask(history, vocab):
    seen = np.zeros((len(history), vocab), bool)
    for row, ids in enumerate(history):
        seen[row, ids] = True
    return seen


@pytest.mark.torch
def test_repetition_penalty_matches_hf_processor():
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    want = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(HISTORY), torch.tensor(LOGITS))
    got = apply_repetition_penalty(LOGITS, seen_mask(HISTORY, LOGITS.shape[1]), 1.3)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=0)


@pytest.mark.torch
@pytest.mark.parametrize("k", [1, 3, 8])
def test_top_k_matches_hf_warper(k):
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import TopKLogitsWarper

    want = TopKLogitsWarper(k)(torch.tensor(HISTORY), torch.tensor(LOGITS)).numpy()
    np.testing.assert_array_equal(apply_top_k(LOGITS, k), want)


@pytest.mark.torch
@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_matches_hf_warper(p):
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import TopPLogitsWarper

    want = TopPLogitsWarper(p)(torch.tensor(HISTORY), torch.tensor(LOGITS)).numpy()
    np.testing.assert_array_equal(np.isinf(apply_top_p(LOGITS, p)), np.isinf(want))


def test_top_k_one_sampling_is_greedy():
    keys = jax.random.split(jax.random.key(0), 20)
    sampler = SamplingConfig(temperature=1.7, top_k=1)
    greedy = choose_token(LOGITS, None, SamplingConfig(), keys[0])
    for key in keys:
        np.testing.assert_array_equal(choose_token(LOGITS, None, sampler, key), greedy)


def test_greedy_ignores_warpers_but_applies_penalty():
    seen = seen_mask(HISTORY, LOGITS.shape[1])
    plain = process_logits(LOGITS, seen, SamplingConfig(top_k=1, top_p=0.1))
    np.testing.assert_array_equal(plain, LOGITS)
    # Row 0's best token 3 is in its history; a strong penalty hands the argmax to token 7.
    token = choose_token(LOGITS, seen, SamplingConfig(repetition_penalty=2.0), jax.random.key(0))
    assert int(token[0]) == 7


def test_temperature_scales_before_top_p():
    # HF order: temperature, then top-p on the tempered distribution. A low temperature sharpens
    # row 0 until token 3 alone holds more than p.
    cfg = SamplingConfig(temperature=0.02, top_k=0, top_p=0.9)
    kept = ~np.isinf(np.asarray(process_logits(LOGITS, None, cfg)))
    assert kept[0].tolist() == [i == 3 for i in range(8)]
    assert kept[0].sum() < (~np.isinf(apply_top_p(LOGITS, 0.9)))[0].sum()


def test_sampling_draws_follow_the_distribution():
    logits = jnp.log(jnp.asarray([[0.1, 0.2, 0.7]]))
    keys = jax.random.split(jax.random.key(1), 4000)
    draws = jax.vmap(lambda k: choose_token(logits, None, SamplingConfig(temperature=1.0), k))(keys)
    freq = np.bincount(np.asarray(draws).ravel(), minlength=3) / len(keys)
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.7], atol=0.03)


def test_invalid_settings_are_rejected():
    for bad in ({"temperature": -1.0}, {"top_p": 0.0}, {"top_k": -2},
                {"repetition_penalty": 0.0}):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)


def test_stop_strings_cut_at_the_earliest():
    assert prompts.cut_at_stop("a cat.\nUSER: hi###", ["###", "\n"]) == ("a cat.", True)
    assert prompts.cut_at_stop("no stop here", ["###"]) == ("no stop here", False)
    assert prompts.cut_at_stop("kept", []) == ("kept", False)


def test_generated_ids_stop_at_eos():
    assert prompts.generated_ids(np.asarray([5, 6, 2, 0, 0]), (2,)) == ([5, 6], True)
    assert prompts.generated_ids(np.asarray([5, 6, 7]), (2,)) == ([5, 6, 7], False)


def test_left_pad_aligns_last_tokens_and_fills_the_batch():
    ids, mask = prompts.left_pad([np.asarray([1, 5, 6]), np.asarray([1, 7])], 0, bucket=4,
                                 batch_size=3)
    np.testing.assert_array_equal(ids, [[0, 1, 5, 6], [0, 0, 1, 7], [0, 1, 5, 6]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]])
