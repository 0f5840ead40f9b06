"""MiniGPT-4 prompt strings and splicing against MINIGPT4.md §2 (the exact demo prompt is quoted
there from conversation.py)."""

import pytest

from sgv_jax.data import minigpt4_prompts as mp

CURRENT = ("Give the following image: <Img>ImageContent</Img>. You will be able to see the image "
           "once I provide it to you. Please answer my questions.###Human: <Img><ImageHere></Img> "
           "Describe this image in detail.###Assistant: ")


def test_demo_prompt_is_the_reference_string():
    assert mp.demo_prompt([("Describe this image in detail.", None)]) == CURRENT


def test_multi_turn_and_2304_template():
    two = mp.demo_prompt([("q1", "a1"), ("q2", None)])
    assert two.endswith("###Human: <Img><ImageHere></Img> q1###Assistant: a1###Human: q2###Assistant: ")
    old = mp.demo_prompt([("Describe this image in detail.", None)], "minigpt4_2304")
    assert old == CURRENT.rstrip(" ")  # the first release ends '###Assistant:' (§2.1)
    with pytest.raises(ValueError, match="unknown MiniGPT-4 template"):
        mp.demo_prompt([("q", None)], "v9")


def test_segments_each_encoded_with_bos_only_first():
    calls = []

    def encode(text):
        calls.append(text)
        return [len(text)]

    ids = mp.segment_ids(CURRENT, encode, bos_id=1, image_id=-200, num_image_tokens=3)
    assert calls == CURRENT.split("<ImageHere>")
    assert ids == [1, len(calls[0]), -200, -200, -200, len(calls[1])]


def test_train_prompt_and_answer_cut():
    assert mp.train_prompt("<Img><ImageHere></Img> Describe this image in detail.") == \
        "###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: "
    assert mp.cut_answer("Assistant: A cat on a mat. ###Human: more") == "A cat on a mat."
