"""Record validation: why a record cannot be trained on, as a named reason.

Every sample the pipeline drops carries one of `REASONS`; the pipeline counts them and the
training loop logs the counts (issue 4: nothing is dropped without being counted).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sgv_jax.constants import DEFAULT_IMAGE_TOKEN
from sgv_jax.data import templates

# Skip reasons, in the order the counters are reported.
REASONS = (
        "bad_json",  # a JSONL line that does not parse
        "bad_record",  # not an object, or `image`/turn fields of the wrong type
        "no_conversations",  # missing or empty `conversations`
        "unknown_role",  # a turn `from` other than human/gpt (the reference raises KeyError)
        "wrong_alternation",  # turns do not alternate human/gpt (the reference asserts)
        "image_token_without_image",  # `<image>` in a record that has no `image`
        "image_token_count",  # an image record whose turns hold no, or several, `<image>`
        "plain_format",  # `plain` needs exactly 2 turns with `<image>` in the first (§3.3)
        "minigpt4_format",  # minigpt4 templates train on one image round (MINIGPT4.md §3.1)
        "missing_image",  # image file not found
        "bad_image",  # image file does not decode
        "tokenization_mismatch",  # §3.4's masking arithmetic does not add up
        "image_truncated",  # max_length would cut the image run
        "no_target_tokens",  # nothing left to train on (all labels masked after truncation)
        "missing_caption",  # a webdataset sample with no .json caption and no .txt (MINIGPT4.md §7.10)
)


class BadRecord(ValueError):
    """A record that cannot be trained on; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, record_id: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"record {record_id!r}: {reason}: {detail}")
        self.reason = reason
        self.record_id = record_id
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Conversation:
    """A validated record: turn texts after `preprocess_multimodal` (§3.2), image path or None.

    For `v1`, `messages` alternate user/assistant starting with the user (a leading non-human
    turn is dropped, as preprocess_v1 does). For `plain`, it holds the two raw turns.
    """

    record_id: str
    messages: tuple[str, ...]
    image: str | None


def record_id_of(record: Any, index: int) -> str:
    """The record's `id`, or `#<index>` for records without one."""
    if isinstance(record, dict) and "id" in record:
        return str(record["id"])
    return f"#{index}"


def validate_record(record: Any, template: templates.Template, index: int = 0) -> Conversation:
    """Checks one record against the template's rules; raises BadRecord naming the reason."""
    rid = record_id_of(record, index)
    if not isinstance(record, dict):
        raise BadRecord("bad_record", rid, f"expected a JSON object, got {type(record).__name__}")
    image = record.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise BadRecord("bad_record", rid, f"`image` must be a non-empty string, got {image!r}")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadRecord("no_conversations", rid, "`conversations` missing, empty or not a list")
    for i, turn in enumerate(turns):
        if not (isinstance(turn, dict) and isinstance(turn.get("from"), str)
                        and isinstance(turn.get("value"), str)):
            raise BadRecord("bad_record", rid, f"turn {i} needs string `from` and `value`: {turn!r}")
    values = [turn["value"] for turn in turns]
    if image is None:
        for i, value in enumerate(values):
            if DEFAULT_IMAGE_TOKEN in value:
                raise BadRecord("image_token_without_image", rid, f"turn {i} has {DEFAULT_IMAGE_TOKEN}")
    else:
        # The reference rewrites turns only for image records (§3.2).
        values = [templates.move_image_token_first(v) for v in values]
        count = sum(v.count(DEFAULT_IMAGE_TOKEN) for v in values)
        if count != 1:
            raise BadRecord("image_token_count", rid, f"expected 1 {DEFAULT_IMAGE_TOKEN}, found {count}")
    if template.style == "plain":
        return _validate_plain(rid, values, image)
    conversation = _validate_v1(rid, turns, values, image)
    if template.style == "minigpt4" and (image is None or len(conversation.messages) != 2):
        raise BadRecord("minigpt4_format", rid, f"{template.name} trains on one round about an "
                        f"image (image={image!r}, turns={len(conversation.messages)})")
    return conversation


def _validate_plain(rid: str, values: list[str], image: str | None) -> Conversation:
    # preprocess_plain asserts 2 turns and `<image>` in the first; roles are not read (§3.3).
    if image is None or len(values) != 2 or DEFAULT_IMAGE_TOKEN not in values[0]:
        raise BadRecord(
                "plain_format", rid,
                f"plain needs an image and 2 turns with {DEFAULT_IMAGE_TOKEN} in the first "
                f"(image={image!r}, turns={len(values)})")
    return Conversation(rid, tuple(values), image)


def _validate_v1(rid: str, turns: list[dict], values: list[str], image: str | None
                                  ) -> Conversation:
    roles = [turn["from"] for turn in turns]
    for i, role in enumerate(roles):
        if role not in templates.RECORD_ROLES:
            raise BadRecord("unknown_role", rid, f"turn {i} from {role!r}; expected human or gpt")
    if roles[0] != templates.RECORD_ROLES[0]:
        # preprocess_v1 drops a leading non-human turn (§3.4 step 1).
        roles, values = roles[1:], values[1:]
    if not values:
        raise BadRecord("no_conversations", rid, "no turns left after dropping a leading gpt turn")
    for j, role in enumerate(roles):
        if role != templates.RECORD_ROLES[j % 2]:
            raise BadRecord("wrong_alternation", rid, f"turn {j} is from {role!r}")
    if image is not None and not any(DEFAULT_IMAGE_TOKEN in v for v in values):
        raise BadRecord("image_token_count", rid, f"{DEFAULT_IMAGE_TOKEN} was in the dropped turn")
    return Conversation(rid, tuple(values), image)
