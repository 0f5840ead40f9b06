"""The grain pipeline: batch contract, checkpointing, host sharding, epochs, bad input."""

import json
import logging
import os

import numpy as np
import pytest

from sgv_jax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from sgv_jax.data import images, pipeline
from sgv_jax.data.validate import BadRecord
from tests.test_data_helpers import (
    tiny_tokenizer_path,
    v1_record,
    write_image,
    write_records,
)

N_TOKENS, SIZE, L = 4, 28, 160  # 28 px / patch 14 -> 4 image tokens
IMAGE_SIZES = [(40, 30), (30, 50), (28, 28), (64, 17)]
WORDS = ["cat", "dog", "house", "tree", "sea", "boat", "car", "fox"]


def _good_records(n):
    out = []
    for i in range(n):
        answer = f"A {WORDS[i % 8]} number {i}."
        if i % 3 == 2:  # every third record is text-only
            out.append(v1_record(f"g{i}", [f"Hello {i}?", answer]))
        else:
            out.append(v1_record(f"g{i}", ["<image>\nWhat is in the picture?", answer],
                                 image=f"img/{i % len(IMAGE_SIZES)}.png"))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    for i, (w, h) in enumerate(IMAGE_SIZES):
        write_image(str(root / f"img/{i}.png"), w, h, seed=i)
    write_records(str(root / "good.json"), _good_records(16))
    return root


def _make(data, **kw):
    args = {"data_file": str(data / "good.json"), "image_folder": str(data),
            "tokenizer": tiny_tokenizer_path(), "template": "v1", "image_size": SIZE,
            "num_image_tokens": N_TOKENS, "max_length": L, "global_batch_size": 4, "seed": 3,
            "shard_index": 0, "shard_count": 1}
    return pipeline.make_dataset(**{**args, **kw})


def _row_ids(data, batches, data_file="good.json"):
    """Record id of every batch row, identified through the single-record function."""
    maker = _maker(data, data_file)
    by_row = {}
    for i in range(len(maker.records)):
        try:
            by_row[maker.make(i)["input_ids"].tobytes()] = maker.records[i]["id"]
        except BadRecord:
            pass
    return [by_row[row.tobytes()] for b in batches for row in b["input_ids"]]


def _maker(data, data_file="good.json"):
    from sgv_jax.data import records, templates, tokenize
    return pipeline.ExampleMaker(
        records.RecordFile(str(data / data_file)), str(data),
        tokenize.load_tokenizer(tiny_tokenizer_path()), templates.get_template("v1"),
        images.ImageConfig(size=SIZE), N_TOKENS, L)


def test_batch_contract(data):
    batch = next(_make(data))
    assert set(batch) == {"input_ids", "labels", "attention_mask", "pixel_values", "has_image"}
    for key in ("input_ids", "labels", "attention_mask"):
        assert batch[key].shape == (4, L) and batch[key].dtype == np.int32
    assert batch["pixel_values"].shape == (4, SIZE, SIZE, 3)
    assert batch["pixel_values"].dtype == np.float32
    assert batch["has_image"].shape == (4,) and batch["has_image"].dtype == np.bool_
    for ids, labels, mask, pixels, has_image in zip(*(batch[k] for k in pipeline.BATCH_KEYS)):
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()
        assert (ids[length:] == 0).all() and (labels[length:] == IGNORE_INDEX).all()
        image_pos = ids == IMAGE_TOKEN_INDEX
        assert image_pos.sum() == (N_TOKENS if has_image else 0)
        assert (labels[image_pos] == IGNORE_INDEX).all()
        assert ids[0] == 1 and labels[0] == IGNORE_INDEX and labels[length - 1] == 2
        assert pixels.any() == bool(has_image)


def test_restored_iterator_continues_bit_identically(data):
    full = _make(data, num_epochs=2)
    reference = [next(full) for _ in range(6)]
    part = _make(data, num_epochs=2)
    for _ in range(2):
        next(part)
    state = json.loads(json.dumps(part.get_state()))  # must survive a JSON round trip
    resumed = _make(data, num_epochs=2)
    resumed.set_state(state)
    for expected in reference[2:]:
        got = next(resumed)
        for key in pipeline.BATCH_KEYS:
            np.testing.assert_array_equal(got[key], expected[key])


@pytest.mark.slow
def test_restore_with_worker_processes(data):
    full = _make(data, num_epochs=2, worker_count=2)
    reference = [next(full) for _ in range(5)]
    full.close()
    part = _make(data, num_epochs=2, worker_count=2)
    next(part), next(part)
    state = json.loads(json.dumps(part.get_state()))
    part.close()
    resumed = _make(data, num_epochs=2, worker_count=2)
    resumed.set_state(state)
    for expected in reference[2:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["input_ids"], expected["input_ids"])
        np.testing.assert_array_equal(got["pixel_values"], expected["pixel_values"])
    resumed.close()
    single = _make(data, num_epochs=2)
    assert sorted(_row_ids(data, reference[:4])) == sorted(_row_ids(data, [next(single)
                                                                         for _ in range(4)]))


