"""`launch/data.py inspect` and `check` on a small file."""

import importlib.util
import json
import os

import pytest

from tests.test_data_helpers import (
    SYSTEM,
    tiny_tokenizer_path,
    v1_record,
    write_hf_dir,
    write_image,
    write_records,
)

_SPEC = importlib.util.spec_from_file_location(
    "launch_data", os.path.join(os.path.dirname(__file__), "..", "launch", "data.py"))
launch_data = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(launch_data)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_image(str(root / "img/a.png"), 30, 20)
    (root / "img/bad.png").write_bytes(b"garbage")
    write_records(str(root / "data.json"), [
        v1_record("ok", ["<image>\nWhat is in the picture?", "A cat."], image="img/a.png"),
        v1_record("text", ["Hello there!", "Fine."]),
        v1_record("bad", ["<image>\nHi?", "No."], image="img/bad.png"),
        {"id": "empty"},
    ])
    tokenizer = write_hf_dir(str(root / "tok"), tiny_tokenizer_path(), legacy=False)
    return root, tokenizer


def test_inspect_prints_reference_convention_and_rendering(files, capsys):
    root, tokenizer = files
    launch_data.main(["inspect", "--data", str(root / "data.json"), "--image-folder", str(root),
                      "--tokenizer", tokenizer, "--template", "v1", "--aspect", "pad",
                      "--limit", "3"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == ["ok", "text", "bad"]
    ok = rows[0]
    assert ok["input_ids"].count(-200) == 1 and ok["input_ids"][0] == 1
    assert len(ok["labels"]) == len(ok["input_ids"]) and ok["labels"][0] == -100
    assert ok["trained"].startswith("<s>" + SYSTEM) and ok["trained"].endswith("[[A cat.</s>]]")
    assert "<image>" in ok["trained"]
    assert rows[1]["input_ids"].count(-200) == 0
    assert rows[2]["skip"] == "bad_image"


def test_check_counts_every_record(files, capsys):
    root, tokenizer = files
    launch_data.main(["check", "--data", str(root / "data.json"), "--image-folder", str(root),
                      "--tokenizer", tokenizer])
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 4 and report["ok"] == 2
    assert report["skipped"] == {"bad_image": 1, "no_conversations": 1}
    assert report["first_ids"] == {"bad_image": ["bad"], "no_conversations": ["empty"]}
