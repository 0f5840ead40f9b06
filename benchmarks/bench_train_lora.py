"""One LoRA training step: sgv-jax (adapters on the seven decoder linears + projector trained,
base frozen) vs HF transformers + PEFT (`get_peft_model`, same r / alpha / targets, projector
trained), same run, same base weights, same batch as bench_train.py (its ~100M LLaVA, fp32,
AdamW, constant lr). Dropout is 0 on both sides so the first losses (B = 0: the base model's)
must agree. Each side runs in its own process so its peak RSS (ru_maxrss) is its own.

    .venv/bin/python benchmarks/bench_train_lora.py [--steps 5] [--batch 2] [--seq 512] \
        [--layers 8] [--rank 128] [--alpha 256]

Prints samples/s per side, peak RSS per side, the load average and `ratio jax/torch: N.NNx`;
asserts nothing. The CPU may be shared: read the ratio beside the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from sgv_jax import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build(args):
    from bench_train import build_hf, hf_config, make_batch

    from sgv_jax.convert.llava_hf import from_llava_hf_state_dict

    hf_cfg = hf_config(args.layers, args.seq)
    model = build_hf(hf_cfg, seed=0)
    cfg, params = from_llava_hf_state_dict(model.state_dict(), hf_cfg.to_dict())
    return model, cfg, params, make_batch(cfg, args.batch, args.seq, seed=0)


def jax_side(args) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from bench_train import BETAS, EPS, LR, WD

    from sgv_jax import xla_cpu
    from sgv_jax.models import lora
    from sgv_jax.models.config import LoraConfig
    from sgv_jax.train import optim
    from sgv_jax.train import step as step_lib

    model, cfg, params_np, batch_np = build(args)
    del model
    cfg = cfg.replace(lora=LoraConfig(args.rank, args.alpha, 0.0, TARGETS))
    params = lora.with_fresh_adapters(jax.tree.map(jnp.asarray, params_np), cfg,
                                      jax.random.PRNGKey(0))
    schedule = optax.constant_schedule(LR)
    optimizer = optim.make_optimizer(schedule, BETAS[0], BETAS[1], EPS, WD, None)
    trainable, frozen = optim.split_trainable(params, optim.TrainableSet(("projector", "adapters")))
    state = {"step": jnp.int32(0), "params": trainable,
             "opt_state": jax.jit(optimizer.init)(trainable)}
    batch = {k: jnp.asarray(v[None]) for k, v in batch_np.items()}
    fn = step_lib.make_train_step(cfg, optimizer, schedule, jnp.float32, "none",
                                  freeze_pad_row=True)
    options = xla_cpu.options_for(jax.default_backend(), xla_cpu.LARGE_DOTS)
    compiled = jax.jit(fn, donate_argnums=(0,), compiler_options=options).lower(
        state, frozen, batch).compile()
    losses, times = [], []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, frozen, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
        losses.append(float(metrics["loss"]))
    return {"times": times[args.warmup:], "losses": losses,
            "n_trained": int(sum(x.size for x in jax.tree.leaves(trainable)))}


def torch_side(args) -> dict:
    import peft
    import torch
    from bench_train import BETAS, EPS, LR, WD

    torch.set_num_threads(args.threads)
    model, _, _, batch_np = build(args)
    config = peft.LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                             target_modules=r".*language_model.*\.(" + "|".join(TARGETS) + ")")
    model = peft.get_peft_model(model, config)
    model.base_model.model.model.multi_modal_projector.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    ids = torch.from_numpy(batch_np["input_ids"].astype(np.int64))
    mask = torch.from_numpy(batch_np["attention_mask"].astype(np.int64))
    labels = torch.from_numpy(batch_np["labels"].astype(np.int64))
    pixels = torch.from_numpy(np.ascontiguousarray(batch_np["pixel_values"].transpose(0, 3, 1, 2)))
    losses, times = [], []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels)
        out.loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(out.loss.detach()))
    return {"times": times[args.warmup:], "losses": losses,
            "n_trained": int(sum(p.numel() for p in params))}


def run_side(side: str, argv: list[str]) -> dict:
    """One side in a fresh process: its own peak RSS."""
    out = subprocess.run([sys.executable, __file__, "--side", side, *argv], check=True,
                         capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per side")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512, help="tokens per sample, incl. 256 image ones")
    ap.add_argument("--layers", type=int, default=8, help="decoder layers")
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--alpha", type=float, default=256.0)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--side", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.side:
        result = (jax_side if args.side == "jax" else torch_side)(args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    passed = list(argv if argv is not None else sys.argv[1:])
    print(f"LoRA r {args.rank} alpha {args.alpha:g} on {', '.join(TARGETS)} + projector; "
          f"batch {args.batch} x {args.seq}, {args.layers} decoder layers, fp32")
    print("load {:.2f} {:.2f} {:.2f} (before)".format(*os.getloadavg()))
    res = {side: run_side(side, passed) for side in ("jax", "torch")}
    print("load {:.2f} {:.2f} {:.2f} (after)".format(*os.getloadavg()))
    lj, lt = res["jax"]["losses"], res["torch"]["losses"]
    print(f"sanity: trained params jax {res['jax']['n_trained']:,} torch "
          f"{res['torch']['n_trained']:,}; initial loss jax {lj[0]:.6f} torch {lt[0]:.6f}")
    rates = {}
    for side, r in res.items():
        med = statistics.median(r["times"])
        rates[side] = args.batch / med
        print(f"{side:5s}: {rates[side]:.3f} samples/s  step median {med:.2f} s "
              f"(min {min(r['times']):.2f}, max {max(r['times']):.2f}, n={len(r['times'])})  "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"ratio jax/torch: {rates['jax'] / rates['torch']:.2f}x  (peak RSS jax/torch "
          f"{res['jax']['peak_rss_mb'] / res['torch']['peak_rss_mb']:.2f}x)")


if __name__ == "__main__":
    allocator.reexec_under_tcmalloc()  # before any work: see sgv_jax/allocator.py
    main()
