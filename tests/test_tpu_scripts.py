"""launch/tpu/*.sh: shellcheck-clean, --help works, --dry-run prints the expected gcloud commands
(and never calls gcloud: a fake one that fails loudly comes first on PATH), bad input fails
with a message naming it."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

TPU = Path(__file__).resolve().parent.parent / "launch" / "tpu"
SCRIPTS = sorted(p.name for p in TPU.glob("*.sh") if p.name != "common.sh")


@pytest.fixture
def env(tmp_path):
    """A clean environment: no SGV_* from the caller, a fake gcloud that records calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "gcloud-called"
    fake = bin_dir / "gcloud"
    fake.write_text(f'#!/bin/sh\necho "FAKE GCLOUD CALLED: $*" >&2\ntouch {marker}\nexit 99\n')
    fake.chmod(0o755)
    e = {k: v for k, v in os.environ.items() if not k.startswith("SGV_")}
    e["PATH"] = f"{bin_dir}:{e['PATH']}"
    e["USER"] = "tester"
    yield e
    assert not marker.exists(), "a script called gcloud"


def sh(script, *args, env, stdin=subprocess.DEVNULL):
    return subprocess.run([str(TPU / script), *args], env=env, stdin=stdin,
                          capture_output=True, text=True, timeout=60)


def dry(script, *args, env):
    r = sh(script, "--dry-run", *args, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install -y shellcheck); "
                    "the TPU scripts' lint check cannot run")
    files = sorted(str(p) for p in TPU.glob("*.sh"))
    r = subprocess.run(["shellcheck", "-x", *files], cwd=TPU, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_scripts_present_and_executable():
    assert set(SCRIPTS) >= {"create.sh", "install.sh", "copy.sh", "pull.sh", "exec.sh",
                            "train.sh", "logs.sh", "status.sh", "stop.sh", "delete.sh"}
    for name in SCRIPTS:
        assert os.access(TPU / name, os.X_OK), name
        assert "set -euo pipefail" in (TPU / name).read_text(), name


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, env):
    r = sh(script, "--help", env=env)
    assert r.returncode == 0, r.stderr
    assert "Usage:" in r.stdout and "--dry-run" in r.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_flag_fails_naming_it(script, env):
    r = sh(script, "--dry-run", "--no-such-flag", env=env)
    assert r.returncode != 0
    assert "unknown flag: --no-such-flag" in r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_value_fails_naming_it(script, env):
    r = sh(script, "--dry-run", "--zone", env=env)
    assert r.returncode != 0
    assert "--zone needs a value" in r.stderr
    r = sh(script, "--dry-run", "--name=", env=env)
    assert r.returncode != 0 and "--name needs a value" in r.stderr


def test_create_direct(env):
    out = dry("create.sh", "--name", "pod1", "--zone", "us-east5-a", "--accelerator", "v5p-32",
              "--project", "proj", "--spot", env=env)
    assert out.splitlines() == [
        "gcloud compute tpus tpu-vm create pod1 --zone=us-east5-a --project=proj "
        "--accelerator-type=v5p-32 --version=v2-alpha-tpuv5 --spot"]


def test_create_from_env_defaults(env):
    out = dry("create.sh", env={**env, "SGV_TPU_NAME": "t", "SGV_ZONE": "z1",
                                "SGV_ACCELERATOR": "v4-32", "SGV_RUNTIME": "my-rt"})
    assert out.strip() == ("gcloud compute tpus tpu-vm create t --zone=z1 "
                           "--accelerator-type=v4-32 --version=my-rt")
    out = dry("create.sh", env=env)  # defaults: v4-8 in us-central2-b
    assert "--zone=us-central2-b --accelerator-type=v4-8 --version=tpu-ubuntu2204-base" in out
    assert "--project" not in out


def test_create_queued(env):
    out = dry("create.sh", "--queued", "--spot", "--accelerator=v4-32", "--", "--network=n1",
              env=env)
    assert out.strip() == (
        "gcloud compute tpus queued-resources create sgv-tpu --zone=us-central2-b "
        "--node-id=sgv-tpu --accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base "
        "--spot --network=n1")
    out = dry("create.sh", "--best-effort", env=env)  # implies --queued; alpha-only flag
    assert out.startswith("gcloud alpha compute tpus queued-resources create sgv-tpu ")
    assert out.strip().endswith("--best-effort")
    r = sh("create.sh", "--dry-run", "--spot", "--best-effort", env=env)
    assert r.returncode != 0 and "--spot and --best-effort" in r.stderr
    r = sh("create.sh", "--dry-run", "--accelerator", "x9-8", env=env)
    assert r.returncode != 0 and "--runtime" in r.stderr


