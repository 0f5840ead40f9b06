"""The model behind both front ends (the OpenAI API and the web chat): a checked `ChatRequest`
in, an asynchronous stream of scheduler events out.

Runs on the server's event loop; the scheduler runs on its own thread and hands events back
through an `_Outbox` (one `loop.call_soon_threadsafe` per batch of events).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import threading
import time
import weakref
from collections.abc import AsyncIterator

import jax

from sgv_jax.checkpoint_sgv import read_sgv_config
from sgv_jax.generation import prompts
from sgv_jax.generation.generator import Generator
from sgv_jax.serve.engine import Engine, SlotRequest
from sgv_jax.serve.engine_group import EngineGroup
from sgv_jax.serve.protocol import BadRequest, ChatRequest
from sgv_jax.serve.scheduler import Event, Job, Scheduler


def checkpoint_template(path: str) -> str:
    """The template the checkpoint records (config.json "template", when its writer stored
    one), else v1 as `launch/generate.py` defaults."""
    return read_sgv_config(path).get("template", "v1")


class _Outbox:
    """Events from the scheduler's thread to one event loop's queues, with one wake-up of the
    loop per batch: a step hands out a token to every running request, and a wake-up per
    event (a self-pipe write and a loop iteration each) cost the 2-core host ~a tenth of a
    32-slot step's time."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.lock = threading.Lock()
        self.pending: list[tuple[asyncio.Queue, Event]] = []

    def post(self, queue: asyncio.Queue, event: Event) -> None:
        with self.lock:
            self.pending.append((queue, event))
            wake = len(self.pending) == 1  # else a drain is already scheduled
        if wake:
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, []
        for queue, event in pending:
            queue.put_nowait(event)


def _local_devices(count: int) -> list:
    """The first `count` devices of this host (on CPU: XLA host devices, which
    `launch/serve.py --devices` creates before JAX starts)."""
    devices = jax.local_devices()
    if not 1 <= count <= len(devices):
        raise ValueError(f"--devices {count}: must be 1 to {len(devices)} (this host's "
                         f"{devices[0].platform} devices)")
    return devices[:count]


@dataclasses.dataclass(eq=False)
class Submission:
    job: Job
    events: asyncio.Queue
    prompt_tokens: int
    finished: bool = False


class ChatService:
    def __init__(self, generator: Generator, *, template: str = "v1", model_name: str = "sgv",
                 max_batch: int = 8, max_queue: int = 64, request_timeout: float = 600.0,
                 context: int | None = None, allow_local_images: bool = False,
                 devices: int = 1):
        if template not in prompts.TEMPLATES:
            raise ValueError(f"unknown template {template!r}; expected one of {prompts.TEMPLATES}")
        self.template = template
        self.model_name = model_name
        self.request_timeout = request_timeout
        self.allow_local_images = allow_local_images
        self.engine = (Engine(generator, max_batch, context) if devices == 1
                       else EngineGroup(generator, max_batch, _local_devices(devices), context))
        # The engine decodes from the generator's per-layer weights; the service uses the
        # generator for its tokenizer and image processor only, so it keeps none of them.
        self.generator = dataclasses.replace(generator, params={})
        self.scheduler = Scheduler(self.engine, generator.tokenizer, generator.eos_ids,
                                   max_queue)
        self.created = int(time.time())
        self._outboxes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> _Outbox

    @classmethod
    def from_checkpoint(cls, path: str, *, template: str | None = None, dtype: str = "float32",
                        **kwargs) -> ChatService:
        generator = Generator.from_checkpoint(path, dtype=dtype)
        name = os.path.basename(os.path.normpath(path))
        return cls(generator, template=template or checkpoint_template(path),
                   model_name=kwargs.pop("model_name", None) or name, **kwargs)

    def start(self) -> None:
        self.engine.warm_up()
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()

    def prepare(self, request: ChatRequest) -> tuple[SlotRequest, int]:
        """Tokens and pixels of a request, and its max_tokens; raises BadRequest when it does
        not fit the context. CPU work (image resize, tokenizing): call it off the event loop."""
        gen, context = self.generator, self.engine.context
        pixels = None if request.image is None else gen.preprocess(request.image)
        try:
            ids = prompts.encode_prompt(request.prompt, gen.tokenizer, gen.cfg.num_image_tokens,
                                        pixels is not None, gen.cfg.image_token_id)
        except ValueError as e:
            raise BadRequest(str(e), "messages") from None
        n = len(ids)
        if n >= context:
            raise BadRequest(f"the prompt is {n} tokens (image included) but the context holds "
                             f"{context}; shorten the messages", "messages")
        max_tokens = request.max_tokens or context - n
        if n + max_tokens > context:
            raise BadRequest(f"the prompt ({n} tokens) plus max_tokens ({max_tokens}) exceed "
                             f"the context of {context} tokens; ask for at most "
                             f"{context - n} tokens", "max_tokens")
        seed = secrets.randbits(32) if request.seed is None else request.seed
        return SlotRequest(ids, pixels, request.temperature, request.top_p, seed), max_tokens

    def submit(self, request: ChatRequest, prepared: tuple[SlotRequest, int]) -> Submission:
        """Queues the request (raises scheduler.QueueFull when the queue is full)."""
        slot_request, max_tokens = prepared
        loop = asyncio.get_running_loop()
        outbox = self._outboxes.get(loop) or self._outboxes.setdefault(loop, _Outbox(loop))
        events: asyncio.Queue = asyncio.Queue()
        stop = (prompts.DEFAULT_STOP_STRINGS[self.template] if request.stop is None
                else request.stop)
        job = Job(slot_request, max_tokens,
                  emit=lambda event: outbox.post(events, event),
                  stop_strings=stop, ignore_eos=request.ignore_eos,
                  deadline=self.scheduler.clock() + self.request_timeout)
        self.scheduler.submit(job)
        return Submission(job, events, len(slot_request.ids))

    async def events(self, submission: Submission,
                     poll: float | None = None) -> AsyncIterator[Event | None]:
        """The job's events up to `done` or `error`. With `poll`, yields None every `poll`
        seconds without news (so a caller can check its client). Leaving early cancels the
        job, which frees its slot."""
        try:
            while True:
                try:
                    event = await asyncio.wait_for(submission.events.get(), poll)
                except TimeoutError:
                    yield None
                    continue
                if event.kind != "text":
                    submission.finished = True
                yield event
                if submission.finished:
                    return
        finally:
            if not submission.finished:
                self.scheduler.cancel(submission.job)

    async def complete(self, request: ChatRequest) -> AsyncIterator[Event]:
        """prepare + submit + events, for in-process callers (the web chat)."""
        prepared = await asyncio.to_thread(self.prepare, request)
        async for event in self.events(self.submit(request, prepared)):
            yield event
