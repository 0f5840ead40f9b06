"""launch/serve.py as a real process on loopback with a tiny converted model: the OpenAI API's
answers, streaming, every bad input's 400, 32 concurrent clients, a dropped client, a full
queue's 503, the official `openai` client, and no recompilation per request."""

import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import jax
import pytest

from tests.serve_helpers import ROOT, chat_body, data_url, running_server
from tests.test_generate_helpers import write_checkpoint, write_images

pytestmark = pytest.mark.slow

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve_api")
    ckpt = write_checkpoint(str(folder))
    images = write_images(str(folder / "images"), 4, corrupt=(3,))
    return {"ckpt": ckpt, "images": images, "folder": folder}


@pytest.fixture(scope="module")
def server(files):
    with running_server(files["ckpt"], "--max-batch", "4", "--max-queue", "40",
                        "--no-web-chat", log_path=str(files["folder"] / "server.log")) as url:
        yield url


def post(url, body, **kw):
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=120, **kw)


def answer(url, body) -> str:
    reply = post(url, body)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"]


def stream(url, body, stop_after: int | None = None) -> tuple[list[dict], bool]:
    """(parsed data chunks, whether `data: [DONE]` came); leaves after `stop_after` chunks."""
    chunks, done = [], False
    with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True},
                      timeout=120) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunks.append(json.loads(line[len("data: "):]))
            if stop_after is not None and len(chunks) >= stop_after:
                break
    return chunks, done


def content_of(chunks) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


def health(url) -> dict:
    return httpx.get(url + "/health", timeout=10).json()


def test_greedy_answer_equals_generate_run(server, files):
    image = files["images"][0]
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "generate.py"), "run", "--checkpoint",
         files["ckpt"], "--image", image, "--prompt", QUESTION, "--max-new-tokens", "8"],
        capture_output=True, text=True, check=True, env={**os.environ, "XLA_FLAGS": ""})
    reply = post(server, chat_body(QUESTION, image, temperature=0, max_tokens=8)).json()
    assert reply["choices"][0]["message"]["content"] == run.stdout.strip()
    assert reply["object"] == "chat.completion"
    usage = reply["usage"]
    assert usage["prompt_tokens"] > 9  # the image's 9 feature rows and the v1 prompt
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streamed_chunks_concatenate_to_the_answer(server, files):
    for image in (files["images"][1], None):
        body = chat_body("Describe the image in detail.", image, temperature=0, max_tokens=40,
                         stream_options={"include_usage": True})
        full = post(server, body).json()
        chunks, done = stream(server, body)
        assert done
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert content_of(chunks) == full["choices"][0]["message"]["content"]
        finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        assert finish[0]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]


def bad_inputs(files):
    corrupt, good = files["images"][3], files["images"][0]
    two = chat_body("a", good)
    two["messages"][0]["content"].append(two["messages"][0]["content"][1])
    return {
        "malformed JSON": ('{"messages": [', None, "malformed JSON"),
        "corrupt image": (chat_body("a", corrupt), "messages[0].content[1].image_url",
                          "cannot decode the image"),
        "unsupported scheme": (
            {"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "ftp://host/cat.png"}}]}]},
            "messages[0].content[0].image_url", "unsupported image URL scheme 'ftp'"),
        "local path without the flag": (
            {"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": good}}]}]},
            "messages[0].content[0].image_url", "--allow-local-images"),
        "two images": (two, "messages", "2 images"),
        "prompt longer than the context": (chat_body("word " * 400), "messages",
                                           "the context holds 256"),
        "prompt + max_tokens over the context": (chat_body("a", max_tokens=250), "max_tokens",
                                                 "exceed the context"),
        "max_tokens 0": (chat_body("a", max_tokens=0), "max_tokens", ">= 1"),
        "temperature < 0": (chat_body("a", temperature=-0.5), "temperature", ">= 0"),
        "top_p 0": (chat_body("a", top_p=0), "top_p", "(0, 1]"),
        "top_p > 1": (chat_body("a", top_p=1.01), "top_p", "(0, 1]"),
    }


def test_every_bad_input_answers_400_and_the_server_goes_on(server, files):
    for name, (body, param, message) in bad_inputs(files).items():
        if isinstance(body, str):
            reply = httpx.post(server + "/v1/chat/completions", content=body, timeout=60,
                               headers={"content-type": "application/json"})
        else:
            reply = post(server, body)
        assert reply.status_code == 400, (name, reply.text)
        error = reply.json()["error"]
        assert error["type"] == "invalid_request_error", name
        assert error["param"] == param, name
        assert message in error["message"], (name, error["message"])
    assert health(server)["status"] == "ok"
    assert answer(server, chat_body("Hello", max_tokens=3, temperature=0)) is not None