def test_install(env):
    out = dry("install.sh", "--zone", "z2", "--python", "3.12", env=env).splitlines()
    assert out[0].startswith("gcloud compute tpus tpu-vm scp ")
    assert "requirements.txt sgv-tpu:sgv-requirements.txt --zone=z2 --worker=all" in out[0]
    text = "\n".join(out)
    assert "gcloud compute tpus tpu-vm ssh sgv-tpu --zone=z2 --worker=all --command=" in text
    assert "uv venv -q --allow-existing --python 3.12 ~/sgv-venv" in text
    pin = [ln for ln in (TPU.parent.parent / "requirements.txt").read_text().splitlines()
           if ln.startswith("jax==")][0]
    assert f"jax[tpu]=={pin[len('jax=='):]}" in text


def test_copy(env, tmp_path):
    tarball = tmp_path / "code.tgz"
    out = dry("copy.sh", "--tarball", str(tarball), env=env).splitlines()
    assert "ls-files -z | tar " in out[0] and f"-czf {tarball} -T -" in out[0]
    assert out[1] == (f"gcloud compute tpus tpu-vm scp {tarball} sgv-tpu:sgv-code.tgz "
                      "--zone=us-central2-b --worker=all")
    assert out[2].startswith("gcloud compute tpus tpu-vm ssh sgv-tpu --zone=us-central2-b "
                             "--worker=all --command=")
    assert "tar -xzf sgv-code.tgz -C ~/sgv-jax" in "\n".join(out)
    assert not tarball.exists()  # dry run builds nothing


def test_pull(env):
    out = dry("pull.sh", "--repo", "https://example.com/sgv-jax.git", "--ref", "v1.0", env=env)
    assert "--worker=all" in out
    assert "git clone -q https://example.com/sgv-jax.git ~/sgv-jax" in out
    assert "fetch -q origin v1.0" in out and "checkout -q --force FETCH_HEAD" in out
    r = sh("pull.sh", "--dry-run", env=env)
    assert r.returncode != 0 and "--repo is required" in r.stderr


def test_exec(env):
    out = dry("exec.sh", "--worker", "0", "--", "python", "launch/convert.py", "--dst",
              "/data/my ckpt", env=env)
    assert "--worker=0 --command=" in out
    assert "cd ~/sgv-jax" in out and "export PATH=~/sgv-venv/bin:$PATH" in out
    # the argument with a space survives two shells: quoted locally, then remotely
    assert "python launch/convert.py --dst '\\''/data/my ckpt'\\''" in out
    r = sh("exec.sh", "--dry-run", env=env)
    assert r.returncode != 0 and "no command" in r.stderr
    r = sh("exec.sh", "--dry-run", "--worker", "x", "--", "true", env=env)
    assert r.returncode != 0 and "--worker 'x'" in r.stderr


def test_train(env):
    out = dry("train.sh", "--config", "configs/pretrain.py", "--workdir", "gs://b/runs/pt",
              "--zone", "us-east5-a", "--config.max_steps=100", env=env)
    assert out.startswith("gcloud compute tpus tpu-vm ssh sgv-tpu --zone=us-east5-a "
                          "--worker=all --command=")
    assert ("nohup ~/sgv-venv/bin/python launch/train.py --config configs/pretrain.py "
            "--workdir gs://b/runs/pt --config.max_steps=100 "
            "> ~/sgv-logs/pretrain.$(hostname).log 2>&1 < /dev/null &") in out
    assert "cd ~/sgv-jax" in out
    assert "echo $! > ~/sgv-logs/train.pid" in out
    assert "ln -sfn ~/sgv-logs/pretrain.$(hostname).log ~/sgv-logs/latest" in out


def test_train_default_workdir_from_bucket(env):
    out = dry("train.sh", "--config", "configs/finetune.py", "--", "--config.init_from=/x",
              env={**env, "SGV_BUCKET": "bkt"})
    assert ("launch/train.py --config configs/finetune.py --workdir gs://bkt/sgv-runs/finetune "
            "--config.init_from=/x > ~/sgv-logs/finetune.$(hostname).log") in out
    out = dry("train.sh", "--config", "configs/pretrain.py:demo", "--bucket", "b2",
              "--run", "demo1", env=env)
    assert "--config configs/pretrain.py:demo --workdir gs://b2/sgv-runs/demo1 " in out
    assert "~/sgv-logs/demo1.$(hostname).log" in out


