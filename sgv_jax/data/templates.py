"""Conversation templates: exact prompt strings of the reference (REFERENCE.md §3.1-§3.3).

Pure string functions; tokenization and label masking live in `tokenize.py`.
"""

from __future__ import annotations

import dataclasses

from sgv_jax.constants import DEFAULT_IMAGE_TOKEN


@dataclasses.dataclass(frozen=True)
class Template:
    """One conversation template (`conv_vicuna_v1` or `conv_llava_plain`, §3.1)."""

    name: str
    system: str
    roles: tuple[str, str]  # (user, assistant) as rendered in the prompt.
    sep: str
    sep2: str | None  # None for the PLAIN separator style.


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

PLAIN = Template(name="plain", system="", roles=("", ""), sep="\n", sep2=None)

_TEMPLATES = {"v1": VICUNA_V1, "vicuna_v1": VICUNA_V1, "plain": PLAIN}

# Record roles map to template roles by position (§3.4: `roles = {"human": ..., "gpt": ...}`).
RECORD_ROLES = ("human", "gpt")


def get_template(name: str) -> Template:
    """Returns the template called `name` (`plain`, `v1` or its alias `vicuna_v1`)."""
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


def render_plain(caption: str, template: Template = PLAIN) -> str:
    """`preprocess_plain` prompt (§3.3): the human turn is replaced by a bare `<image>`."""
    return DEFAULT_IMAGE_TOKEN + caption + template.sep


def assistant_separator(template: Template = VICUNA_V1) -> str:
    """The string preprocess_v1 splits each round on: `" ASSISTANT: "` (§3.4 step 3)."""
    return template.sep + template.roles[1] + ": "
