r"""Does a config fit, and how long will a step take? Compiles the real train step for a mesh of
(simulated) devices on this machine; nothing is allocated.

examples:
  python launch/plan.py --config configs/pretrain.py --mesh fsdp=16 --per-device-batch 16 --chip v5p
  python launch/plan.py --config configs/finetune.py --mesh data=2,fsdp=8 --chip v4 \
      --config.data.max_length=1024 --config.remat=dots

Takes the same --config.FIELD=VALUE overrides as launch/train.py. With the TPU compiler
(`make libtpu`), v4/v5p/v5e plans are compiled exactly as on the pod, remat and fusion included,
and a step that exceeds HBM is reported as not fitting. Without it the step is compiled by
XLA:CPU, which ignores remat and overstates memory: the figures are then marked as overstated
and no fits / does-not-fit verdict is given.
"""

import os
import shutil
import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

from sgv_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `make libtpu` puts the TPU compiler here (kept out of the venv so that ordinary runs do not
# probe for TPUs); with it, TPU targets compile with XLA's real TPU pipeline on this machine.
if os.path.isdir(os.path.join(REPO, ".libtpu")):
    sys.path.append(os.path.join(REPO, ".libtpu"))

CHIPS = ["v5p", "v4", "v5e", "v6e", "a100", "h100", "h200"]  # sgv_jax/chips.py (not imported: jax must start after XLA_FLAGS)
config_flags.DEFINE_config_file("config", None, "Run config file[:variant].", lock_config=True)
flags.DEFINE_string("mesh", "fsdp=16", "Mesh axes, e.g. fsdp=16 or data=2,fsdp=8,tensor=2.")
flags.DEFINE_integer("per-device-batch", None, "Shorthand for --config.per_device_batch_size.")
flags.DEFINE_integer("global-batch", None, "Shorthand for --config.global_batch_size.")
flags.DEFINE_integer("max-length", None, "Shorthand for --config.data.max_length.")
flags.DEFINE_enum("remat", None, ["none", "full", "dots", "full_offload", "dots_offload"],
                  "Shorthand for --config.remat (the *_offload ones keep saved values in host memory).")
flags.DEFINE_enum("chip", "v5p", CHIPS, "Target chip (HBM size, peak FLOP/s).")
flags.DEFINE_float("mfu", 0.4, "Assumed model FLOPs utilisation for the step-time estimate.")
flags.DEFINE_integer("buffers", 10, "List this many of the largest temporaries with the JAX op "
                     "each comes from (XLA's buffer-assignment dump); 0: none.")
flags.DEFINE_bool("debug", False, "On an error, show the full traceback.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def parse_mesh(text: str) -> dict:
    mesh = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name not in mesh or not value.isdigit() or int(value) < 1:
            raise cli.UserError(f"--mesh {text!r}: use e.g. fsdp=16 or data=2,fsdp=8,tensor=2")
        mesh[name] = int(value)
    return mesh


def main(argv) -> int:
    del argv

    def run() -> int:
        mesh = parse_mesh(FLAGS.mesh)
        devices = mesh["data"] * mesh["fsdp"] * mesh["tensor"]
        # Before jax is imported: as many simulated CPU devices as the mesh needs.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={devices}")
        dump_dir = tempfile.mkdtemp(prefix="sgv-plan-") if FLAGS.buffers else None
        if dump_dir:  # the compiler writes its buffer assignment here
            os.environ["XLA_FLAGS"] += f" --xla_dump_to={dump_dir}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # libtpu compiles offline
        # Compile-only: several planners on one machine must not fight over libtpu's lockfile.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        from sgv_jax import plan

        config = FLAGS.config
        with config.unlocked():
            config.mesh.data, config.mesh.fsdp, config.mesh.tensor = (
                mesh["data"], mesh["fsdp"], mesh["tensor"])
            for flag, field in (("per-device-batch", "per_device_batch_size"),
                                ("global-batch", "global_batch_size"),
                                ("max-length", "data.max_length"), ("remat", "remat")):
                if FLAGS[flag].value is not None:
                    node, _, leaf = field.rpartition(".")
                    (config[node] if node else config)[leaf] = FLAGS[flag].value
        target = plan.tpu_devices(FLAGS.chip, devices)
        where = (f"{devices} x {FLAGS.chip} (XLA's TPU compiler, no TPU needed)" if target
                 else f"{devices} simulated CPU devices (XLA:CPU; `make libtpu` for TPU-exact "
                      "numbers)")
        print(f"compiling the {config.model} train step for {where}...", flush=True)
        try:
            result, _ = plan.plan(config, plan.planned_model(config), devices=target)
        except plan.DoesNotFit as e:
            # The compiler's own report names the largest buffers (shape, op, source line).
            print("does NOT fit:\n" + "\n".join(str(e).splitlines()[:60]))
            print(plan.refusal_report(e, FLAGS.chip))
            return 1
        print(plan.report(result, FLAGS.chip, FLAGS.mfu))
        if dump_dir:
            from sgv_jax.plan_buffers import format_buffers, top_buffers

            print(format_buffers(top_buffers(dump_dir, count=FLAGS.buffers)))
            shutil.rmtree(dump_dir, ignore_errors=True)
        return 0

    return cli.run_guarded(run, FLAGS.debug)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_absl_flags)