def test_train_bad_input(env):
    r = sh("train.sh", "--dry-run", "--workdir", "gs://b/x", env=env)
    assert r.returncode != 0 and "--config is required" in r.stderr
    r = sh("train.sh", "--dry-run", "--config", "configs/nope.py", "--workdir", "w", env=env)
    assert r.returncode != 0 and "configs/nope.py" in r.stderr
    r = sh("train.sh", "--dry-run", "--config", "configs/pretrain.py", env=env)
    assert r.returncode != 0 and "--workdir is required" in r.stderr
    r = sh("train.sh", "--dry-run", "--config", "configs/pretrain.py", "--workdir", "runs/x",
           env=env)
    assert r.returncode == 0 and "shared gs://" in r.stderr  # warned, not refused


def test_logs(env, tmp_path):
    out = dry("logs.sh", env=env)
    assert out.strip() == ("gcloud compute tpus tpu-vm ssh sgv-tpu --zone=us-central2-b "
                           "--worker=0 --command='tail -n 100 ~/sgv-logs/latest'")
    out = dry("logs.sh", "--worker", "all", "--follow", "--run", "pretrain", "--lines", "5",
              env=env)
    assert "--worker=all" in out
    assert "tail -n 5 -F ~/sgv-logs/pretrain.$(hostname).log" in out
    out = dry("logs.sh", "--fetch", str(tmp_path / "logs"), env=env).splitlines()
    assert out == [f"mkdir -p {tmp_path / 'logs'}",
                   f"gcloud compute tpus tpu-vm scp 'sgv-tpu:sgv-logs/*.log' {tmp_path / 'logs'} "
                   "--zone=us-central2-b --worker=all"]
    assert not (tmp_path / "logs").exists()


def test_status_and_stop(env):
    out = dry("status.sh", "--queued", "--project", "p", env=env).splitlines()
    assert out[0].startswith("gcloud compute tpus queued-resources describe sgv-tpu "
                             "--zone=us-central2-b --project=p")
    assert out[1].startswith("gcloud compute tpus tpu-vm describe sgv-tpu ")
    assert "--worker=all" in out[2] and "~/sgv-logs/train.pid" in out[2]
    assert len(dry("status.sh", "--no-workers", env=env).splitlines()) == 1
    out = dry("stop.sh", "--wait", "5", env=env)
    assert "--worker=all" in out and 'kill -TERM "$pid"' in out and "seq 5" in out


def test_delete(env):
    out = dry("delete.sh", "--name", "pod1", "--zone", "z", env=env)
    assert out.strip() == "gcloud compute tpus tpu-vm delete pod1 --zone=z --quiet"
    out = dry("delete.sh", "--queued", env=env)
    assert out.strip() == ("gcloud compute tpus queued-resources delete sgv-tpu "
                           "--zone=us-central2-b --force --quiet")
    # Not a dry run, no --yes, no terminal: refuses before calling gcloud.
    r = sh("delete.sh", env=env)
    assert r.returncode != 0 and "--yes" in r.stderr


def test_printed_commands_are_shell_words(env):
    """--dry-run output is copy-pastable: bash parses it back into the same words, and the
    remote command run by a shell gives back the user's arguments unchanged."""
    out = dry("exec.sh", "--", "echo", "it's a \"test\"", "$HOME", env=env).strip()
    r = subprocess.run(["bash", "-c", 'gcloud() { printf "%s\\0" "$@"; }; eval "$1"', "_", out],
                       capture_output=True, text=True, env=env)
    words = r.stdout.split("\0")[:-1]
    assert words[:6] == ["compute", "tpus", "tpu-vm", "ssh", "sgv-tpu", "--zone=us-central2-b"]
    remote = [w for w in words if w.startswith("--command=")][0][len("--command="):]
    last = remote.splitlines()[-1]
    r = subprocess.run(["bash", "-c", last], capture_output=True, text=True)
    assert r.stdout == 'it\'s a "test" $HOME\n'


def test_readme_sequence_dry_runs(env):
    """Every script command in the README's end-to-end block runs with --dry-run."""
    text = (TPU / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    for line in block.splitlines():
        if line.startswith("export "):
            for kv in line.split()[1:]:
                key, value = kv.split("=", 1)
                env = {**env, key: value}
        elif line.startswith("launch/tpu/"):
            script, *args = line.split()
            r = subprocess.run([str(TPU.parent.parent / script), "--dry-run", *args], env=env,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 0, f"{line}\n{r.stderr}"
            assert r.stdout.startswith(("gcloud ", "git ", "mkdir ")), line
            assert "--zone=us-east5-a" in r.stdout, line
