"""Continuous-batching server vs the same requests one by one through the Generator.

    python benchmarks/bench_serve.py [--clients 1,8,32] [--requests 64] [--max-tokens 128]
        [--checkpoint CKPT] [--max-batch 32] [--devices 2]

The benchmark model (unless --checkpoint): the `demo` preset's vision tower (32 px, 16 image
tokens) with a wider LLaMA decoder (512 x 8 layers, 8 heads, MLP 1408, ~26M parameters), random
weights, fp32, the demo's BPE tokenizer. Requests: greedy, `--max-tokens` each, questions
about random images (every other one text-only), as a chat client sends them.

Sequential: each request alone through `Generator.complete` (what `launch/generate.py run`
does; one compiled device loop per request, no server). Server: `launch/serve.py
--max-batch N --devices D` as a subprocess on loopback; for each client count C, C concurrent streams
(one connection each, on one asyncio event loop, as load generators such as vLLM's
benchmark_serving.py are written) take requests from the shared list until it is empty. The
clients share the server's cores: 32 client threads (httpx, one per stream) spent ~3
CPU-seconds per 8k streamed tokens, a fifth of a 2-core machine, and cut the server's
tokens/s by a quarter; the event loop spends ~1. Both decode the same tokens (checked), so
output tokens/s compare like for like. Prints requests/s, output tokens/s, p50/p99 time to
first token and latency, and the ratio of tokens/s to the sequential run (goal at 32
clients: >= 4x). The load average is printed before and after: on a shared machine, rerun
when it is high.

Where the time goes: a decode step computes the smallest row bucket (1, 8, 32 slots) holding
the running requests (static shapes; serve/engine.py), so 1 client pays for one row and 2-8
clients for eight (in process on this model, attend 128: 6.0 / 15.0 / 32.0 ms per step for
1 / 8 / 32 rows; every step was a 32-row one, ~31 ms, before); the decode programs compile
without XLA:CPU's YNNPACK dots (sgv_jax/xla_cpu.py: a 32-row step attending 256
positions 49 -> 35 ms); attention reads each row's cache up to the longest running request
(whole blocks of a quarter of the context, read in place: llama.init_cache), and at 32 rows of
this small model that reading costs about as much as the matmuls, on ONE core: XLA:CPU runs
each batched per-row dot, and independent dots, on a single thread. `--devices 2` (default
here) splits the slots over two XLA host devices, each running its programs on its own thread
(serve/engine_group.py), so the other core is not idle meanwhile: in process, 64 requests at
32 clients 691 -> 836-875 tok/s. Prefills
join one per step (none stalls the running requests longer), so a burst of 32 arrivals ramps
up over 32 steps; the host reads each step's tokens while the device runs the next
(serve/scheduler.py).
"""

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import httpx
import jax
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTIONS = ["What is in the picture?", "Describe the image in detail.",
             "What colour is the shape?", "Where is the shape in the image?"]


def write_bench_checkpoint(folder: str) -> str:
    from sgv_jax.checkpoint_sgv import save_sgv
    from sgv_jax.data.tokenize import load_tokenizer
    from sgv_jax.demo.data import train_tokenizer
    from sgv_jax.models import get_preset, llava

    tokenizer_dir = os.path.join(folder, "tokenizer")
    train_tokenizer(tokenizer_dir)
    vocab = load_tokenizer(tokenizer_dir).vocab_size
    cfg = get_preset("demo")
    cfg = cfg.replace(text=dataclasses.replace(
        cfg.text, vocab_size=vocab, hidden_size=512, intermediate_size=1408, num_layers=8,
        num_heads=8, num_kv_heads=8, max_position_embeddings=512))
    params = llava.init(cfg, jax.random.key(0))
    return save_sgv(os.path.join(folder, "ckpt"), cfg, params, tokenizer_dir=tokenizer_dir)


def make_requests(folder: str, n: int, max_tokens: int) -> list[dict]:
    rng = np.random.default_rng(0)
    requests = []
    for i in range(n):
        image = None
        if i % 2 == 0:
            image = os.path.join(folder, f"img_{i}.png")
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)).save(image)
        requests.append({"question": QUESTIONS[i % len(QUESTIONS)] + f" ({i})", "image": image,
                         "max_tokens": max_tokens})
    return requests


def sequential(checkpoint: str, requests: list[dict]) -> dict:
    from sgv_jax.data.images import load_image
    from sgv_jax.generation import prompts
    from sgv_jax.generation.generator import Generator

    gen = Generator.from_checkpoint(checkpoint)

    def one(r):
        image = gen.preprocess(load_image(r["image"])) if r["image"] else None
        text = prompts.build_prompt("v1", r["question"], image is not None)
        return gen.complete([text], [image], max_new_tokens=r["max_tokens"])[0]

    for r in requests[:2]:  # compile (with and without an image) outside the timing
        one(r)
    latencies, answers, tokens = [], [], 0
    start = time.perf_counter()
    for r in requests:
        t = time.perf_counter()
        reply = one(r)
        latencies.append(time.perf_counter() - t)
        answers.append(reply.text)
        tokens += len(reply.tokens)
    wall = time.perf_counter() - start
    return {"wall": wall, "tokens": tokens, "latency": latencies, "ttft": latencies,
            "answers": answers}


