"""Ctrl-C and SIGTERM stop a training run cleanly: the step finishes, a checkpoint is saved, the
exit status is 128 + the signal, and the same command resumes with the losses of a run that was
never interrupted. With two processes, a signal to one host stops both after the same step."""

import os
import signal
import subprocess
import sys
import time

import pytest

from sgv_jax.train.metrics import read_metrics
from tests.test_train_multihost import env, free_port
from tests.train_helpers import DEMO_DATA, REPO

SMALL = ["--config.global_batch_size=8", "--config.per_device_batch_size=8",
         "--config.log_every=1", "--config.checkpoint_every=1000", "--config.eval_every=1000",
         f"--config.data.demo_dir={DEMO_DATA}"]


def command(workdir, max_steps, extra=()):
    return [sys.executable, os.path.join(REPO, "launch", "train.py"),
            "--config", os.path.join(REPO, "configs", "pretrain.py") + ":demo",
            "--workdir", str(workdir), f"--config.max_steps={max_steps}", *SMALL, *extra]


def wait_for_step(workdir, step, procs, timeout=300):
    """Until process 0 has logged `step` (the run is between checkpoints)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(r.get("step", 0) >= step for r in read_metrics(str(workdir))):
            return
        for p in procs:
            assert p.poll() is None, p.communicate()[0]
        time.sleep(0.2)
    raise TimeoutError(f"no step {step} in {workdir}/metrics.jsonl after {timeout} s")


def saved_steps(workdir):
    return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(str(workdir)) if "loss" in r}


@pytest.mark.slow
def test_ctrl_c_saves_between_checkpoints_and_the_rerun_resumes_identically(tmp_path):
    workdir = tmp_path / "interrupted"
    proc = subprocess.Popen(command(workdir, 2000), env=env(1), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for_step(workdir, 3, [proc])
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out
    [stopped] = saved_steps(workdir)  # checkpoint_every=1000: only the Ctrl-C save
    assert 3 <= stopped < 2000
    assert f"Ctrl-C: saved step {stopped} to" in out and f"resume from step {stopped}" in out

    end = stopped + 3
    rerun = subprocess.run(command(workdir, end), env=env(1), text=True, capture_output=True,
                           timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from step {stopped}" in rerun.stdout

    straight = tmp_path / "straight"
    subprocess.run(command(straight, end), env=env(1), check=True, capture_output=True,
                   timeout=300)
    want, got = losses(straight), losses(workdir)
    assert sorted(want) == sorted(got) == list(range(1, end + 1))
    assert got == want  # exact float equality at every step, before and after the resume


@pytest.mark.slow
def test_sigterm_to_one_host_stops_both_hosts_after_the_same_step(tmp_path):
    workdir = tmp_path / "two_hosts"
    port = free_port()
    procs = [subprocess.Popen(
        command(workdir, 2000, ["--config.mesh.data=2", "--config.per_device_batch_size=4",
                                f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                                f"--process_id={i}"]),
        env=env(1), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i in range(2)]
    wait_for_step(workdir, 3, procs)
    procs[1].send_signal(signal.SIGTERM)  # host 1 only: host 0 learns it through the all-reduce
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 128 + signal.SIGTERM, out[-3000:]
    [stopped] = saved_steps(workdir)  # one checkpoint, the same step for both hosts
    assert 3 <= stopped < 2000
    data_states = sorted(os.listdir(workdir / "checkpoints" / "data"))
    assert data_states == [f"{stopped}.p0.json", f"{stopped}.p1.json"]
    assert f"SIGTERM: saved step {stopped} to" in outputs[0]
    assert max(losses(workdir)) == stopped