def mixed_requests(files, n):
    """n different requests: greedy and seeded sampling, with and without an image."""
    questions = ["What is in the picture?", "Describe the image in detail.",
                 "What colour is the car?", "Hello there! How are you today?"]
    bodies = []
    for i in range(n):
        image = files["images"][i % 3] if i % 2 == 0 else None
        sampling = {"temperature": 0} if i % 4 < 2 else {"temperature": 1.0, "top_p": 0.9,
                                                         "seed": i}
        bodies.append(chat_body(questions[i % 4], image, max_tokens=6 + i % 11, **sampling))
    return bodies


def test_32_concurrent_clients_get_the_answers_they_get_alone(server, files):
    bodies = mixed_requests(files, 32)
    alone = [answer(server, body) for body in bodies]
    assert len(set(alone)) > 8  # the requests really differ
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda body: answer(server, body), bodies))
    assert together == alone


def test_a_dropped_client_does_not_stop_the_others(server, files):
    before = health(server)["cancelled"]
    bodies = mixed_requests(files, 3)
    alone = [answer(server, body) for body in bodies]
    long_body = chat_body("Hello there!", temperature=0, max_tokens=150, ignore_eos=True)
    results = {}

    def drop():
        chunks, done = stream(server, long_body, stop_after=3)
        results["dropped"] = (len(chunks), done)

    dropper = threading.Thread(target=drop)
    dropper.start()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        streamed = list(pool.map(lambda body: content_of(stream(server, body)[0]), bodies))
    dropper.join()
    assert results["dropped"] == (3, False)
    assert streamed == alone
    wait_for(lambda: health(server)["cancelled"] == before + 1, "the dropped stream's cancel")
    wait_for(lambda: health(server)["running"] == 0, "the slots to free")
    assert health(server)["cancelled"] == before + 1


def test_no_recompilation_per_request(server, files):
    for body in (chat_body("What is the cat doing?", files["images"][0], max_tokens=3),
                 chat_body("What is the cat doing?", max_tokens=3)):
        answer(server, body)  # warm up both prompt shapes
    compiled = health(server)["compiled_programs"]
    for i, animal in enumerate(["dog", "cow", "fox"]):
        for image in (files["images"][i], None):
            answer(server, chat_body(f"What is the {animal} doing?", image, max_tokens=2 + i,
                                     temperature=0.3 * i, top_p=1 - 0.1 * i, seed=i))
    assert health(server)["compiled_programs"] == compiled


def test_the_openai_client_library_talks_to_it(server, files):
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["ckpt"]
    body = chat_body(QUESTION, files["images"][0], temperature=0, max_tokens=8)
    reply = client.chat.completions.create(model="ckpt", messages=body["messages"],
                                           temperature=0, max_tokens=8)
    assert reply.choices[0].message.content == answer(server, body)
    pieces = client.chat.completions.create(model="ckpt", messages=body["messages"],
                                            temperature=0, max_tokens=8, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == \
        reply.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="ckpt", messages=body["messages"], temperature=-1)


def long_context_checkpoint(folder) -> str:
    """The tiny model with 2048 positions, so one request can hold its slot for seconds."""
    from sgv_jax.checkpoint_sgv import save_sgv
    from sgv_jax.models import llava
    from tests.test_generate_helpers import tiny_cfg, tokenizer_dir

    cfg = tiny_cfg()
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, max_position_embeddings=2048))
    return save_sgv(os.path.join(folder, "long"), cfg, llava.init(cfg, jax.random.key(0)),
                    tokenizer_dir=tokenizer_dir(folder))


def wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_full_queue_answers_503_with_retry_after(files):
    """One slot, one queue place: a long request runs, a second waits, a third is refused."""
    image = files["images"][0]
    ckpt = long_context_checkpoint(str(files["folder"]))
    with running_server(ckpt, "--max-batch", "1", "--max-queue", "1",
                        "--allow-local-images", "--no-web-chat",
                        log_path=str(files["folder"] / "tight.log")) as url:
        # Local paths work behind --allow-local-images, and answer as the data: URL does.
        local = chat_body("a", max_tokens=4, temperature=0)
        local["messages"][0]["content"].append({"type": "image_url",
                                                "image_url": {"url": image}})
        assert answer(url, local) == answer(url, chat_body("a", image, max_tokens=4,
                                                           temperature=0))
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=120, json=chat_body(
                "Hello", max_tokens=1900, ignore_eos=True, temperature=0, stream=True)) as running:
            lines = running.iter_lines()  # (an unreferenced iterator would close the stream)
            assert next(lines).startswith("data: ")
            wait_for(lambda: health(url)["running"] == 1, "the long request to start")
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(answer, url, chat_body("Hi", max_tokens=3))
                wait_for(lambda: health(url)["waiting"] == 1, "the second request to queue")
                assert health(url)["running"] == 1
                refused = post(url, chat_body("Hey", max_tokens=3))
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "1"
                assert refused.json()["error"]["type"] == "server_overloaded"
                # Dropping the stream frees the slot for the waiting request.
        assert waiting.result(timeout=120) is not None
        assert health(url)["rejected"] == 1
    assert data_url(image).startswith("data:image/png;base64,")
