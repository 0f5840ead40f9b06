"""The ShareGPT4V-7B stage-2 training step on an accelerator, at the model's full widths and a
reduced depth: MFU against the chip table's peak (sgv_jax/chips.py) and against a bf16 matmul
measured in the same run.

The model is `sharegpt4v_7b` (CLIP ViT-L/14-336 tower, 1024 wide; LLaMA-2-7B decoder, 4096
wide, 32 heads, MLP 11008, vocab 32000) with `--vision-layers` tower blocks and `--layers`
decoder layers. The step is the trainer's (`make_train_step`): bf16 compute, fp32 master weights
and AdamW, projector + decoder trained, tower frozen, one micro-batch of `--batch` full-length
samples of `--seq` tokens (BOS, 576 image tokens, text; loss on the text).

FLOPs are bench_train.py's analytic matmul count (full causal score matrices, tower forward
only), the usual basis of MFU: recomputation under remat is not counted. MFU = those FLOPs /
median step time / the chip's dense bf16 peak.

Each `--variants` entry is compiled and timed in turn, from the same initial weights (so their
first losses must agree): `attention+remat[+whole_mlp]`, where attention is `cudnn` (cuDNN's
fused kernel, models/layers.py FUSED_ATTENTION) or `xla` (the query-blocked einsum path), remat
is a policy of models/nn.py, and `whole_mlp` lifts llama.MLP_BUDGET_BYTES (the MLP's sequence
slices, each recomputed in the backward pass, that keep a CPU's or small chip's memory down).

    python benchmarks/bench_train_chip.py [--layers 8] [--vision-layers 6] [--batch 8]
        [--seq 2048] [--steps 5] [--variants cudnn+dots+whole_mlp,cudnn+full,xla+full]
    python benchmarks/bench_train_chip.py --tiny   # a smoke run on a CPU (demo-sized model)

Prints numbers, the device, and peak memory; asserts nothing. XLA's own FLOP count is not
printed: on a GPU, cost analysis does not see inside cuBLAS / cuDNN custom calls. Figures
measured on an H200: BUILD.md §12.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import optax
import roofs
from bench_train import analytic_flops

from sgv_jax import chips
from sgv_jax.constants import IGNORE_INDEX
from sgv_jax.models import get_preset, layers, llama, llava
from sgv_jax.models.config import VLMConfig
from sgv_jax.models.nn import check_remat
from sgv_jax.train import optim
from sgv_jax.train import step as step_lib

TRAINABLE = ("projector", "language_model")  # configs/finetune.py's stage-2 set
DEFAULT_MLP_BUDGET = llama.MLP_BUDGET_BYTES


def model_config(args) -> VLMConfig:
    cfg = get_preset("demo" if args.tiny else "sharegpt4v_7b")
    if args.tiny:
        return cfg
    return cfg.replace(vision=dataclasses.replace(cfg.vision, num_layers=args.vision_layers),
                       text=dataclasses.replace(cfg.text, num_layers=args.layers))


def make_batch(cfg: VLMConfig, batch: int, seq: int) -> dict:
    """One micro-batch ([1, B, ...]) of full-length samples: BOS, the image run, random text."""
    rng = np.random.default_rng(0)
    n_img = cfg.num_image_tokens
    if seq <= n_img + 2:
        raise SystemExit(f"--seq {seq} must exceed the {n_img} image tokens + 2")
    ids = rng.integers(3, cfg.text.vocab_size, size=(batch, seq)).astype(np.int32)
    ids[:, 0] = 1
    ids[:, 1:1 + n_img] = cfg.image_token_id
    labels = np.where(np.arange(seq) > n_img, ids, IGNORE_INDEX).astype(np.int32)
    size = cfg.vision.image_size
    pixels = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    micro = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels,
             "pixel_values": pixels}
    return {k: jnp.asarray(v[None]) for k, v in micro.items()}


def parse_variant(text: str) -> dict:
    attention, remat, *flags = text.split("+")
    if attention not in ("cudnn", "xla") or any(f != "whole_mlp" for f in flags):
        raise SystemExit(f"variant {text!r}: use cudnn|xla + a remat policy [+whole_mlp]")
    check_remat(remat)
    return {"attention": attention, "remat": remat, "whole_mlp": "whole_mlp" in flags}


def run_variant(cfg: VLMConfig, batch: dict, variant: dict, steps: int, warmup: int) -> dict:
    layers.FUSED_ATTENTION = variant["attention"] == "cudnn"
    llama.MLP_BUDGET_BYTES = float("inf") if variant["whole_mlp"] else DEFAULT_MLP_BUDGET
    schedule = optax.constant_schedule(2e-5)
    optimizer = optim.make_optimizer(schedule, 0.9, 0.999, 1e-8, 0.0, None)
    params = llava.init(cfg, jax.random.key(0))
    trainable, frozen = optim.split_trainable(params, optim.TrainableSet(TRAINABLE))
    frozen = jax.tree.map(lambda x: x.astype(jnp.bfloat16), frozen)  # as the trainer holds it
    state = {"step": jnp.int32(0), "params": trainable,
             "opt_state": jax.jit(optimizer.init)(trainable)}
    fn = step_lib.make_train_step(cfg, optimizer, schedule, jnp.bfloat16, variant["remat"],
                                  freeze_pad_row=True)
    t0 = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=(0,)).lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - t0
    losses, times = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, frozen, batch)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(metrics["loss"]))
    stats = jax.devices()[0].memory_stats() or {}
    return {"seconds": statistics.median(times), "losses": losses, "compile_s": compile_s,
            "peak_bytes": stats.get("peak_bytes_in_use")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=8, help="decoder layers (the 7B has 32)")
    ap.add_argument("--vision-layers", type=int, default=6, help="tower blocks (CLIP-L has 24)")
    ap.add_argument("--batch", type=int, default=8, help="samples per step (stage 2's per-device 8)")
    ap.add_argument("--seq", type=int, default=2048, help="tokens per sample, incl. the image's")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    ap.add_argument("--variants", default="cudnn+dots+whole_mlp,cudnn+full,xla+full",
                    help="comma-separated attention+remat[+whole_mlp] entries")
    ap.add_argument("--tiny", action="store_true", help="demo-sized model (a CPU smoke run)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.batch, args.seq = min(args.batch, 2), min(args.seq, 64)
    variants = [parse_variant(v) for v in args.variants.split(",")]

    device = jax.devices()[0]
    cfg = model_config(args)
    peak, peak_what = chips.peak_flops_per_device(device)
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}; "
          "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    print(f"model: tower {cfg.vision.num_layers} x {cfg.vision.hidden_size}, decoder "
          f"{cfg.text.num_layers} x {cfg.text.hidden_size} (MLP {cfg.text.intermediate_size}, "
          f"vocab {cfg.text.vocab_size}); batch {args.batch} x {args.seq} tokens, bf16 compute",
          flush=True)
    print(f"peak: {peak / 1e12:,.1f} TFLOP/s ({peak_what})", flush=True)
    square = 8192 if device.platform != "cpu" else 1024
    measured = {
        f"bf16 matmul {square}^3": roofs.xla_matmul_gflops(square, square, square, "bfloat16"),
        "bf16 matmul at the decoder MLP's shape": roofs.xla_matmul_gflops(
            args.batch * args.seq, cfg.text.hidden_size, cfg.text.intermediate_size, "bfloat16"),
    }
    for what, gflops in measured.items():
        print(f"roof {what}: {gflops / 1e3:,.1f} TFLOP/s = {gflops * 1e9 / peak:.1%} of peak",
              flush=True)
    roof = max(measured.values()) * 1e9
    counts = analytic_flops(cfg, args.batch, args.seq)
    print("analytic step FLOPs: " + ", ".join(f"{k} {v / 1e12:,.2f}T" for k, v in counts.items()),
          flush=True)
    batch = make_batch(cfg, args.batch, args.seq)
    for text, variant in zip(args.variants.split(","), variants):
        try:
            r = run_variant(cfg, batch, variant, args.steps, args.warmup)
        except Exception as error:  # noqa: BLE001 - one failed variant must not hide the rest
            print(f"variant {text}: failed: {type(error).__name__}: "
                  f"{str(error).splitlines()[0] if str(error) else ''}", flush=True)
            continue
        rate = counts["total"] / r["seconds"]
        memory = f"{r['peak_bytes'] / 2**30:.1f} GiB" if r["peak_bytes"] else "n/a"
        print(f"variant {text}: step {r['seconds'] * 1e3:,.1f} ms (median of {args.steps}), "
              f"{args.batch * args.seq / r['seconds']:,.0f} tok/s, {rate / 1e12:,.1f} TFLOP/s "
              f"analytic = MFU {rate / peak:.1%} of peak, {rate / roof:.1%} of the measured "
              f"matmul roof; compile "
              f"{r['compile_s']:.0f} s; peak memory {memory}; losses "
              + " ".join(f"{x:.4f}" for x in r["losses"]), flush=True)
    print("load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)


if __name__ == "__main__":
    main()
