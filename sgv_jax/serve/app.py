"""The HTTP server: OpenAI-compatible chat completions, model list, health, and the web chat at /.

  POST /v1/chat/completions   OpenAI's request/response (and `stream` as server-sent events)
  GET  /v1/models             the served checkpoint
  GET  /health                slot and queue counts, compiled programs
  GET  /                      the Gradio web chat (same process, same scheduler)

Expected failures answer in OpenAI's error shape: 400 for bad input, 503 + Retry-After when the
queue is full, 504 when a request outlives its timeout. Nothing a client sends reaches a 500.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from sgv_jax.serve import protocol
from sgv_jax.serve.protocol import BadRequest
from sgv_jax.serve.scheduler import QueueFull
from sgv_jax.serve.service import ChatService, Submission

RETRY_AFTER_S = 1
DISCONNECT_POLL_S = 0.5  # how often a non-streamed request checks that its client is there


def _error(status: int, message: str, kind: str, param: str | None = None,
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse(protocol.error_body(message, kind, param), status, headers=headers)


def create_app(service: ChatService, web_chat: bool = True) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="sgv-jax", lifespan=lifespan)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest):
        return _error(400, str(e), "invalid_request_error", e.param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return _error(e.status_code, str(e.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        return _error(500, f"internal error: {type(e).__name__}: {e}", "server_error")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.model_name, **service.scheduler.status()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": service.model_name, "object": "model",
                                            "created": service.created, "owned_by": "sgv-jax"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"malformed JSON in the request body: {e}") from None
        parsed = await run_in_threadpool(protocol.parse_chat_request, body, service.template,
                                         service.allow_local_images)
        prepared = await run_in_threadpool(service.prepare, parsed)
        try:
            submission = service.submit(parsed, prepared)
        except QueueFull as e:
            return _error(503, f"server busy: {e}", "server_overloaded",
                          headers={"Retry-After": str(RETRY_AFTER_S)})
        reply = {"request_id": f"chatcmpl-{secrets.token_hex(12)}",
                 "model": service.model_name, "created": int(time.time())}
        if parsed.stream:
            return StreamingResponse(_stream(service, submission, parsed.include_usage, reply),
                                     media_type="text/event-stream")
        return await _collect(service, submission, request, reply)

    if web_chat:
        import gradio as gr

        from sgv_jax.serve.webui import build_web_chat

        app = gr.mount_gradio_app(app, build_web_chat(service), path="/")
    return app


async def _collect(service: ChatService, submission: Submission, request: Request,
                   reply: dict) -> JSONResponse:
    pieces = []
    # aclosing: leaving early (a vanished client) closes the stream at once, cancelling the job.
    async with contextlib.aclosing(service.events(submission, poll=DISCONNECT_POLL_S)) as events:
        async for event in events:
            if event is None:
                if await request.is_disconnected():
                    return _error(499, "client disconnected", "cancelled")
            elif event.kind == "text":
                pieces.append(event.text)
            elif event.kind == "error":
                return _error(event.status, event.text, "timeout" if event.status == 504
                              else "server_error")
            else:
                return JSONResponse(protocol.completion_body(
                    **reply, text="".join(pieces), finish_reason=event.finish_reason,
                    prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens))
    raise AssertionError("the event stream ended without done or error")


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _stream(service: ChatService, submission: Submission, include_usage: bool,
                  reply: dict):
    """Server-sent events as OpenAI sends them: a role chunk, content chunks, a finish chunk,
    optionally a usage chunk, then `data: [DONE]`. A client that disconnects cancels the
    generator here, and `service.events` then cancels the job."""
    yield _sse(protocol.chunk_body(**reply, delta={"role": "assistant", "content": ""}))
    async for event in service.events(submission):
        if event.kind == "text":
            yield _sse(protocol.chunk_body(**reply, delta={"content": event.text}))
        elif event.kind == "error":
            yield _sse(protocol.error_body(event.text, "timeout" if event.status == 504
                                           else "server_error"))
        else:
            yield _sse(protocol.chunk_body(**reply, delta={}, finish_reason=event.finish_reason))
            if include_usage:
                yield _sse(protocol.chunk_body(**reply, delta=None, usage_counts=protocol.usage(
                    event.prompt_tokens, event.completion_tokens)))
    yield _sse("[DONE]")


def serve(checkpoint: str, *, host: str = "127.0.0.1", port: int = 8000,
          web_chat: bool = True, **service_options) -> None:
    """Loads the checkpoint and serves it until Ctrl-C (`launch/serve.py`)."""
    import uvicorn

    try:
        service = ChatService.from_checkpoint(checkpoint, **service_options)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"serve: {e}") from None
    print(f"serving {service.model_name} (template {service.template}, "
          f"{service.engine.slots} slots x {service.engine.context} tokens) on "
          f"http://{host}:{port}/", flush=True)
    # Streams end within seconds of Ctrl-C: an open stream would otherwise hold the shutdown.
    uvicorn.run(create_app(service, web_chat), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=5)
