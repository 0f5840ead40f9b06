"""One training step: sgv-jax (`make_train_step` under `jit`) vs HF transformers'
`LlavaForConditionalGeneration` (PyTorch CPU, eager attention), same run, same weights.

Both sides get the same ~100M-parameter LLaVA config (CLIP-like tower 384 x 6 layers, 224 px /
patch 14 = 256 image tokens; LLaMA-like decoder 768 x K layers, 12 heads, MLP 2048, vocab 32000;
mlp2x_gelu projector), the same batch (B samples of L tokens: BOS, the 256 image tokens, text;
loss on the text), fp32 everywhere, and the same stage-2-like trainable set: projector + whole
decoder, vision tower frozen. AdamW (0.9, 0.999, 1e-8), weight decay 0, constant lr.
HF weights are converted with `from_llava_hf_state_dict`, so the first losses must agree.

`vision_feature_layer` is -1 (not LLaVA's -2) so both sides run every tower block: HF's CLIP
always runs all of them, ours stops at the selected one, which would favour JAX by one block.

Per side: samples/s (median over the timed steps) and the fraction of this machine's matmul
roof *measured in the same run* (benchmarks/roofs.py) at the step's own largest shapes: the
tower's MLP, the decoder's MLP and the lm_head, each timed in isolation under XLA and under
torch, in fp32 and bf16. The step's roof is the rate at which the step's analytic matmul FLOPs
would run if each part ran at its own shape's isolated rate. FLOP counts:
  * the analytic matmul count (same number for both sides: the fair comparison), and for JAX
    also XLA's own `cost_analysis()` count of the compiled step;
  * for JAX, the FLOPs it actually runs: the analytic count less the lm_head of the loss slices
    it skips because no row has a label there (the image's positions; HF projects them all);
  * and, for reference, the naive 6 * N_trained * tokens.
`--dtype bfloat16` runs both sides in bf16 (JAX: bf16 compute, fp32 master weights and Adam,
the linears' bf16 dots run by YNNPACK's bf16 kernels, `sgv_jax/models/nn.py` `dot_general`;
torch: `torch.autocast("cpu", bfloat16)`, which reaches AVX512-BF16 or AMX through oneDNN where
the CPU has them) and quotes the bf16 roofs. Prints numbers and the load average; asserts nothing.

    .venv/bin/python benchmarks/bench_train.py [--steps 5] [--batch 2] [--seq 512] [--layers 8]
                                               [--dtype float32|bfloat16] [--remat none]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
import optax
import roofs

from sgv_jax import allocator, xla_cpu
from sgv_jax.constants import IGNORE_INDEX
from sgv_jax.convert.llava_hf import from_llava_hf_state_dict
from sgv_jax.models import llava
from sgv_jax.models.config import VLMConfig
from sgv_jax.train import optim
from sgv_jax.train import step as step_lib

LR, BETAS, EPS, WD = 2e-5, (0.9, 0.999), 1e-8, 0.0
TRAINABLE = ("projector", "language_model")


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# ---------------------------------------------------------------- model and batch

def hf_config(layers: int, seq: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                              num_attention_heads=6, patch_size=14, image_size=224,
                              projection_dim=384)
    text = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                       num_hidden_layers=layers, num_attention_heads=12, num_key_value_heads=12,
                       rms_norm_eps=1e-5, max_position_embeddings=max(2048, seq), pad_token_id=0,
                       bos_token_id=1, eos_token_id=2)
    # The image token must be a real vocabulary row for HF's embedding lookup: use the last one.
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=31999,
                       vision_feature_layer=-1, vision_feature_select_strategy="default")


def build_hf(config, seed: int):
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: perturb everything
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.train()  # no dropout in CLIP/LLaMA, but it is the training path
    return model


def make_batch(cfg: VLMConfig, batch: int, seq: int, seed: int) -> dict:
    """Full-length samples: BOS, the image run, random text; labels on the text only."""
    rng = np.random.default_rng(seed)
    n_img = cfg.num_image_tokens
    if seq <= n_img + 2:
        raise SystemExit(f"--seq {seq} must exceed the {n_img} image tokens + 2")
    ids = rng.integers(3, cfg.image_token_id, size=(batch, seq)).astype(np.int32)
    ids[:, 0] = 1
    ids[:, 1:1 + n_img] = cfg.image_token_id
    labels = ids.copy()
    labels[:, :1 + n_img] = IGNORE_INDEX
    size = cfg.vision.image_size
    pixels = rng.standard_normal((batch, size, size, 3)).astype(np.float32)  # NHWC
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels,
            "pixel_values": pixels}


# ---------------------------------------------------------------- FLOP counts

def analytic_flops(cfg: VLMConfig, batch: int, seq: int) -> dict:
    """Matmul FLOPs (2 per multiply-add) of one step, as both eager implementations run it:
    full (un-skipped) causal attention score matrices, frozen tower forward only, no gradient
    into the tower's output, decoder and lm_head forward + both backward matmuls (the trainable
    embedding table needs the decoder's input gradient). Elementwise ops, norms, softmax,
    the embedding gather and the optimizer are not counted (they are O(N), not O(N * tokens))."""
    v, t = cfg.vision, cfg.text
    dv, fv, pv = v.hidden_size, v.intermediate_size, v.num_patches
    sv = pv + 1  # CLS
    tv = batch * sv
    vis = 2 * batch * pv * (3 * v.patch_size ** 2) * dv  # patch embedding (a conv = a matmul)
    vis += cfg.vision_layers_used * (2 * tv * (4 * dv * dv + 2 * dv * fv)  # qkvo + mlp
                                     + 4 * batch * sv * sv * dv)  # QK^T and PV
    d, f, voc = t.hidden_size, t.intermediate_size, t.vocab_size
    q_dim = t.num_heads * t.resolved_head_dim
    kv_dim = t.num_kv_heads * t.resolved_head_dim
    n_img = cfg.num_image_tokens
    # projector: linear_1 (dv->d) needs only its weight grad (4x), linear_2 (d->d) also the
    # input grad (6x).
    proj = batch * n_img * (4 * dv * d + 6 * d * d)
    toks = batch * seq
    block_w = d * (q_dim + 2 * kv_dim) + q_dim * d + 3 * d * f
    lm = t.num_layers * (6 * toks * block_w + 3 * 4 * batch * seq * seq * q_dim)
    head = 6 * toks * d * voc
    total = vis + proj + lm + head
    return {"vision (fwd)": vis, "projector": proj, "decoder": lm, "lm_head": head,
            "total": total}


def skipped_head_flops(cfg: VLMConfig, batch_np: dict) -> tuple[float, int]:
    """(lm_head FLOPs the JAX step does not run, slices skipped): `LlavaModel.loss_terms` skips
    each LOSS_CHUNK-position slice whose shifted targets are ignored in every row (here the
    image's). HF projects every position, so the analytic count keeps them."""
    labels = batch_np["labels"]
    batch, seq = labels.shape
    chunk = llava.LOSS_CHUNK
    if seq <= chunk or seq % chunk:
        return 0.0, 0
    targets = np.concatenate([labels[:, 1:], np.full((batch, 1), IGNORE_INDEX)], axis=1)
    skipped = int((targets.reshape(batch, seq // chunk, chunk) == IGNORE_INDEX).all(axis=(0, 2)).sum())
    return 6.0 * batch * chunk * cfg.text.hidden_size * cfg.text.vocab_size * skipped, skipped


def naive_flops(n_trained: int, batch: int, seq: int) -> float:
    return 6.0 * n_trained * batch * seq


def xla_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - backends may not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


# ---------------------------------------------------------------- the two steps

def jax_side(cfg: VLMConfig, params_np: dict, batch_np: dict, steps: int, warmup: int,
             dump_hlo: str | None, dtype: str, remat: str):
    schedule = optax.constant_schedule(LR)
    optimizer = optim.make_optimizer(schedule, BETAS[0], BETAS[1], EPS, WD, None)
    params = jax.tree.map(jnp.asarray, params_np)
    trainable, frozen = optim.split_trainable(params, optim.TrainableSet(TRAINABLE))
    frozen = jax.tree.map(lambda x: x.astype(dtype), frozen)  # as the trainer holds it
    state = {"step": jnp.int32(0), "params": trainable,
             "opt_state": jax.jit(optimizer.init)(trainable)}
    batch = {k: jnp.asarray(v[None]) for k, v in batch_np.items()}  # A = 1 micro-batch
    fn = step_lib.make_train_step(cfg, optimizer, schedule, jnp.dtype(dtype), remat,
                                  freeze_pad_row=True)
    jitted = jax.jit(fn, donate_argnums=(0,),
                     compiler_options=xla_cpu.options_for(jax.default_backend(),
                                                           xla_cpu.train_options(dtype)))
    t0 = time.perf_counter()
    compiled = jitted.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - t0
    if dump_hlo:
        with open(dump_hlo, "w") as fh:
            fh.write(compiled.as_text())
    losses, times, cpu = [], [], []
    for i in range(warmup + steps):
        c0, t0 = time.process_time(), time.perf_counter()
        state, metrics = compiled(state, frozen, batch)
        jax.block_until_ready((state, metrics))
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        losses.append(float(metrics["loss"]))
        if i >= warmup:
            times.append(dt)
            cpu.append(dc)
    n_trained = sum(x.size for x in jax.tree.leaves(trainable))
    return {"times": times, "cpu": cpu, "losses": losses, "compile_s": compile_s,
            "xla_flops": xla_flops(compiled), "n_trained": n_trained}


def torch_side(model, batch_np: dict, steps: int, warmup: int, dtype: str):
    import contextlib

    import torch

    def autocast():
        if dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=roofs._torch_dtype(dtype))

    model.model.vision_tower.requires_grad_(False)  # transformers >= 4.52 layout
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    ids = torch.from_numpy(batch_np["input_ids"].astype(np.int64))
    mask = torch.from_numpy(batch_np["attention_mask"].astype(np.int64))
    labels = torch.from_numpy(batch_np["labels"].astype(np.int64))
    pixels = torch.from_numpy(np.ascontiguousarray(batch_np["pixel_values"].transpose(0, 3, 1, 2)))
    losses, times, cpu = [], [], []
    for i in range(warmup + steps):
        c0, t0 = time.process_time(), time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels)
        out.loss.backward()
        opt.step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        losses.append(float(out.loss.detach()))
        if i >= warmup:
            times.append(dt)
            cpu.append(dc)
    return {"times": times, "cpu": cpu, "losses": losses, "n_trained": sum(p.numel() for p in params)}


def step_shapes(cfg: VLMConfig, batch: int, seq: int) -> dict:
    """The step's largest matmul of each part, [m, k] @ [k, n], keyed like `analytic_flops`."""
    v, t = cfg.vision, cfg.text
    tokens = batch * seq
    return {"vision (fwd)": (batch * (v.num_patches + 1), v.hidden_size, v.intermediate_size),
            "decoder": (tokens, t.hidden_size, t.intermediate_size),
            "lm_head": (tokens, t.hidden_size, t.vocab_size)}


def step_roof(counts: dict, part_roofs: dict, side: str) -> float:
    """GFLOP/s of the whole step if each part ran at its own shape's isolated matmul rate
    (the projector at the decoder's): total FLOPs / sum of each part's time at its roof."""
    part_of = {"vision (fwd)": "vision (fwd)", "projector": "decoder", "decoder": "decoder",
               "lm_head": "lm_head"}
    seconds = sum(counts[k] / (getattr(part_roofs[part_of[k]], side) * 1e9) for k in part_of)
    return counts["total"] / seconds / 1e9


# ---------------------------------------------------------------- main

def main(argv=None) -> None:
    from configs.common import base, demo

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per side (after compile)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512, help="tokens per sample, incl. 256 image ones")
    ap.add_argument("--layers", type=int, default=8, help="decoder layers")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="compute dtype of both sides (master weights and Adam stay fp32)")
    ap.add_argument("--remat", default=demo(base()).remat,
                    help="JAX remat policy (default: the CPU demo config's)")
    ap.add_argument("--only", choices=("jax", "torch"), help="time one side only")
    ap.add_argument("--dump-hlo", help="write the compiled JAX step's HLO text here")
    args = ap.parse_args(argv)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
          f"{os.cpu_count()} CPUs; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; allocator "
          f"{allocator.in_use()} (both sides)")
    hf_cfg = hf_config(args.layers, args.seq)
    model = build_hf(hf_cfg, seed=0)
    cfg, params_np = from_llava_hf_state_dict(model.state_dict(), hf_cfg.to_dict())
    n_total = sum(p.numel() for p in model.parameters())
    batch_np = make_batch(cfg, args.batch, args.seq, seed=0)
    print(f"model: {n_total / 1e6:.1f}M params (vision {cfg.vision.hidden_size}x"
          f"{cfg.vision.num_layers}, {cfg.num_image_tokens} image tokens; decoder "
          f"{cfg.text.hidden_size}x{cfg.text.num_layers}, mlp {cfg.text.intermediate_size}, "
          f"vocab {cfg.text.vocab_size}); batch {args.batch} x {args.seq} tokens, "
          f"{args.dtype} compute, AdamW, vision tower frozen, JAX remat {args.remat!r}")

    counts = analytic_flops(cfg, args.batch, args.seq)
    tokens = args.batch * args.seq
    print(f"{load()}  (before the roofs)")
    # This machine's matmul roofs, measured now at the step's own shapes (roofs.py).
    part_roofs = {dt: {part: roofs.matmul_gflops(*shape, dt)
                       for part, shape in step_shapes(cfg, args.batch, args.seq).items()}
                  for dt in ("float32", "bfloat16")}
    for dt, by_part in part_roofs.items():
        for part, roof in by_part.items():
            print(f"{roof.line()}  ({part})")
        print(f"roof step {dt} (each part at its shape's rate): XLA "
              f"{step_roof(counts, by_part, 'xla'):.1f} GFLOP/s, torch "
              f"{step_roof(counts, by_part, 'torch'):.1f} GFLOP/s")
    print(f"{load()}  (before timing)")

    res = {}
    if args.only != "torch":
        res["jax"] = jax_side(cfg, params_np, batch_np, args.steps, args.warmup, args.dump_hlo,
                              args.dtype, args.remat)
        print(f"jax   done, compile {res['jax']['compile_s']:.1f} s, {load()}")
    if args.only != "jax":
        res["torch"] = torch_side(model, batch_np, args.steps, args.warmup, args.dtype)
        print(f"torch done, {load()}")

    n_trained = next(iter(res.values()))["n_trained"]
    if "jax" in res and "torch" in res:
        assert res["jax"]["n_trained"] == res["torch"]["n_trained"], "trainable sets differ"
        lj, lt = res["jax"]["losses"], res["torch"]["losses"]
        print(f"sanity: initial loss jax {lj[0]:.6f} torch {lt[0]:.6f} |diff| "
              f"{abs(lj[0] - lt[0]):.2e}; after 1 update jax {lj[1]:.6f} torch {lt[1]:.6f} "
              f"|diff| {abs(lj[1] - lt[1]):.2e}")

    naive = naive_flops(n_trained, args.batch, args.seq)
    skipped_flops, skipped = skipped_head_flops(cfg, batch_np)
    print("FLOPs per step (matmul, analytic): " + ", ".join(
        f"{k} {v / 1e9:.1f} G" for k, v in counts.items()))
    print(f"FLOPs per step: 6*N*tokens = 6 * {n_trained / 1e6:.2f}M trained * {tokens} = "
          f"{naive / 1e9:.1f} G (counts the embedding table as a matmul, skips the tower and "
          f"attention)")
    if "jax" in res and res["jax"]["xla_flops"]:
        xf = res["jax"]["xla_flops"]
        print(f"FLOPs per step: XLA cost_analysis of the compiled JAX step = {xf / 1e9:.1f} G "
              f"({xf / counts['total']:.3f} x analytic: XLA counts each loop body once, so "
              f"scanned decoder layers once; on CPU in bf16 they are unrolled, "
              f"models/nn.py scan_layers)")

    roof = {side: step_roof(counts, part_roofs[args.dtype], "xla" if side == "jax" else "torch")
            for side in ("jax", "torch")}
    label = {"jax": f"XLA {args.dtype}", "torch": f"torch {args.dtype}"}
    rates, fractions = {}, {}
    for side, r in res.items():
        med = statistics.median(r["times"])
        rates[side] = args.batch / med
        gf = counts["total"] / med / 1e9
        fractions[side] = gf / roof[side]
        line = (f"{side:5s}: {rates[side]:.3f} samples/s  step median {med:.2f} s "
                f"(min {min(r['times']):.2f}, max {max(r['times']):.2f}, n={len(r['times'])})  "
                f"{gf:.1f} GFLOP/s = {fractions[side]:.1%} of the {roof[side]:.0f} GFLOP/s "
                f"{label[side]} roof measured at the step's shapes (analytic count)")
        if side == "jax" and r["xla_flops"]:
            gx = r["xla_flops"] / med / 1e9
            line += f", {gx / roof[side]:.1%} (XLA count)"
        line += f"; 6N count {naive / med / 1e9 / roof[side]:.1%}"
        print(line)
        if side == "jax" and skipped:
            ge = (counts["total"] - skipped_flops) / med / 1e9
            print(f"       by the FLOPs it runs (the analytic count less {skipped} loss slices' "
                  f"lm_head, {skipped_flops / 1e9:.1f} G, skipped as unlabelled): {ge:.1f} "
                  f"GFLOP/s = {ge / roof[side]:.1%} of the roof")
        print(f"       CPU time per step (all threads) median {statistics.median(r['cpu']):.2f} s "
              f"(load-robust-ish: ideal = {args.threads} x an unloaded wall time; includes spinning)")
    if len(rates) == 2:
        print(f"ratio jax/torch: {rates['jax'] / rates['torch']:.2f}x  (goal >= 1.5x; jax at "
              f"{fractions['jax']:.1%} of the {roof['jax']:.0f} GFLOP/s {label['jax']} roof, "
              f"torch at {fractions['torch']:.1%} of the {roof['torch']:.0f} GFLOP/s "
              f"{label['torch']} roof, both measured in this run); by CPU time per step "
              f"{statistics.median(res['torch']['cpu']) / statistics.median(res['jax']['cpu']):.2f}x")
    print(f"{load()}  (after timing)")


if __name__ == "__main__":
    allocator.reexec_under_tcmalloc()  # before any work: see sgv_jax/allocator.py
    main()
