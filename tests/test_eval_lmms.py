"""The lmms-eval backend: `python -m lmms_eval --model sgv_jax --model_args checkpoint=CKPT`
runs lmms-eval's own POPE task offline on a local dataset, and its answers are the ones our
generator gives to LLaVA-1.5's prompt for the same question and image.

lmms-eval runs in a subprocess with `.lmms/` (`make lmms`, requirements-lmms.txt) on PYTHONPATH,
or with an lmms-eval the interpreter already imports (`pip install -e .[lmms]`)."""

import glob
import importlib.util
import json
import os
import subprocess
import sys
import tomllib

import pytest

from sgv_jax.constants import DEFAULT_IMAGE_TOKEN
from sgv_jax.data.images import load_image
from sgv_jax.eval import prompts
from sgv_jax.generation.generator import Generator, local_mesh
from tests.test_generate_helpers import write_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LMMS_PATH = os.environ.get("SGV_LMMS_PATH", os.path.join(ROOT, ".lmms"))
POPE_SUFFIX = "\nAnswer the question using a single word or phrase."  # lmms-eval pope.yaml
MAX_NEW_TOKENS = 5


def lmms_pythonpath() -> str | None:
    if importlib.util.find_spec("lmms_eval") is not None:
        return ""
    if os.path.isdir(os.path.join(LMMS_PATH, "lmms_eval")):
        return LMMS_PATH
    return None


def write_entry_point(folder: str) -> str:
    """pyproject.toml's `lmms_eval.models` entry point as installed metadata, so the test needs
    no re-install of the package (the venv's editable install may predate it)."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        entry_points = tomllib.load(f)["project"]["entry-points"]["lmms_eval.models"]
    dist = os.path.join(folder, "sgv_jax_lmms_test-0.dist-info")
    os.makedirs(dist)
    with open(os.path.join(dist, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: sgv-jax-lmms-test\nVersion: 0\n")
    with open(os.path.join(dist, "entry_points.txt"), "w") as f:
        f.write("[lmms_eval.models]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return folder


def test_pyproject_registers_the_backend_with_lmms_eval():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["entry-points"]["lmms_eval.models"] == {
        "sgv_jax": "sgv_jax.eval.lmms_backend:manifest"}
    assert any(r.startswith("lmms-eval") for r in project["optional-dependencies"]["lmms"])


@pytest.mark.slow
def test_lmms_eval_pope_task_offline_through_our_generator(tmp_path):
    extra = lmms_pythonpath()
    if extra is None:
        pytest.skip(f"lmms-eval is not installed here nor in {LMMS_PATH}: `make lmms` installs it")
    ckpt = write_checkpoint(str(tmp_path))
    paths = [ROOT, extra, write_entry_point(str(tmp_path / "entry"))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    n = 6
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "lmms_local_task.py"),
                    str(tmp_path / "task"), str(n)], env=env, check=True)
    out = tmp_path / "lmms_out"
    proc = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "sgv_jax",
         "--model_args", f"checkpoint={ckpt},devices=1", "--tasks", "pope_local",
         "--include_path", str(tmp_path / "task" / "tasks"), "--batch_size", "4",
         "--gen_kwargs", f"max_new_tokens={MAX_NEW_TOKENS}", "--output_path", str(out),
         "--log_samples"], check=False, env=env, capture_output=True, text=True,
        cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [results_file] = glob.glob(str(out / "**" / "*_results.json"), recursive=True)
    [samples_file] = glob.glob(str(out / "**" / "*_samples_pope_local.jsonl"), recursive=True)
    with open(results_file) as f:
        metrics = json.load(f)["results"]["pope_local"]
    with open(samples_file) as f:
        samples = sorted((json.loads(line) for line in f), key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(n))
    # Batch 1, built here: LLaVA-1.5's prompt around the task's text, the same image.
    generator = Generator.from_checkpoint(ckpt, mesh=local_mesh(devices=1))
    with open(tmp_path / "task" / "data" / "questions.json") as f:
        questions = json.load(f)
    for i, sample in enumerate(samples):
        assert sample["input"] == questions[i] + POPE_SUFFIX
        text = prompts.conversation_prompt(DEFAULT_IMAGE_TOKEN + "\n" + sample["input"])
        pixels = generator.preprocess(load_image(str(tmp_path / "task" / "data" / f"{i}.png")))
        [want] = generator.complete([text], [pixels], max_new_tokens=MAX_NEW_TOKENS)
        assert sample["filtered_resps"] == want.text, i
    # lmms-eval's own scoring of those answers (exact match after lower/strip).
    right = [s["filtered_resps"].lower().strip() == s["target"] for s in samples]
    assert metrics["pope_accuracy,none"] == sum(right) / n
