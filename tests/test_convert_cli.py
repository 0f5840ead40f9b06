"""`launch/convert.py` end to end, as a user runs it (subprocesses: slow)."""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sgv_jax.checkpoint_sgv import iter_sgv_groups, read_sgv_config
from tests.test_convert_helpers import save_llava_hf, save_original

pytestmark = [pytest.mark.torch, pytest.mark.slow]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def convert(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", "convert.py"), "--quiet",
                           *map(str, args)], capture_output=True, text=True, cwd=REPO, check=False)


def test_sharegpt4v_to_sgv_to_llava_hf_and_llava(tmp_path):
    model, _ = save_llava_hf(str(tmp_path / "unused"))
    llm, tower = save_original(str(tmp_path / "sharegpt4v"), model)
    ckpt = tmp_path / "ckpt"
    missing = convert("--from", "llava", "--src", llm, "--to", "sgv", "--dst", ckpt)
    assert missing.returncode == 1 and "--vision-tower" in missing.stderr
    assert not ckpt.exists()
    done = convert("--from", "llava", "--src", llm, "--vision-tower", tower, "--to", "sgv",
                   "--dst", ckpt, "--dtype", "bf16")
    assert done.returncode == 0, done.stderr
    assert read_sgv_config(str(ckpt))["dtype"] == "bfloat16"
    hf = convert("--from", "sgv", "--src", ckpt, "--to", "llava-hf", "--dst", tmp_path / "hf")
    assert hf.returncode == 0, hf.stderr
    assert "added <image>=101, <pad>=102, vocab 101 → 128" in hf.stdout
    back = convert("--from", "sgv", "--src", ckpt, "--to", "llava", "--dst", tmp_path / "llava")
    assert back.returncode == 0, back.stderr
    again = tmp_path / "ckpt2"
    assert convert("--from", "llava", "--src", tmp_path / "llava", "--vision-tower",
                   tmp_path / "llava" / "vision_tower", "--to", "sgv", "--dst", again
                   ).returncode == 0
    first = {p: v for _, g in iter_sgv_groups(str(ckpt)) for p, v in g.items()}
    second = {p: v for _, g in iter_sgv_groups(str(again)) for p, v in g.items()}
    assert all(np.array_equal(first[p], second[p]) for p in first) and first.keys() == second.keys()


def test_help_lists_every_direction():
    out = subprocess.run([sys.executable, os.path.join(REPO, "launch", "convert.py"), "--help"],
                         capture_output=True, text=True, check=False)
    for line in ("--from llava-hf", "--from components", "--to llava-hf", "--vision-tower"):
        assert line in out.stdout
