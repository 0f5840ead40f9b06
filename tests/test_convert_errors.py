"""Every conversion error names the offending key or file (issue 3), and a failed conversion
leaves no destination that looks valid."""

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from safetensors.numpy import load_file, save_file

from sgv_jax.convert import importers
from sgv_jax.convert.sources import WeightFiles
from sgv_jax.convert.state_dict import ConversionError
from tests.test_convert_helpers import save_llava_hf, save_original

pytestmark = pytest.mark.torch
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    model, src = save_llava_hf(str(root / "src"))
    llm, _ = save_original(str(root / "sharegpt4v"), model, separate_tower=False)
    return src, llm


def edited_copy(src, dst, edit_tensors=None, edit_config=None):
    shutil.copytree(src, dst)
    if edit_tensors:
        path = os.path.join(dst, "model.safetensors")
        tensors = load_file(path)
        edit_tensors(tensors)
        save_file(tensors, path, metadata={"format": "pt"})
    if edit_config:
        with open(os.path.join(dst, "config.json")) as f:
            config = json.load(f)
        edit_config(config)
        with open(os.path.join(dst, "config.json"), "w") as f:
            json.dump(config, f)
    return str(dst)


def convert(src, dst):
    return importers.to_sgv(importers.read_llava_hf(src), str(dst), progress=False)


def test_missing_key_is_named(hf_source, tmp_path):
    key = "language_model.model.layers.1.mlp.up_proj.weight"
    src = edited_copy(hf_source[0], tmp_path / "src", lambda t: t.pop(key))
    with pytest.raises(ConversionError, match=rf"missing keys \(1\): {key}"):
        convert(src, tmp_path / "ckpt")


def test_unexpected_key_is_named(hf_source, tmp_path):
    key = "language_model.model.layers.0.mlp.extra.weight"
    src = edited_copy(hf_source[0], tmp_path / "src",
                      lambda t: t.update({key: t["language_model.model.norm.weight"]}))
    with pytest.raises(ConversionError, match=rf"unexpected keys \(1\): {key}"):
        convert(src, tmp_path / "ckpt")


def test_shape_mismatch_names_key_expected_and_found(hf_source, tmp_path):
    key = "multi_modal_projector.linear_2.weight"
    src = edited_copy(hf_source[0], tmp_path / "src",
                      lambda t: t.update({key: t[key][:, :7].copy()}))
    with pytest.raises(ConversionError, match=rf"{key}: expected \(40, 40\), found \(40, 7\)"):
        convert(src, tmp_path / "ckpt")


def test_config_disagreeing_with_weights_is_reported(hf_source, tmp_path):
    src = edited_copy(hf_source[0], tmp_path / "src",
                      edit_config=lambda c: c["vision_config"].update(num_hidden_layers=2))
    with pytest.raises(ConversionError, match=r"config.json disagrees with the weights .*vision "
                                              r"num_hidden_layers is 2 but the weights have 3"):
        importers.read_llava_hf(src)


def test_missing_vision_tower_says_where_sharegpt4v_keeps_it(hf_source):
    with pytest.raises(ConversionError, match=r"separate `vision_tower/` folder.*Lin-Chen/"
                                              r"ShareGPT4V-7B_Pretrained_vit-large336-l12.*"
                                              r"--vision-tower"):
        importers.read_llava(hf_source[1])


def test_wrong_source_format_suggests_the_right_flag(hf_source):
    with pytest.raises(ConversionError, match=r"holds llava-hf weights.*--from llava-hf"):
        importers.read_llava(hf_source[0])


def test_projector_file_without_projector_keys_is_named(tmp_path):
    bad = tmp_path / "mm_projector.bin"
    torch.save({"something.else": torch.zeros(2)}, bad)
    with pytest.raises(ConversionError, match=rf"{bad}: expected keys '…mm_projector"):
        importers.read_components(str(tmp_path / "clip"), str(tmp_path / "llm"), str(bad))


def test_missing_weights_name_the_directory(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump({}, f)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}: no weights"):
        WeightFiles(str(tmp_path))


def test_index_naming_absent_shards_is_reported(tmp_path):
    with open(tmp_path / "model.safetensors.index.json", "w") as f:
        json.dump({"weight_map": {"a": "model-00001-of-00002.safetensors"}}, f)
    with pytest.raises(FileNotFoundError, match="model-00001-of-00002.safetensors"):
        WeightFiles(str(tmp_path))


def test_failed_conversion_leaves_no_valid_destination(hf_source, tmp_path, monkeypatch):
    from sgv_jax.checkpoint_sgv import load_sgv

    real_open = WeightFiles.open
    reads = {"n": 0}

    @contextlib.contextmanager
    def failing_open(self, path):  # the disk fails after some groups are already written
        with real_open(self, path) as getters:
            def get(key, getter):
                reads["n"] += 1
                if reads["n"] > 30:
                    raise OSError(f"{path}: read error at {key}")
                return getter()
            yield {k: functools.partial(get, k, g) for k, g in getters.items()}

    monkeypatch.setattr(WeightFiles, "open", failing_open)
    dst = tmp_path / "ckpt"
    with pytest.raises(OSError, match="read error"):
        convert(hf_source[0], dst)
    assert not dst.exists()
    assert os.path.isdir(os.path.join(f"{dst}.partial", "params"))  # some groups were written
    with pytest.raises(FileNotFoundError, match="not an sgv checkpoint"):
        load_sgv(f"{dst}.partial")


def test_cli_rejects_flags_that_do_not_belong(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "convert.py"), "--from", "llava-hf",
         "--src", "x", "--clip", "y", "--to", "sgv", "--dst", str(tmp_path / "d")],
        capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "does not take --clip" in result.stderr
