"""Conversation templates: exact prompt strings of the reference (REFERENCE.md §3.1-§3.3), of
LLaVA's single-separator `conv_llava_v0` (llava/conversation.py) and of MiniGPT-4's demo
(MINIGPT4.md §2.1).

Pure string functions; tokenization and label masking live in `tokenize.py`.
"""

from __future__ import annotations

import dataclasses

from sgv_jax.constants import DEFAULT_IMAGE_TOKEN
from sgv_jax.data import minigpt4_prompts


@dataclasses.dataclass(frozen=True)
class Template:
    """One conversation template (`conv_vicuna_v1`, `conv_llava_plain` (§3.1),
    `conv_llava_v0` or MiniGPT-4's `CONV_VISION_Vicuna0`)."""

    name: str
    system: str
    roles: tuple[str, str]  # (user, assistant) as rendered in the prompt.
    sep: str
    sep2: str | None  # None for the PLAIN and SINGLE separator styles.
    style: str = "two"  # SeparatorStyle: "two" (v1), "plain", "single" (v0, MiniGPT-4)


VICUNA_V1 = Template(
        name="v1",
        system=(
                "A chat between a curious user and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions."
        ),
        roles=("USER", "ASSISTANT"),
        sep=" ",
        sep2="</s>",
)

PLAIN = Template(name="plain", system="", roles=("", ""), sep="\n", sep2=None, style="plain")

# llava/conversation.py `conv_llava_v0` (SeparatorStyle.SINGLE, sep "###"): LLaVA v1's
# paper-era checkpoints. LLaVA's `conv_templates["v0"]` is `conv_vicuna_v0`, the same system
# text and roles plus two few-shot example turns that training never renders; here `v0` is
# `conv_llava_v0`.
LLAVA_V0 = Template(
        name="llava_v0",
        system=(
                "A chat between a curious human and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the human's questions."
        ),
        roles=("Human", "Assistant"),
        sep="###",
        sep2=None,
        style="single",
)

# MiniGPT-4's Vicuna-v0 demo (`CONV_VISION_Vicuna0`, MINIGPT4.md §2.1): SINGLE style whose roles
# carry their own ": " (current: "Assistant: " with a trailing space), and the 2023-04 first
# release whose get_prompt added ": " / ":" itself. Rendered by minigpt4_prompts.demo_prompt.
MINIGPT4 = Template(name="minigpt4", system=minigpt4_prompts.SYSTEM,
                    roles=minigpt4_prompts.ROLES["minigpt4"], sep=minigpt4_prompts.SEP,
                    sep2=None, style="minigpt4")
MINIGPT4_2304 = dataclasses.replace(MINIGPT4, name="minigpt4_2304",
                                    roles=minigpt4_prompts.ROLES["minigpt4_2304"])

_TEMPLATES = {"v1": VICUNA_V1, "vicuna_v1": VICUNA_V1, "plain": PLAIN, "v0": LLAVA_V0,
              "llava_v0": LLAVA_V0, "minigpt4": MINIGPT4, "minigpt4_2304": MINIGPT4_2304}
NAMES = tuple(_TEMPLATES)

# Record roles map to template roles by position (§3.4: `roles = {"human": ..., "gpt": ...}`).
RECORD_ROLES = ("human", "gpt")


def get_template(name: str) -> Template:
    """Returns the template called `name` (one of NAMES; `vicuna_v1` = `v1`, `v0` = `llava_v0`)."""
    try:
        return _TEMPLATES[name]
    except KeyError:
        raise ValueError(
                f"unknown template {name!r}; expected one of {sorted(_TEMPLATES)}"
        ) from None


def move_image_token_first(value: str) -> str:
    """`preprocess_multimodal` for one turn (§3.2): `<image>` (all copies) becomes one leading
    `<image>\\n`, with the rest stripped. Turns without `<image>` are returned unchanged."""
    if DEFAULT_IMAGE_TOKEN not in value:
        return value
    rest = value.replace(DEFAULT_IMAGE_TOKEN, "").strip()
    return (DEFAULT_IMAGE_TOKEN + "\n" + rest).strip()


def render_v1(messages: list[str], template: Template = VICUNA_V1) -> str:
    """`Conversation.get_prompt` for SeparatorStyle.TWO (§3.1).

    `messages` alternate user/assistant starting with the user. An empty message renders as
    `role + ":"` without separator, exactly as the reference does.
    """
    seps = (template.sep, template.sep2)
    out = template.system + template.sep
    for i, message in enumerate(messages):
        role = template.roles[i % 2]
        if message:
            out += role + ": " + message + seps[i % 2]
        else:
            out += role + ":"
    return out


def render_single(messages: list[str], template: Template = LLAVA_V0) -> str:
    """`Conversation.get_prompt` for SeparatorStyle.SINGLE (llava/conversation.py): `system +
    sep`, then `role + ": " + message + sep` per message, an empty one as `role + ":"`."""
    out = template.system + template.sep
    for i, message in enumerate(messages):
        role = template.roles[i % 2]
        out += role + ": " + message + template.sep if message else role + ":"
    return out


def render_plain(caption: str, template: Template = PLAIN) -> str:
    """`preprocess_plain` prompt (§3.3): the human turn is replaced by a bare `<image>`."""
    return DEFAULT_IMAGE_TOKEN + caption + template.sep


def assistant_separator(template: Template = VICUNA_V1) -> str:
    """The string preprocess_v1 splits each round on: `" ASSISTANT: "` (§3.4 step 3)."""
    return template.sep + template.roles[1] + ": "
