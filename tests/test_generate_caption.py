"""Batch captioning: resumable output (no id duplicated or lost after a crash or a kill
mid-write), unreadable images reported and skipped, host shards, training-ready records."""

import json
import os
import signal

import pytest

from sgv_jax.data import templates
from sgv_jax.data.encode import encode_record
from sgv_jax.data.records import RecordFile
from sgv_jax.generation import captioning
from tests.test_data_helpers import write_records
from tests.test_generate_helpers import tiny_generator, write_images

NEW = 6
CORRUPT = (3,)
CORRUPT_ID = "part1/img_003"  # image 3 goes to part1 (odd index)


@pytest.fixture(scope="module")
def gen():
    return tiny_generator(seed=4)


@pytest.fixture
def image_dir(tmp_path):
    write_images(str(tmp_path / "images"), 7, corrupt=CORRUPT)
    return str(tmp_path / "images")


def lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def run(gen, items, out, **kw):
    kw = {"batch_size": 2, "max_new_tokens": NEW, "progress": False, "report": lambda m: None,
          **kw}
    return captioning.caption_items(gen, items, out, **kw)


def good_ids(items):
    return sorted(it.id for it in items if it.id != CORRUPT_ID)


def test_folder_items_are_sorted_with_relative_ids(image_dir):
    items = captioning.items_from_dir(image_dir)
    assert [it.id for it in items][:2] == ["part0/img_000", "part0/img_002"]
    assert all(it.image == it.id + ".png" for it in items)
    assert len(items) == 7


def test_crash_mid_run_then_resume_loses_and_duplicates_nothing(gen, image_dir, tmp_path,
                                                                 monkeypatch):
    items = captioning.items_from_dir(image_dir)
    # Batches of 2: [000, 002] [004, 006] [001, 003 (unreadable)] [005]; the third one crashes.
    out = str(tmp_path / "out.jsonl")
    real, calls = gen.complete, []

    def crash_on_third_batch(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kw)

    monkeypatch.setattr(gen, "complete", crash_on_third_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(gen, items, out)
    assert len(lines(out)) == 4  # two whole batches, flushed before the crash
    monkeypatch.setattr(gen, "complete", real)
    summary = run(gen, items, out)
    assert summary.already_done == 4 and summary.written == 2
    assert len(summary.corrupt) == 1 and "img_003" in summary.corrupt[0]
    ids = [r["id"] for r in lines(out)]
    assert sorted(ids) == sorted(set(ids)) == good_ids(items)


def test_ctrl_c_writes_the_batch_in_flight_then_stops_and_the_rerun_continues(
        gen, image_dir, tmp_path, monkeypatch):
    items = captioning.items_from_dir(image_dir)
    out = str(tmp_path / "out.jsonl")
    real, calls = gen.complete, []

    def ctrl_c_during_second_batch(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # handled between bytecodes, mid-batch
        return real(*args, **kw)

    monkeypatch.setattr(gen, "complete", ctrl_c_during_second_batch)
    summary = run(gen, items, out)
    assert summary.stopped_by == signal.SIGINT and summary.written == 4 and len(calls) == 2
    assert len(lines(out)) == 4  # the interrupted batch was still written whole
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    monkeypatch.setattr(gen, "complete", real)
    summary = run(gen, items, out)
    assert summary.already_done == 4 and summary.written == 2 and not summary.stopped_by
    assert sorted(r["id"] for r in lines(out)) == good_ids(items)


def test_resuming_with_another_prompt_is_refused(gen, image_dir, tmp_path):
    items = captioning.items_from_dir(image_dir)[:2]
    out = str(tmp_path / "out.jsonl")
    run(gen, items, out, user_prompt="Describe it.")
    with pytest.raises(ValueError, match="'Describe it.'; this run: 'Name it.'"):
        run(gen, items, out, user_prompt="Name it.")
    with pytest.raises(ValueError, match="another prompt"):  # records record it differently
        run(gen, items, out, user_prompt="Describe it.", as_records=True)
    assert run(gen, items, out, user_prompt="Describe it.").already_done == 2


def test_line_cut_by_a_kill_is_captioned_again(gen, image_dir, tmp_path):
    items = captioning.items_from_dir(image_dir)
    out = str(tmp_path / "out.jsonl")
    run(gen, items, out)
    full = lines(out)
    with open(out, "rb+") as f:  # a kill in the middle of the last line
        f.truncate(os.path.getsize(out) - 7)
    summary = run(gen, items, out)
    assert summary.written == 1
    assert lines(out) == full  # same captions (greedy), each id once


def test_hosts_split_the_items_and_see_each_others_output(gen, image_dir, tmp_path):
    items = captioning.items_from_dir(image_dir)
    out = str(tmp_path / "caps.jsonl")
    for index in (0, 1):
        run(gen, items[index::2], captioning.host_output_path(out, index, 2))
    parts = captioning.output_files(out)
    assert [os.path.basename(p) for p in parts] == ["caps.host0-of-2.jsonl", "caps.host1-of-2.jsonl"]
    assert sorted(captioning.done_ids(out)) == good_ids(items)
    # A single-host rerun over everything finds nothing left to do but the unreadable image.
    assert run(gen, items, out).written == 0


def test_as_records_output_trains_with_the_plain_template(gen, image_dir, tmp_path):
    items = captioning.items_from_dir(image_dir)[:4]
    out = str(tmp_path / "pt.jsonl")
    run(gen, items, out, as_records=True, template="plain", user_prompt="")
    records = RecordFile(out)
    assert len(records) == 4
    for i in range(len(records)):
        record = records[i]
        assert record["conversations"][0] == {"from": "human", "value": "<image>"}
        if record["conversations"][1]["value"]:  # a random model may say nothing
            encode_record(record, gen.tokenizer, templates.get_template("plain"),
                          num_image_tokens=gen.cfg.num_image_tokens, index=i)


def test_records_file_input_uses_record_ids_and_image_folder(image_dir, tmp_path):
    data = write_records(str(tmp_path / "recs.json"), [
        {"id": "a", "image": "part0/img_000.png", "conversations": []},
        {"id": "text-only", "conversations": []},
        {"id": "b", "image": "part1/img_001.png", "conversations": []}])
    items = captioning.list_items(data, image_dir)
    assert [(it.id, it.image) for it in items] == [("a", "part0/img_000.png"),
                                                    ("b", "part1/img_001.png")]
    assert all(os.path.isfile(it.path) for it in items)
