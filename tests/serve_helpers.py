"""Shared by the server tests (no tests here): `launch/serve.py` as a real process on loopback,
and image data URLs."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT_S = 240  # jax + gradio imports, checkpoint load, decode-step compile


def log_tail(path: str) -> str:
    with open(path) as f:
        return f.read()[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(checkpoint: str, *flags: str, log_path: str):
    """Starts the server, waits for /health, yields its base URL; stops it with Ctrl-C
    (SIGINT) and checks that it exits cleanly."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "XLA_FLAGS": "", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "launch", "serve.py"), "--checkpoint",
             checkpoint, "--port", str(port), *flags], stdout=log, stderr=subprocess.STDOUT,
            env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}):\n"
                                   + log_tail(log_path))
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start:\n" + log_tail(log_path))
            time.sleep(0.5)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log_tail(log_path)


def data_url(path: str) -> str:
    mime = "jpeg" if path.lower().endswith((".jpg", ".jpeg")) else "png"
    with open(path, "rb") as f:
        return f"data:image/{mime};base64," + base64.b64encode(f.read()).decode()


def chat_body(question: str, image_path: str | None = None, **options) -> dict:
    content = [{"type": "text", "text": question}]
    if image_path:
        content.append({"type": "image_url", "image_url": {"url": data_url(image_path)}})
    return {"model": "ckpt", "messages": [{"role": "user", "content": content}], **options}
