"""One-shot answers and the interactive chat (vicuna_v1, LLaVA v0 or MiniGPT-4's demo). I/O
comes in as callables, so the loop is testable without a terminal."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from sgv_jax.data.images import load_image
from sgv_jax.generation import prompts
from sgv_jax.generation.generator import Completion, Generator
from sgv_jax.generation.sampling import GREEDY, SamplingConfig

EXIT_WORDS = ("exit", "quit", "/exit", "/quit")
# Conversation templates (`plain` and `none` have no turns).
CHAT_TEMPLATES = ("v1", "v0", "llava_v0", "minigpt4", "minigpt4_2304")


def read_image(path: str):
    """The image at `path`, or an error that names the file (PIL's own errors do not)."""
    try:
        return load_image(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 -- PIL raises many types (OSError, SyntaxError, ...)
        raise ValueError(f"image {path} cannot be read: {type(e).__name__}: {e}") from None


def answer(generator: Generator, prompt: str, image_path: str | None = None,
           template: str | None = None, sampling: SamplingConfig = GREEDY,
           max_new_tokens: int = 1024, stop_strings: Sequence[str] | None = None,
           seed: int = 0) -> Completion:
    """One completion for a question (`run`). `template` None: the model family's
    (`Generator.default_template`). With template `none`, `prompt` is used verbatim and must
    hold `<image>` (or MiniGPT-4's `<ImageHere>`) where the image goes. MiniGPT-4 templates
    stop on "###" as token ids and cut the text as `Chat.answer` does (MINIGPT4.md §2.3)."""
    template = template or generator.default_template
    image = generator.preprocess(read_image(image_path)) if image_path else None
    text = prompts.build_prompt(template, prompt, image is not None)
    stop = prompts.DEFAULT_STOP_STRINGS[template] if stop_strings is None else stop_strings
    reply = generator.complete([text], [image], sampling, max_new_tokens=max_new_tokens,
                               stop_strings=stop, seed=seed,
                               stop_ids=prompts.minigpt4_stop_ids(template, generator.tokenizer))[0]
    return dataclasses.replace(reply, text=prompts.answer_text(template, reply.text))


def chat_loop(generator: Generator, image_path: str | None = None,
              sampling: SamplingConfig = GREEDY, max_new_tokens: int = 1024,
              read: Callable[[str], str] | None = None,
              write: Callable[[str], None] | None = None, seed: int = 0,
              template: str | None = None) -> list[str]:
    """Multi-turn conversation in `template` (v1, v0 / llava_v0 or minigpt4*; None: the model
    family's), as REFERENCE.md §3.1 / MINIGPT4.md §2.1 render it: every turn re-renders the
    whole conversation, the image leading the first user turn. Starts with a line saying how to quit;
    an empty line asks again; ends on `exit`, EOF (Ctrl-D) or Ctrl-C. Returns the turns (user,
    assistant, ...). `read`/`write` default to input/print (looked up at call time)."""
    read, write = read or input, write or print
    template = template or generator.default_template
    if template not in CHAT_TEMPLATES:
        raise ValueError(f"chat template {template!r}: use one of {CHAT_TEMPLATES}")
    stop = prompts.DEFAULT_STOP_STRINGS[template]
    stop_ids = prompts.minigpt4_stop_ids(template, generator.tokenizer)
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
            prompt = prompts.render_chat(turns, image is not None, template=template)
            reply = generator.complete([prompt], [image], sampling, max_new_tokens=max_new_tokens,
                                       stop_strings=stop, seed=seed + len(turns),
                                       stop_ids=stop_ids)[0]
            text = prompts.answer_text(template, reply.text)
            turns.append(text)
            write(f"ASSISTANT: {text}")
    except KeyboardInterrupt:
        write("")
        if len(turns) % 2:
            turns.pop()  # the question whose answer was interrupted
    return turns
