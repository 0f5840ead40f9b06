"""Indexed record files: JSON list and JSONL give the same records, lazily, with reasons."""

import json
import os
import pickle

import pytest

from sgv_jax.data import records
from sgv_jax.data.validate import BadRecord

RECORDS = [
    {"id": "0", "image": "a/b.jpg", "conversations": [{"from": "human", "value": "<image>\nÄ?"}]},
    {"id": "1", "conversations": [{"from": "gpt", "value": "line\nbreak, \"quote\" ]"}]},
    {"id": "2", "conversations": [{"from": "human", "value": "日本語 ✓"}]},
]


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("chunk", [7, 1 << 24])
def test_json_list_streamed_at_any_chunk_size(tmp_path, monkeypatch, indent, chunk):
    monkeypatch.setattr(records, "_CHUNK", chunk)  # 7 bytes: elements straddle every read
    path = tmp_path / "data.json"
    path.write_text(json.dumps(RECORDS, indent=indent, ensure_ascii=False), encoding="utf-8")
    source = records.RecordFile(str(path))
    assert source.format == "json"
    assert [source[i] for i in range(len(source))] == RECORDS


def test_jsonl_skips_blank_lines_and_reports_bad_lines(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(RECORDS[0]), "", "{not json", json.dumps(RECORDS[2]) + "\r", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    source = records.RecordFile(str(path), index_dir=str(tmp_path / "idx"))
    assert len(source) == 3
    assert source[0] == RECORDS[0] and source[2] == RECORDS[2]
    with pytest.raises(BadRecord, match="bad_json") as e:
        source[1]
    assert e.value.record_id == "#1" and str(path) in str(e.value)
    assert os.path.isdir(tmp_path / "idx" / "data.jsonl.sgvidx")


def test_index_is_reused_then_rebuilt_when_the_file_changes(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(RECORDS))
    first = records.RecordFile(str(path))
    stamp = os.stat(os.path.join(first.index, "spans.npy")).st_mtime_ns
    assert os.stat(os.path.join(records.RecordFile(str(path)).index,
                                "spans.npy")).st_mtime_ns == stamp
    path.write_text(json.dumps(RECORDS[:2]))
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    assert len(records.RecordFile(str(path))) == 2


def test_record_file_pickles_without_its_contents(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(RECORDS))
    source = records.RecordFile(str(path))
    blob = pickle.dumps(source)
    assert len(blob) < 500
    assert pickle.loads(blob)[2] == RECORDS[2]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        records.RecordFile(str(tmp_path / "nope.json"))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1}, {"id": ]')
    with pytest.raises(ValueError, match="broken.json: record 1"):
        records.RecordFile(str(broken))
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert len(records.RecordFile(str(empty))) == 0
