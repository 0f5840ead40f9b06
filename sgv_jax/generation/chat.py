"""One-shot answers and the interactive vicuna_v1 chat. I/O comes in as callables, so the loop
is testable without a terminal."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sgv_jax.data.images import load_image
from sgv_jax.generation import prompts
from sgv_jax.generation.generator import Completion, Generator
from sgv_jax.generation.sampling import GREEDY, SamplingConfig

EXIT_WORDS = ("exit", "quit", "/exit", "/quit")


def answer(generator: Generator, prompt: str, image_path: str | None = None,
           template: str = "v1", sampling: SamplingConfig = GREEDY,
           max_new_tokens: int = 1024, stop_strings: Sequence[str] | None = None,
           seed: int = 0) -> Completion:
    """One completion for a question (`run`). With template `none`, `prompt` is used verbatim
    and must hold `<image>` where the image goes."""
    image = generator.preprocess(load_image(image_path)) if image_path else None
    text = prompts.build_prompt(template, prompt, image is not None)
    stop = prompts.DEFAULT_STOP_STRINGS[template] if stop_strings is None else stop_strings
    return generator.complete([text], [image], sampling, max_new_tokens=max_new_tokens,
                              stop_strings=stop, seed=seed)[0]


def chat_loop(generator: Generator, image_path: str | None = None,
              sampling: SamplingConfig = GREEDY, max_new_tokens: int = 1024,
              read: Callable[[str], str] | None = None,
              write: Callable[[str], None] | None = None, seed: int = 0) -> list[str]:
    """Multi-turn vicuna_v1 conversation (REFERENCE.md §3.1): every turn re-renders the whole
    conversation, the image leading the first user turn. Ends on EOF, an empty line or
    `exit`; returns the turns (user, assistant, ...). `read`/`write` default to input/print
    (looked up at call time)."""
    read, write = read or input, write or print
    image = generator.preprocess(load_image(image_path)) if image_path else None
    turns: list[str] = []
    while True:
        try:
            question = read("USER: ").strip()
        except EOFError:
            break
        if not question or question.lower() in EXIT_WORDS:
            break
        turns.append(question)
        prompt = prompts.render_chat(turns, image is not None)
        reply = generator.complete([prompt], [image], sampling, max_new_tokens=max_new_tokens,
                                   seed=seed + len(turns))[0]
        turns.append(reply.text)
        write(f"ASSISTANT: {reply.text}")
    return turns
