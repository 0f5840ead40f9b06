"""One record -> ids and labels: the pure per-record function shared by the pipeline, the
`launch/data.py inspect` tool and the training code.

Reference convention first (one IMAGE_TOKEN_INDEX per image, REFERENCE.md §1.6), then the
expanded form the model consumes: each placeholder repeated `num_image_tokens` times with
IGNORE_INDEX labels, as prepare_inputs_labels_for_multimodal splices it (§1.6), truncated to
`max_length` (§3.5; our length counts image positions, DESIGN.md "Image tokens").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sgv_jax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from sgv_jax.data import templates, tokenize, tokenize_single
from sgv_jax.data.validate import BadRecord, validate_record


def encode_record(record: Any, tokenizer: tokenize.Tokenizer, template: templates.Template, *,
                                    num_image_tokens: int, max_length: int | None = None, index: int = 0
                                    ) -> dict[str, Any]:
    """Validates, renders, tokenizes and masks one record; raises BadRecord with a reason.

    Returns `id`, `image` (path relative to the image folder, or None), `input_ids` and
    `labels` (reference convention, unpadded lists) and `expanded_input_ids` /
    `expanded_labels` (int32 arrays, image runs expanded, truncated to max_length if given).
    """
    conversation = validate_record(record, template, index)
    has_image = conversation.image is not None
    if template.style == "plain":
        ids, labels = tokenize.preprocess_plain(conversation.messages, tokenizer)
    elif template.style == "single":
        ids, labels = tokenize_single.preprocess_v0(
                conversation.messages, has_image, tokenizer, template)
    elif template.style == "minigpt4":
        ids, labels = tokenize_single.preprocess_minigpt4(conversation.messages, tokenizer)
    else:
        ids, labels = tokenize.preprocess_v1(
                conversation.messages, has_image, tokenizer, conversation.record_id)
    expanded_ids, expanded_labels = expand_image_tokens(ids, labels, num_image_tokens)
    if max_length is not None:
        expanded_ids, expanded_labels = truncate(
                expanded_ids, expanded_labels, max_length, conversation.record_id)
    if not np.any(expanded_labels != IGNORE_INDEX):
        raise BadRecord("no_target_tokens", conversation.record_id, "every label is masked")
    return {
            "id": conversation.record_id,
            "image": conversation.image,
            "input_ids": ids,
            "labels": labels,
            "expanded_input_ids": expanded_ids,
            "expanded_labels": expanded_labels,
    }


def expand_image_tokens(ids: list[int], labels: list[int] | None, num_image_tokens: int
                                                ) -> tuple[np.ndarray, np.ndarray]:
    """Repeats each IMAGE_TOKEN_INDEX `num_image_tokens` times (one placeholder per image
    feature row, DESIGN.md "Image tokens"); its labels become IGNORE_INDEX. The one home of
    this expansion: training samples and generation prompts both come through here."""
    ids_arr = np.asarray(ids, np.int32)
    labels_arr = np.asarray(ids if labels is None else labels, np.int32)
    is_image = ids_arr == IMAGE_TOKEN_INDEX
    repeats = np.where(is_image, num_image_tokens, 1)
    labels_arr = np.where(is_image, IGNORE_INDEX, labels_arr).astype(np.int32)
    return np.repeat(ids_arr, repeats), np.repeat(labels_arr, repeats)


def truncate(ids: np.ndarray, labels: np.ndarray, max_length: int, record_id: str = ""
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Cuts to `max_length`; a sample whose image run would be cut is rejected instead."""
    if len(ids) <= max_length:
        return ids, labels
    if np.any(ids[max_length:] == IMAGE_TOKEN_INDEX):
        raise BadRecord("image_truncated", record_id,
                                        f"{len(ids)} tokens; max_length {max_length} cuts the image run")
    return ids[:max_length], labels[:max_length]


def pad(ids: np.ndarray, labels: np.ndarray, max_length: int, pad_id: int
                ) -> dict[str, np.ndarray]:
    """Right-pads to `max_length` (§3.5: ids with pad, labels with IGNORE_INDEX); the attention
    mask comes from the length, so an in-text id equal to pad_id stays attended."""
    length = len(ids)
    input_ids = np.full((max_length,), pad_id, np.int32)
    target = np.full((max_length,), IGNORE_INDEX, np.int32)
    input_ids[:length] = ids
    target[:length] = labels
    mask = np.zeros((max_length,), np.int32)
    mask[:length] = 1
    return {"input_ids": input_ids, "labels": target, "attention_mask": mask}
