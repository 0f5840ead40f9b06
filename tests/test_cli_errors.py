"""Every `launch/` command fails like a finished tool: for each kind of expected failure the real
command, run as a user runs it, exits non-zero with a short message on stderr that names the
file / record / field, prints no traceback and leaves no temporary files behind."""

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.test_generate_helpers import write_checkpoint, write_images
from tests.train_helpers import DEMO_DATA, REPO, demo_data


def launch(script, *args, cwd=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", script), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
                          check=False)


def assert_fails_clearly(result, *names, status=1):
    """Non-zero status, no traceback, at most a few lines, every name in the message."""
    assert result.returncode == status, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    message = result.stderr.strip()
    assert message.startswith("error:") and len(message.splitlines()) <= 4, message
    for name in names:
        assert str(name) in message, (name, message)
    return message


def train_args(tmp_path, *overrides, config="pretrain.py:demo"):
    return ["--config", os.path.join(REPO, "configs", config), "--workdir", tmp_path / "run",
            f"--config.data.demo_dir={tmp_path / 'demo_data'}", *overrides]


# --- train.py: config overrides are checked before any work (no demo data is generated) ------


def test_train_unknown_override_names_the_nearest_field(tmp_path):
    result = launch("train.py", *train_args(tmp_path, "--config.optim.lrr=1"))
    assert_fails_clearly(result, "--config.optim.lrr", "did you mean optim.lr?", status=2)
    assert not (tmp_path / "demo_data").exists() and not (tmp_path / "run").exists()


def test_train_bad_value_is_reported_before_the_demo_data_is_made(tmp_path):
    result = launch("train.py", *train_args(tmp_path, "--config.data.template=v2"))
    assert_fails_clearly(result, "data.template 'v2'")
    assert not (tmp_path / "demo_data").exists() and not (tmp_path / "run").exists()


def test_train_missing_init_from_is_named(tmp_path):
    missing = tmp_path / "pretrain" / "sgv"
    result = launch("train.py", *train_args(tmp_path, f"--config.init_from={missing}",
                                            config="finetune.py:demo"))
    assert_fails_clearly(result, f"init_from {missing} does not exist")
    assert not (tmp_path / "demo_data").exists()


def test_train_missing_config_file_and_unparsable_value(tmp_path):
    nope = os.path.join(REPO, "configs", "nope.py")
    result = launch("train.py", "--config", nope, "--workdir", tmp_path / "run")
    assert_fails_clearly(result, f"no file {nope}", status=2)
    result = launch("train.py", *train_args(tmp_path, "--config.max_steps=many"))
    assert_fails_clearly(result, "--config.max_steps=many", status=2)


# --- plan.py ---------------------------------------------------------------------------------


def test_plan_takes_config_overrides_and_rejects_a_typo(tmp_path):
    config = os.path.join(REPO, "configs", "pretrain.py:demo")
    result = launch("plan.py", "--config", config, "--config.data.max_lenght=8")
    assert_fails_clearly(result, "--config.data.max_lenght", "did you mean data.max_length?",
                         status=2)
    result = launch("plan.py", "--config", config, "--mesh", "fsdp=two")
    assert_fails_clearly(result, "--mesh 'fsdp=two'")


# --- data.py ---------------------------------------------------------------------------------


def test_data_check_malformed_json_names_the_record_and_leaves_no_temp_dir(tmp_path):
    data = tmp_path / "records.json"
    data.write_text('[{"id": "a", "conversations": []},\n {"id": "b", "conversations": [}]')
    result = launch("data.py", "check", "--data", data, "--image-folder", tmp_path)
    assert_fails_clearly(result, str(data), "record 1 is not valid JSON")
    assert sorted(os.listdir(tmp_path)) == ["records.json"]  # no records.json.sgvidx.tmp-PID


def test_data_missing_file_and_missing_tokenizer(tmp_path):
    result = launch("data.py", "check", "--data", tmp_path / "none.json", "--image-folder",
                    tmp_path)
    assert_fails_clearly(result, str(tmp_path / "none.json"))
    records = demo_data()["finetune_eval"]
    result = launch("data.py", "inspect", "--data", records, "--image-folder", DEMO_DATA,
                    "--tokenizer", tmp_path / "no_tokenizer")
    assert_fails_clearly(result, str(tmp_path / "no_tokenizer"))


# --- convert.py ------------------------------------------------------------------------------


def test_convert_names_a_missing_source_and_a_training_workdir(tmp_path):
    result = launch("convert.py", "--from", "sgv", "--src", tmp_path / "nope", "--to", "llava-hf",
                    "--dst", tmp_path / "out", "--quiet")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"--src {tmp_path / 'nope'} does not exist" in result.stderr
    workdir = tmp_path / "workdir"
    (workdir / "sgv").mkdir(parents=True)
    (workdir / "sgv" / "config.json").write_text("{}")
    result = launch("convert.py", "--from", "sgv", "--src", workdir, "--to", "llava", "--dst",
                    tmp_path / "out", "--quiet")
    assert f"exported to {workdir}/sgv" in result.stderr and result.returncode == 1
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(f"{tmp_path}/out.partial")


# --- generate.py -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_errors")
    ckpt = write_checkpoint(str(folder))
    paths = write_images(str(folder / "images"), 2, corrupt=(1,))
    return {"ckpt": ckpt, "good": paths[0], "corrupt": paths[1], "folder": folder}


def test_generate_nonexistent_checkpoint_and_training_workdir(tmp_path):
    result = launch("generate.py", "run", "--checkpoint", tmp_path / "nope" / "sgv",
                    "--prompt", "hi")
    assert_fails_clearly(result, f"checkpoint {tmp_path / 'nope' / 'sgv'} does not exist")
    (tmp_path / "w" / "sgv").mkdir(parents=True)
    (tmp_path / "w" / "sgv" / "config.json").write_text("{}")
    (tmp_path / "w" / "checkpoints").mkdir()
    result = launch("generate.py", "run", "--checkpoint", tmp_path / "w", "--prompt", "hi")
    assert_fails_clearly(result, "training workdir", f"{tmp_path / 'w'}/sgv: pass that")


@pytest.mark.slow
def test_generate_run_with_a_corrupt_image_names_the_file(model):
    result = launch("generate.py", "run", "--checkpoint", model["ckpt"], "--image",
                    model["corrupt"], "--prompt", "What is it?", "--max-new-tokens", "2")
    assert_fails_clearly(result, f"image {model['corrupt']} cannot be read")


@pytest.mark.slow
def test_caption_into_an_output_made_with_another_prompt_is_refused(model):
    out = model["folder"] / "caps.jsonl"
    out.write_text(json.dumps({"id": "part0/img_000", "image": "part0/img_000.png",
                               "prompt": "Describe it.", "caption": "a thing"}) + "\n")
    result = launch("generate.py", "caption", "--checkpoint", model["ckpt"], "--images",
                    model["folder"] / "images", "--out", out, "--prompt", "What is it?",
                    "--devices", "1", "--max-new-tokens", "2")
    assert_fails_clearly(result, str(out), "'Describe it.'", "'What is it?'")
    assert len(out.read_text().splitlines()) == 1


@pytest.mark.slow
def test_ctrl_c_in_chat_quits_without_a_traceback(model):
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "launch", "generate.py"), "chat",
                             "--checkpoint", model["ckpt"], "--image", model["good"]],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    banner = proc.stdout.readline()  # the model is loaded and the prompt is waiting
    assert "'exit', Ctrl-D or Ctrl-C quits" in banner
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