def request_body(r: dict) -> dict:
    content = [{"type": "text", "text": r["question"]}]
    if r["image"]:
        with open(r["image"], "rb") as f:
            url_data = "data:image/png;base64," + base64.b64encode(f.read()).decode()
        content.append({"type": "image_url", "image_url": {"url": url_data}})
    return {"messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": r["max_tokens"], "stream": True,
            "stream_options": {"include_usage": True}}


async def stream_one(client: httpx.AsyncClient, url: str, r: dict) -> tuple:
    """One streamed request: (time to first token, latency, completion tokens, text)."""
    start = time.perf_counter()
    first, pieces, usage = None, [], {}
    async with client.stream("POST", url + "/v1/chat/completions", json=request_body(r)) as reply:
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter() - start
                pieces.append(chunk["choices"][0]["delta"]["content"])
    latency = time.perf_counter() - start
    return first or latency, latency, usage.get("completion_tokens", 0), "".join(pieces)


async def stream_all(url: str, requests: list[dict], clients: int) -> list[tuple]:
    """`clients` concurrent streams (one connection each) taking requests from the list in
    order until it is empty; results in the requests' order."""
    results: list = [None] * len(requests)
    todo = iter(range(len(requests)))
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        async def one_client():
            for i in todo:
                results[i] = await stream_one(client, url, requests[i])

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return results


def served(url: str, requests: list[dict], clients: int, devices: int) -> dict:
    # Compile both prompt buckets outside the timing, on every device (each compiles its own):
    # the first device takes the first `CONCENTRATE` requests running together, then the
    # least busy one does (serve/engine_group.py).
    from sgv_jax.serve.engine_group import CONCENTRATE

    warm = [{**r, "max_tokens": 32} for r in requests[:2]] * (CONCENTRATE // 2 + devices)
    asyncio.run(stream_all(url, warm, len(warm)))
    start = time.perf_counter()
    results = asyncio.run(stream_all(url, requests, clients))
    wall = time.perf_counter() - start
    return {"wall": wall, "tokens": sum(r[2] for r in results),
            "ttft": [r[0] for r in results], "latency": [r[1] for r in results],
            "answers": [r[3] for r in results]}


@contextlib.contextmanager
def running_server(checkpoint: str, *flags: str, log_path: str):
    """launch/serve.py on a free loopback port until its /health answers; Ctrl-C at the end."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch", "serve.py"),
                                    "--checkpoint", checkpoint, "--port", str(port), *flags],
                                   stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                with open(log_path) as f:
                    raise SystemExit("the server exited:\n" + f.read()[-3000:])
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def report(name: str, run: dict, n: int, baseline: dict | None) -> None:
    rate = run["tokens"] / run["wall"]
    p = lambda xs, q: 1000 * float(np.percentile(xs, q))
    line = (f"{name:14s} {n / run['wall']:7.2f} req/s {rate:8.1f} tok/s  "
            f"TTFT p50 {p(run['ttft'], 50):7.0f} p99 {p(run['ttft'], 99):7.0f} ms  "
            f"latency p50 {p(run['latency'], 50):7.0f} p99 {p(run['latency'], 99):7.0f} ms")
    if baseline is not None:
        same = sum(a == b for a, b in zip(run["answers"], baseline["answers"]))
        line += (f"  ratio {rate / (baseline['tokens'] / baseline['wall']):5.2f}x  "
                 f"same answers {same}/{n}")
    print(line, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--devices", type=int, default=2,
                        help="the server's --devices (2: the slots split over two XLA host "
                             "devices, one per core of a 2-core host)")
    parser.add_argument("--checkpoint", help="default: the benchmark model, written to a temp dir")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or write_bench_checkpoint(folder)
        requests = make_requests(folder, args.requests, args.max_tokens)
        print(f"load: {os.getloadavg()[0]:.2f}; {args.requests} requests, greedy, "
              f"max_tokens {args.max_tokens}; server --max-batch {args.max_batch} "
              f"--devices {args.devices}", flush=True)
        baseline = sequential(checkpoint, requests)
        report("sequential", baseline, len(requests), None)
        with running_server(checkpoint, "--max-batch", str(args.max_batch),
                            "--devices", str(args.devices), "--no-web-chat",
                            "--max-queue", str(args.requests),
                            log_path=os.path.join(folder, "server.log")) as url:
            for clients in map(int, args.clients.split(",")):
                report(f"{clients} clients", served(url, requests, clients, args.devices),
                       len(requests), baseline)
        print(f"load: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
