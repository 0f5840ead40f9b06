"""Peak RSS of streamed conversion vs the largest source shard (issue 3 goal: ≤ shard + 1 GiB).

Builds a synthetic llava-hf checkpoint (a LLaMA-shaped decoder of ≥ 2 GB in fp16, tiny CLIP,
sharded safetensors + index) under /tmp, then runs `launch/convert.py` in a child process for
llava-hf → sgv and sgv → llava-hf, and reports each child's peak RSS
(`getrusage(RUSAGE_CHILDREN).ru_maxrss`) against the largest shard. A child that only imports the
converter gives the interpreter + library baseline. Prints numbers; asserts nothing.

    .venv/bin/python benchmarks/bench_convert.py [--layers 20] [--shard-mb 512] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from sgv_jax.convert import formats
from sgv_jax.convert.hf_config import vlm_to_llava_hf
from sgv_jax.convert.safetensors_out import ShardedWriter
from sgv_jax.models.config import TextConfig, VisionConfig, VLMConfig
from sgv_jax.models.storage import storage_shapes

GIB = 1 << 30


def synthetic_config(layers: int) -> VLMConfig:
    """LLaMA shapes at half the 7B width (hidden 2048, MLP 5504), llava-hf vocab 32064 (§1.7)."""
    return VLMConfig(
        vision=VisionConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                            patch_size=14, image_size=56),
        text=TextConfig(vocab_size=32064, hidden_size=2048, intermediate_size=5504,
                        num_layers=layers, num_heads=16, num_kv_heads=16),
        image_token_id=32000)


def write_source(folder: str, cfg: VLMConfig, shard_bytes: int) -> None:
    """Sharded fp16 safetensors, written one tensor at a time (the builder stays small too).
    Tensors are stored block by block, as `save_pretrained` orders a state dict."""
    os.makedirs(folder)
    shapes = storage_shapes(cfg)  # block by block
    by_path = {path: (key, tf) for key, (path, tf) in
               formats.key_table(cfg, formats.LLAVA_HF_OLD).items()}
    plan = [(by_path[path][0], by_path[path][1].theirs_shape(shape), "float16")
            for path, shape in shapes.items()]
    writer = ShardedWriter(folder, plan, shard_bytes)
    rng = np.random.default_rng(0)
    for key, shape, _ in plan:
        writer.write(key, (0.02 * rng.standard_normal(shape, np.float32)).astype(np.float16))
    writer.close()
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({**vlm_to_llava_hf(cfg, cfg.image_token_id), "dtype": "float16"}, f)


def peak_rss_of(cmd: list[str]) -> tuple[int, float]:
    """(peak RSS bytes, seconds) of `cmd`, measured by a fresh intermediary so that earlier
    children do not count (ru_maxrss of RUSAGE_CHILDREN is a maximum over all of them)."""
    probe = ("import resource, subprocess, sys, time; t = time.time(); "
             "r = subprocess.run(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.time() - t, "
             "r.returncode)")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True,
                         cwd=REPO, check=False)
    *_, last = out.stdout.strip().splitlines() or ["0 0 1"]
    kib, seconds, rc = last.split()
    if rc != "0":
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return int(kib) * 1024, float(seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--shard-mb", type=int, default=512)
    p.add_argument("--keep", action="store_true", help="keep the files under /tmp")
    args = p.parse_args()

    root = tempfile.mkdtemp(prefix="sgv_bench_convert_", dir="/tmp")
    try:
        cfg = synthetic_config(args.layers)
        src, ckpt, out = (os.path.join(root, n) for n in ("llava_hf", "sgv", "export"))
        t = time.time()
        write_source(src, cfg, args.shard_mb << 20)
        shards = [os.path.getsize(os.path.join(src, n)) for n in os.listdir(src)
                  if n.endswith(".safetensors")]
        print(f"source: {sum(shards) / GIB:.2f} GiB in {len(shards)} shards, largest "
              f"{max(shards) / GIB:.3f} GiB (built in {time.time() - t:.0f} s)")
        convert = [sys.executable, os.path.join(REPO, "launch", "convert.py"), "--quiet"]
        baseline, _ = peak_rss_of([sys.executable, "-c",
                                   "import sgv_jax.convert.importers, sgv_jax.convert.exporters"])
        rows = [("import only (baseline)", baseline, 0.0)]
        rows.append(("llava-hf → sgv", *peak_rss_of(
            convert + ["--from", "llava-hf", "--src", src, "--to", "sgv", "--dst", ckpt])))
        rows.append(("sgv → llava-hf", *peak_rss_of(
            convert + ["--from", "sgv", "--src", ckpt, "--to", "llava-hf", "--dst", out,
                       "--max-shard-gb", str(args.shard_mb / 1024)])))
        largest = max(shards)
        print(f"{'step':<24}{'peak RSS GiB':>14}{'− largest shard':>17}{'seconds':>9}")
        for name, rss, seconds in rows:
            print(f"{name:<24}{rss / GIB:>14.3f}{(rss - largest) / GIB:>17.3f}{seconds:>9.1f}")
        worst = max(r[1] for r in rows)
        print(f"goal peak ≤ largest shard + 1 GiB = {(largest + GIB) / GIB:.3f} GiB: "
              f"{'met' if worst <= largest + GIB else 'NOT met'} (worst {worst / GIB:.3f} GiB)")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