def test_two_hosts_see_disjoint_records_covering_the_epoch(data):
    seen = []
    for host in (0, 1):
        it = _make(data, shard_index=host, shard_count=2, global_batch_size=4)
        batches = list(it)
        assert len(batches) == 4 and all(b["input_ids"].shape[0] == 2 for b in batches)
        seen.append(_row_ids(data, batches))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(f"g{i}" for i in range(16))


def test_epochs_are_reshuffled_and_seeded(data):
    two = _row_ids(data, list(_make(data, num_epochs=2)))
    assert sorted(two[:16]) == sorted(two[16:]) and two[:16] != two[16:]
    assert _row_ids(data, list(_make(data))) == two[:16]
    assert _row_ids(data, list(_make(data, seed=4))) != two[:16]


@pytest.fixture(scope="module")
def bad_data(data):
    (data / "corrupt.png").write_bytes(b"not an image at all")
    with open(data / "img/0.png", "rb") as f:
        (data / "truncated.png").write_bytes(f.read()[:200])
    recs = _good_records(8) + [
        v1_record("missing", ["<image>\nHi?", "Yes."], image="nope.png"),
        v1_record("corrupt", ["<image>\nHi?", "Yes."], image="corrupt.png"),
        v1_record("truncated", ["<image>\nHi?", "Yes."], image="truncated.png"),
        {"id": "noconv"},
        {"id": "role", "conversations": [{"from": "human", "value": "a"},
                                         {"from": "bot", "value": "b"}]},
        {"id": "alt", "conversations": [{"from": "human", "value": "a"},
                                        {"from": "human", "value": "b"}]},
        v1_record("orphan", ["<image>\nHi?", "Yes."]),
        v1_record("long", ["Hello " * 40, "Yes.", "<image>\nMore?", "Sure."], image="img/1.png"),
        v1_record("unk", ["Say <unk>.", "No."]),
    ]
    path = data / "bad.jsonl"
    write_records(str(path), recs, jsonl=True)
    with open(path, "a") as f:
        f.write("{broken json\n")
    return "bad.jsonl"


EXPECTED_SKIPS = {"missing_image": 1, "bad_image": 2, "no_conversations": 1, "unknown_role": 1,
                  "wrong_alternation": 1, "image_token_without_image": 1, "image_truncated": 1,
                  "tokenization_mismatch": 1, "bad_json": 1}


def test_each_bad_input_is_skipped_and_counted(data, bad_data, caplog):
    it = _make(data, data_file=str(data / bad_data), global_batch_size=2)
    with caplog.at_level(logging.WARNING, logger="sgv_jax.data.pipeline"):
        batches = list(it)
    assert sorted(_row_ids(data, batches, bad_data)) == sorted(f"g{i}" for i in range(8))
    counts = it.skip_counts()
    assert {k: v for k, v in counts.items() if v} == EXPECTED_SKIPS
    assert sum(counts.values()) + 8 == 18  # every record is either batched or counted
    for rid in ("missing", "corrupt", "noconv", "long", "#17"):
        assert rid in caplog.text


def test_skip_counts_survive_a_restore(data, bad_data):
    it = _make(data, data_file=str(data / bad_data), global_batch_size=2)
    next(it), next(it)
    state, counts = it.get_state(), it.skip_counts()
    resumed = _make(data, data_file=str(data / bad_data), global_batch_size=2)
    resumed.set_state(json.loads(json.dumps(state)))
    assert resumed.skip_counts() == counts
    list(it), list(resumed)
    assert resumed.skip_counts() == it.skip_counts()


def test_strict_raises_naming_the_record(data, bad_data):
    it = _make(data, data_file=str(data / bad_data), global_batch_size=2, strict=True)
    with pytest.raises(BadRecord, match=r"record '(missing|corrupt|truncated|noconv|role|alt|"
                                        r"orphan|long|unk|#17)'"):
        list(it)


def test_global_batch_must_split_over_hosts(data):
    with pytest.raises(ValueError, match="divisible"):
        _make(data, global_batch_size=3, shard_count=2)


def test_pixel_values_match_the_image_processor(data):
    maker = _maker(data)
    example = maker.make(0)
    proc = images.ImageProcessor(images.ImageConfig(size=SIZE))
    expected = proc(images.load_image(os.path.join(str(data), "img/0.png")))
    np.testing.assert_array_equal(example["pixel_values"], expected)
