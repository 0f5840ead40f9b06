"""One-shot answers and the interactive vicuna_v1 chat. I/O comes in as callables, so the loop
is testable without a terminal."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sgv_jax.data.images import load_image
from sgv_jax.generation import prompts
from sgv_jax.generation.generator import Completion, Generator
from sgv_jax.generation.sampling import GREEDY, SamplingConfig

EXIT_WORDS = ("exit", "quit", "/exit", "/quit")


def read_image(path: str):
    """The image at `path`, or an error that names the file (PIL's own errors do not)."""
    try:
        return load_image(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 -- PIL raises many types (OSError, SyntaxError, ...)
        raise ValueError(f"image {path} cannot be read: {type(e).__name__}: {e}") from None


def answer(generator: Generator, prompt: str, image_path: str | None = None,
           template: str = "v1", sampling: SamplingConfig = GREEDY,
           max_new_tokens: int = 1024, stop_strings: Sequence[str] | None = None,
           seed: int = 0) -> Completion:
    """One completion for a question (`run`). With template `none`, `prompt` is used verbatim
    and must hold `<image>` where the image goes."""
    image = generator.preprocess(read_image(image_path)) if image_path else None
    text = prompts.build_prompt(template, prompt, image is not None)
    stop = prompts.DEFAULT_STOP_STRINGS[template] if stop_strings is None else stop_strings
    return generator.complete([text], [image], sampling, max_new_tokens=max_new_tokens,
                              stop_strings=stop, seed=seed)[0]


def chat_loop(generator: Generator, image_path: str | None = None,
              sampling: SamplingConfig = GREEDY, max_new_tokens: int = 1024,
              read: Callable[[str], str] | None = None,
              write: Callable[[str], None] | None = None, seed: int = 0) -> list[str]:
    """Multi-turn vicuna_v1 conversation (REFERENCE.md §3.1): every turn re-renders the whole
    conversation, the image leading the first user turn. Starts with a line saying how to quit;
    an empty line asks again; ends on `exit`, EOF (Ctrl-D) or Ctrl-C. Returns the turns (user,
    assistant, ...). `read`/`write` default to input/print (looked up at call time)."""
    read, write = read or input, write or print
    image = generator.preprocess(read_image(image_path)) if image_path else None
    about = f" about {image_path}" if image_path else " (no image)"
    turns: list[str] = []
    try:
        write(f"Chat{about}. Type a message and press Enter; 'exit', Ctrl-D or Ctrl-C quits.")
        while True:
            try:
                question = read("USER: ").strip()
            except EOFError:
                write("")
                break
            if not question:
                continue
            if question.lower() in EXIT_WORDS:
                break
            turns.append(question)
            prompt = prompts.render_chat(turns, image is not None)
            reply = generator.complete([prompt], [image], sampling,
                                       max_new_tokens=max_new_tokens, seed=seed + len(turns))[0]
            turns.append(reply.text)
            write(f"ASSISTANT: {reply.text}")
    except KeyboardInterrupt:
        write("")
        if len(turns) % 2:
            turns.pop()  # the question whose answer was interrupted
    return turns
