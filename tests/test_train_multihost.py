"""Two local processes x 4 simulated CPU devices on one (data=2, fsdp=4) mesh give the losses of
one process with 8 devices."""

import os
import socket
import subprocess
import sys

import pytest

from sgv_jax.train.metrics import read_metrics
from tests.train_helpers import DEMO_DATA

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(workdir, extra=()):
    return [sys.executable, os.path.join(REPO, "launch", "train.py"),
            "--config", os.path.join(REPO, "configs", "pretrain.py") + ":demo",
            "--workdir", str(workdir), f"--config.max_steps={STEPS}", "--config.log_every=1",
            "--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.per_device_batch_size=4",
            "--config.eval_every=1000", f"--config.data.demo_dir={DEMO_DATA}", *extra]


def env(devices):
    e = dict(os.environ)
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e["JAX_PLATFORMS"] = "cpu"
    e["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    e["PYTHONPATH"] = REPO
    return e


@pytest.mark.slow
def test_two_processes_match_one_process_on_eight_devices(tmp_path):
    single = tmp_path / "runs" / "single"
    subprocess.run(command(single), env=env(8), check=True, timeout=600, capture_output=True)

    multi = tmp_path / "runs" / "multi"
    port = free_port()
    procs = [subprocess.Popen(command(multi, [f"--coordinator=127.0.0.1:{port}",
                                              "--num_processes=2", f"--process_id={i}"]),
                              env=env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    outputs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]

    want = {r["step"]: r["loss"] for r in read_metrics(str(single)) if "loss" in r}
    got = {r["step"]: r["loss"] for r in read_metrics(str(multi)) if "loss" in r}
    assert sorted(want) == list(range(1, STEPS + 1)) and want.keys() == got.keys()
    for step, loss in want.items():
        # Same samples per global batch, gathered in another order: equal up to summation order.
        assert abs(loss - got[step]) <= 1e-5 * abs(loss), (step, want, got)
    assert os.path.isdir(multi / "sgv")  # one collective export
