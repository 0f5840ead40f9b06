"""OpenAI chat-completions requests and responses: JSON in, a checked `ChatRequest` out, and the
response / stream-chunk / error bodies. Pure functions (plus reading an image), no model.

Bad input raises `BadRequest` naming the field, which the app answers with a 400 in OpenAI's
error shape: {"error": {"message", "type": "invalid_request_error", "param", "code"}}.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
import urllib.parse
from typing import Any

from PIL import Image

from sgv_jax.constants import DEFAULT_IMAGE_TOKEN
from sgv_jax.data.images import load_image
from sgv_jax.generation import prompts


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    prompt: str  # the template's prompt string, `<image>` marking the image
    image: Image.Image | None
    max_tokens: int | None = None  # None: up to the end of the context
    temperature: float = 1.0  # OpenAI's default; 0 decodes greedily
    top_p: float = 1.0
    stop: tuple[str, ...] | None = None  # None: the template's default stop strings
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False  # vLLM's extension: decode max_tokens even past EOS (benchmarks)


def render_conversation(template: str, turns: list[tuple[str, str]], has_image: bool) -> str:
    """The prompt for (role, text) turns as `launch/generate.py` builds it for `template`.

    v1: an optional leading system turn replaces the vicuna_v1 system message; then user and
    assistant alternate, starting and ending with the user; the image leads the first user turn
    (`<image>\\n`, as LLaVA puts it). plain / none: exactly one user turn
    (`prompts.build_prompt`); with `none` the text is the prompt verbatim, `<image>` in it marks
    where the image goes (`<image>\\n` is put first when it has none)."""
    system = None
    if turns and turns[0][0] == "system":
        system, turns = turns[0][1], turns[1:]
    roles = [role for role, _ in turns]
    if template == "v1":
        expected = ["user", "assistant"] * (len(turns) // 2) + ["user"]
        if roles != expected[:len(roles)] or len(roles) % 2 == 0 or "system" in roles:
            raise BadRequest(f"messages have roles {roles}: after an optional first system "
                             "message, user and assistant must alternate, starting and ending "
                             "with user", "messages")
        return prompts.render_chat([text for _, text in turns], has_image, system)
    if roles != ["user"] or system is not None:
        raise BadRequest(f"template {template!r} takes exactly one user message, got roles "
                         f"{([('system')] if system is not None else []) + roles}", "messages")
    text = turns[0][1]
    if template == "none" and has_image and DEFAULT_IMAGE_TOKEN not in text:
        text = DEFAULT_IMAGE_TOKEN + "\n" + text
    return prompts.build_prompt(template, text, has_image)


def load_image_url(url: Any, allow_local: bool, param: str) -> Image.Image:
    """A `data:` URL (base64 PNG/JPEG) or, with `allow_local`, a local path / file:// URL."""
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{param} must be a non-empty string (a data: URL)", param)
    if url.startswith("data:"):
        header, comma, data = url[len("data:"):].partition(",")
        if not comma or not header.endswith(";base64"):
            raise BadRequest(f"{param}: a data: URL must be base64, as "
                             "data:image/png;base64,<data>", param)
        if header[:-len(";base64")] and not header.startswith("image/"):
            raise BadRequest(f"{param}: data: URL of type {header[:-7]!r}, expected image/png "
                             "or image/jpeg", param)
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise BadRequest(f"{param}: the data: URL is not valid base64 ({e})", param) from None
        return _decode_image(io.BytesIO(raw), param)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("", "file"):
        raise BadRequest(f"{param}: unsupported image URL scheme {scheme!r}; send the image "
                         "as a data: URL (data:image/png;base64,...)", param)
    if not allow_local:
        raise BadRequest(f"{param}: local image paths are off; start the server with "
                         "--allow-local-images to read them", param)
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path) if scheme else url
    if not os.path.isfile(path):
        raise BadRequest(f"{param}: no image file at {path}", param)
    return _decode_image(path, param)


def _decode_image(source, param: str) -> Image.Image:
    try:
        return load_image(source)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for undecodable bytes
        raise BadRequest(f"{param}: cannot decode the image ({type(e).__name__}: {e})",
                         param) from None


