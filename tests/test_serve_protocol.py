"""Serving without a model: OpenAI request checking (every bad input names its field), prompt
rendering as launch/generate.py does it, and incremental detokenisation."""

import base64
import io

import numpy as np
import pytest
import sentencepiece as spm
from PIL import Image

from sgv_jax.data.tokenize import load_tokenizer
from sgv_jax.generation import prompts
from sgv_jax.serve.protocol import BadRequest, parse_chat_request
from sgv_jax.serve.text_stream import REPLACEMENT, TextStream
from tests.test_data_helpers import tiny_tokenizer_path


def png_url(size=(9, 7), fmt="PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, fmt)
    mime = "jpeg" if fmt == "JPEG" else "png"
    return f"data:image/{mime};base64," + base64.b64encode(buffer.getvalue()).decode()


def user(text="What is it?", *urls) -> dict:
    parts = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {"role": "user", "content": parts}


def parse(body, template="v1", allow_local=False):
    return parse_chat_request(body, template, allow_local)


def test_v1_prompt_is_generate_run_prompt_with_the_image_first():
    request = parse({"messages": [user("What is it?", png_url())], "temperature": 0,
                     "max_tokens": 5, "stop": "x", "seed": 3, "stream": True})
    assert request.prompt == prompts.build_prompt("v1", "What is it?", has_image=True)
    assert request.prompt.count("<image>\nWhat is it?") == 1
    assert request.image.size == (9, 7)
    assert (request.temperature, request.max_tokens, request.stop, request.seed,
            request.stream) == (0.0, 5, ("x",), 3, True)


def test_jpeg_images_and_string_content_are_accepted():
    request = parse({"messages": [{"role": "user", "content": "Hello"}]})
    assert request.image is None and request.prompt == prompts.build_prompt("v1", "Hello", False)
    assert parse({"messages": [user("a", png_url(fmt="JPEG"))]}).image.mode == "RGB"


def test_multi_turn_v1_with_system_message_renders_the_conversation():
    messages = [{"role": "system", "content": "Be brief."}, user("Q1", png_url()),
                {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    request = parse({"messages": messages})
    assert request.prompt == ("Be brief. USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:")


def test_plain_and_none_templates_take_one_user_message():
    assert parse({"messages": [user("", png_url())]}, "plain").prompt == "<image>"
    assert parse({"messages": [user("Caption:", png_url())]}, "none").prompt == "<image>\nCaption:"
    assert parse({"messages": [user("A <image> B", png_url())]}, "none").prompt == "A <image> B"
    with pytest.raises(BadRequest, match="exactly one user message"):
        parse({"messages": [user("a"), {"role": "assistant", "content": "b"}, user("c")]},
              "plain")


def test_local_images_need_the_flag(tmp_path):
    path = tmp_path / "cat.png"
    Image.new("RGB", (5, 5)).save(path)
    body = {"messages": [user("a", str(path))]}
    with pytest.raises(BadRequest, match="--allow-local-images"):
        parse(body)
    assert parse(body, allow_local=True).image.size == (5, 5)
    assert parse({"messages": [user("a", f"file://{path}")]}, allow_local=True).image is not None


BAD = [
    ("not a dict", [1, 2], None, "JSON object"),
    ("no messages", {}, "messages", "non-empty list"),
    ("bad role", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "robot"),
    ("bad part", {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
     "messages[0].content[0]", "expected"),
    ("corrupt image", {"messages": [user("a", "data:image/png;base64," +
                                         base64.b64encode(b"\x89PNG\r\n\x1a\nnope").decode())]},
     "messages[0].content[1].image_url", "cannot decode the image"),
    ("not base64", {"messages": [user("a", "data:image/png;base64,@@@")]},
     "messages[0].content[1].image_url", "not valid base64"),
    ("not an image type", {"messages": [user("a", "data:text/plain;base64,aGk=")]},
     "messages[0].content[1].image_url", "text/plain"),
    ("https URL", {"messages": [user("a", "https://example.com/cat.png")]},
     "messages[0].content[1].image_url", "unsupported image URL scheme 'https'"),
    ("two images", {"messages": [user("a", png_url(), png_url())]}, "messages", "2 images"),
    ("image token in text", {"messages": [user("<image> what?")]}, "messages[0].content",
     "image_url part"),
    ("ends with assistant", {"messages": [user("a"), {"role": "assistant", "content": "b"}]},
     "messages", "alternate"),
    ("max_tokens 0", {"messages": [user()], "max_tokens": 0}, "max_tokens", ">= 1"),
    ("max_tokens text", {"messages": [user()], "max_tokens": "5"}, "max_tokens", "must be int"),
    ("max_tokens bool", {"messages": [user()], "max_tokens": True}, "max_tokens", "must be int"),
    ("negative temperature", {"messages": [user()], "temperature": -0.1}, "temperature", ">= 0"),
    ("top_p 0", {"messages": [user()], "top_p": 0}, "top_p", "(0, 1]"),
    ("top_p above 1", {"messages": [user()], "top_p": 1.5}, "top_p", "(0, 1]"),
    ("n 2", {"messages": [user()], "n": 2}, "n", "must be 1"),
    ("stop list of ints", {"messages": [user()], "stop": [1]}, "stop", "non-empty strings"),
    ("stream not bool", {"messages": [user()], "stream": "yes"}, "stream", "must be bool"),
]


@pytest.mark.parametrize("name,body,param,message", BAD, ids=[b[0] for b in BAD])
def test_bad_request_names_the_field(name, body, param, message):
    with pytest.raises(BadRequest) as caught:
        parse(body)
    assert caught.value.param == param
    assert message in str(caught.value)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tiny_tokenizer_path())


def streamed(tokenizer, ids, stop=()):
    stream = TextStream(tokenizer, stop)
    pieces = [stream.add(i) for i in ids]
    rest, kept = stream.finish()
    return pieces, rest, kept


def test_multibyte_characters_are_never_sent_in_halves(tokenizer):
    ids = tokenizer.encode("caf\u00e9 \U0001f642 ok")[1:]  # é and 🙂 fall back to UTF-8 bytes
    pieces = spm.SentencePieceProcessor(model_file=tokenizer.model_file)
    assert sum(pieces.is_byte(i) for i in ids) == 2 + 4  # (it really is byte pieces)
    pieces, rest, _ = streamed(tokenizer, ids)
    assert all(REPLACEMENT not in p for p in pieces)
    assert "".join(pieces) + rest == "caf\u00e9 \U0001f642 ok"


def test_text_that_may_become_a_stop_string_is_held_back(tokenizer):
    ids = tokenizer.encode("Hello USER: there")[1:]
    pieces, rest, kept = streamed(tokenizer, ids, stop=("USER:",))
    assert "".join(pieces) + rest == "Hello"
    assert all("U" not in p for p in pieces)
    assert prompts.decode_text(tokenizer, kept).endswith("USER:")


def test_streamed_pieces_concatenate_to_the_generator_answer(tokenizer):
    """Random token sequences (byte pieces, spaces, stop strings included) stream to exactly
    `prompts.final_text`, the text Generator.complete returns."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        ids = rng.integers(3, tokenizer.vocab_size, size=int(rng.integers(1, 25))).tolist()
        stop = ("og", "\n") if rng.random() < 0.5 else ()
        pieces, rest, kept = streamed(tokenizer, ids, stop)
        text, want_ids, _ = prompts.final_text(tokenizer, ids, stop)
        assert "".join(pieces) + rest == text
        assert kept == want_ids
