"""Does a config fit, and how long will a step take? Compiles the real train step for a mesh of
simulated devices on this machine; nothing is allocated.

    python launch/plan.py --config configs/pretrain.py --mesh fsdp=16 --per-device-batch 16 --chip v5p
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `make libtpu` puts the TPU compiler here (kept out of the venv so that ordinary runs do not
# probe for TPUs); with it, TPU targets compile with XLA's real TPU pipeline on this machine.
if os.path.isdir(os.path.join(REPO, ".libtpu")):
    sys.path.append(os.path.join(REPO, ".libtpu"))


def parse_mesh(text: str) -> dict:
    mesh = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name not in mesh or not value.lstrip("-").isdigit():
            raise SystemExit(f"--mesh {text!r}: use e.g. fsdp=16 or data=2,fsdp=8,tensor=2")
        mesh[name] = int(value)
    return mesh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file[:variant]")
    parser.add_argument("--mesh", default="fsdp=16")
    parser.add_argument("--per-device-batch", type=int, default=None)
    parser.add_argument("--global-batch", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--remat", choices=["none", "full", "dots"], default=None)
    parser.add_argument("--chip", choices=["v5p", "v4", "v5e", "a100", "h100"], default="v5p")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    args = parser.parse_args()
    mesh = parse_mesh(args.mesh)
    devices = mesh["data"] * mesh["fsdp"] * mesh["tensor"]
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={devices}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # libtpu compiles offline

    from sgv_jax import plan
    from sgv_jax.train.config_file import load_config_file

    config = load_config_file(args.config)
    with config.unlocked():
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = (mesh["data"], mesh["fsdp"],
                                                                   mesh["tensor"])
        if args.per_device_batch:
            config.per_device_batch_size = args.per_device_batch
        if args.global_batch:
            config.global_batch_size = args.global_batch
        if args.max_length:
            config.data.max_length = args.max_length
        if args.remat:
            config.remat = args.remat
    from sgv_jax.models.config import get_preset

    target = plan.tpu_devices(args.chip, devices)
    where = (f"{devices} x {args.chip} (XLA's TPU compiler, no TPU needed)" if target is not None
             else f"{devices} simulated CPU devices (temporaries are the CPU compiler's, which "
                  "ignores remat: install libtpu for TPU-exact numbers)")
    print(f"compiling the {config.model} train step for {where}...", flush=True)
    try:
        result, _ = plan.plan(config, get_preset(config.model), devices=target)
    except plan.DoesNotFit as e:
        # The compiler's own report names the largest buffers (shape, op, source line).
        print("does NOT fit:\n" + "\n".join(str(e).splitlines()[:60]))
        print(f"per-device total: {e.required / 1e9:.2f} GB (temporaries alone; "
              f"{e.available / 1e9:.2f} GB available)")
        raise SystemExit(1) from None
    print(plan.report(result, args.chip, args.mfu))


if __name__ == "__main__":
    main()