def _message_parts(message: Any, i: int, allow_local: bool) -> tuple[str, str, list]:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object with 'role' and 'content'", where)
    role = message.get("role")
    role = "system" if role == "developer" else role  # OpenAI's newer name for system
    if role not in ("system", "user", "assistant"):
        raise BadRequest(f"{where}.role is {role!r}; expected system, user or assistant",
                         f"{where}.role")
    content = message.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, str):
        return role, content, []
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts",
                         f"{where}.content")
    texts, images = [], []
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if role != "user":
                raise BadRequest(f"{param}: only user messages may carry an image", param)
            images.append(load_image_url(url, allow_local, f"{param}.image_url"))
        else:
            raise BadRequest(f"{param}: expected {{'type': 'text', 'text': ...}} or "
                             "{'type': 'image_url', 'image_url': {'url': ...}}", param)
    return role, "\n".join(texts), images


def _get(body: dict, name: str, kinds: tuple[type, ...], default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise BadRequest(f"'{name}' must be {expected}, got {value!r}", name)
    return value


def parse_chat_request(body: Any, template: str, allow_local_images: bool) -> ChatRequest:
    """Checks a /v1/chat/completions body and renders its prompt; raises BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    parsed = [_message_parts(m, i, allow_local_images) for i, m in enumerate(messages)]
    images = [image for _, _, found in parsed for image in found]
    if len(images) > 1:
        raise BadRequest(f"{len(images)} images in the messages; this model takes one image "
                         "per conversation", "messages")
    has_image = bool(images)
    for i, (_, text, _) in enumerate(parsed):
        if DEFAULT_IMAGE_TOKEN in text and template != "none":
            raise BadRequest(f"messages[{i}] contains {DEFAULT_IMAGE_TOKEN!r} in its text; send "
                             "the image as an image_url part", f"messages[{i}].content")
    prompt = render_conversation(template, [(r, t) for r, t, _ in parsed], has_image)

    max_tokens = _get(body, "max_completion_tokens", (int,), None)
    max_tokens = _get(body, "max_tokens", (int,), None) if max_tokens is None else max_tokens
    if max_tokens is not None and max_tokens <= 0:
        raise BadRequest(f"'max_tokens' must be >= 1, got {max_tokens}", "max_tokens")
    temperature = float(_get(body, "temperature", (int, float), 1.0))
    if temperature < 0:
        raise BadRequest(f"'temperature' must be >= 0 (0 = greedy), got {temperature}",
                         "temperature")
    top_p = float(_get(body, "top_p", (int, float), 1.0))
    if not 0.0 < top_p <= 1.0:
        raise BadRequest(f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    if _get(body, "n", (int,), 1) != 1:
        raise BadRequest("'n' must be 1 (one answer per request)", "n")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = (stop,)
    elif stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise BadRequest(f"'stop' must be a string or a list of non-empty strings, got "
                             f"{stop!r}", "stop")
        stop = tuple(stop)
    options = _get(body, "stream_options", (dict,), {})
    return ChatRequest(
        prompt=prompt, image=images[0] if images else None, max_tokens=max_tokens,
        temperature=temperature, top_p=top_p, stop=stop,
        seed=_get(body, "seed", (int,), None), stream=_get(body, "stream", (bool,), False),
        include_usage=bool(options.get("include_usage", False)),
        ignore_eos=_get(body, "ignore_eos", (bool,), False))


def error_body(message: str, kind: str = "invalid_request_error",
               param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(request_id: str, model: str, created: int, text: str, finish_reason: str,
                    prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": request_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk_body(request_id: str, model: str, created: int, delta: dict | None,
               finish_reason: str | None = None, usage_counts: dict | None = None) -> dict:
    """A stream chunk; `delta` None gives the usage-only chunk (no choices)."""
    chunk = {"id": request_id, "object": "chat.completion.chunk", "created": created,
             "model": model, "choices": []}
    if delta is not None:
        chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish_reason}]
    if usage_counts is not None:
        chunk["usage"] = usage_counts
    return chunk
