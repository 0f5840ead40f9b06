"""The training loop: restore → iterate → log → checkpoint. All effects live here; the step
itself is the pure function in step.py.

Resume order: WORKDIR's latest checkpoint > `config.init_from` (an sgv checkpoint) > random
init from `config.seed`. Re-running the same command with the same workdir resumes exactly.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from sgv_jax import chips
from sgv_jax.checkpoint import TrainCheckpointer
from sgv_jax.data.batching import COUNTED
from sgv_jax.models import llava
from sgv_jax.paths import resolve
from sgv_jax.stop import AgreedStop, StopRequest, signal_name
from sgv_jax.train import optim, preflight, setup
from sgv_jax.train.metrics import MetricWriter


class NonFiniteLoss(RuntimeError):
    pass


def initial_state(run: setup.Run, ckpt: TrainCheckpointer):
    """(state, frozen, data_state or None, where it came from)."""
    c, layout = run.config, run.layout
    latest = ckpt.latest_step()
    if latest is not None:
        state, data_state = ckpt.restore(latest, layout.abstract_state)
        frozen = ckpt.restore_frozen(layout.abstract_frozen)
        return state, frozen, data_state, f"resumed from step {latest}"
    if c.init_from:
        from sgv_jax.checkpoint_sgv import load_sgv

        file_cfg, params = load_sgv(c.init_from, shardings=layout.param_shardings(),
                                    dtype=np.float32)
        source = f"initialised from {c.init_from}"
        if run.model.lora is not None and file_cfg.lora != run.model.lora:
            from sgv_jax.models import lora

            params = lora.with_fresh_adapters(params, run.model, jax.random.PRNGKey(c.seed),
                                              layout.mesh)
            source += f" + fresh LoRA adapters (rank {run.model.lora.rank}, seed {c.seed})"
    else:
        params = llava.init(run.model, jax.random.PRNGKey(c.seed), layout.mesh)
        source = f"random init (seed {c.seed})"
    state, frozen = layout.split(params)
    ckpt.save_frozen(frozen)
    return state, frozen, None, source


def evaluate(run: setup.Run, trainable: dict, frozen: dict) -> dict[str, float]:
    """Token-mean loss on the first `eval_batches` batches of the held-out file."""
    data = setup.make_data(run, run.config.data.eval_file, seed=0, num_epochs=1,
                           batch_size=run.layout.micro_batch)
    total, count = 0.0, 0
    try:
        for i, host_batch in enumerate(data):
            if i >= run.config.eval_batches:
                break
            batch = run.layout.global_batch(host_batch, accumulated=False)
            t, n = run.layout.eval_step(trainable, frozen, batch)
            total, count = total + float(t), count + int(n)
    finally:
        data.close()
    return {"eval_loss": total / max(count, 1), "eval_tokens": count}


def train(config, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) one training stage; returns the last logged metrics, with
    `stopped_by` (the signal number) when SIGTERM or Ctrl-C stopped it early."""
    preflight.check_run_config(config)  # before any work: a typo fails in a second
    if config.data.demo:
        from sgv_jax.demo.data import resolve_demo_data

        resolve_demo_data(config, workdir)
    setup.check_config(config)
    if not config.data.tokenizer and config.init_from:
        with config.unlocked():
            config.data.tokenizer = os.path.join(config.init_from, "tokenizer")
    num_records = setup.count_records(config)
    run = setup.plan_run(config, workdir, num_records)
    is_main = jax.process_index() == 0
    leftovers = preflight.leftover_files(workdir)
    resolve(workdir).mkdir(parents=True, exist_ok=True)
    if is_main:
        (resolve(workdir) / "config.json").write_text(json.dumps(
            {"run": config.to_dict(), "model": run.model.to_dict()}, indent=1, default=str))

    layout = run.layout
    ckpt = TrainCheckpointer(workdir, config.keep_checkpoints)
    state, frozen, data_state, source = initial_state(run, ckpt)
    data = setup.make_data(run, config.data.train_file, config.seed, None, config.global_batch_size)
    if data_state is not None:
        data.set_state(data_state)

    first = layout.global_batch(next(data), accumulated=True)
    compiled = layout.train_step.lower(state, frozen, first).compile()
    flops = layout.model_flops_per_step() / layout.mesh.size  # per device
    peak, peak_source = ((config.peak_flops_per_device, "config.peak_flops_per_device")
                         if config.peak_flops_per_device else chips.peak_flops_per_device())

    writer = MetricWriter(workdir, enabled=is_main)
    start = int(state["step"])
    if is_main:
        if start == 0 and leftovers:
            print(f"{workdir} holds files of an earlier run ({', '.join(leftovers)}) but no "
                  "checkpoint to resume from: starting from step 0", flush=True)
        print(f"{source}; steps {start}→{run.stop_step} of a {run.total_steps}-step schedule; "
              f"{layout.accum_steps} micro-batch(es) of {layout.micro_batch} per step; "
              f"{flops / 1e9:.2f} GFLOP/step/device; MFU against {peak / 1e9:.0f} GFLOP/s "
              f"({peak_source})", flush=True)
    stop_request = StopRequest(announce=is_main)
    agreed = AgreedStop(stop_request)
    stopped_by = 0  # the signal all hosts agreed to stop on
    bar = tqdm(total=run.stop_step, initial=start, disable=not is_main, dynamic_ncols=True)
    pending: list[Any] = []  # device scalars since the last check (no host sync per step)
    last: dict[str, Any] = {}
    step, batch = start, first
    last_saved = start if start else None
    t0 = time.perf_counter()
    try:
        while step < run.stop_step and not stopped_by:
            state, metrics = compiled(state, frozen, batch)
            step += 1
            pending.append(metrics)
            stopped_by = agreed.after_step()
            data_state = data.get_state()  # before prefetching the next step's batch
            if step < run.stop_step:
                batch = layout.global_batch(next(data), accumulated=True)
            due_ckpt = step % config.checkpoint_every == 0 or step == run.stop_step
            if step % config.log_every == 0 or due_ckpt or stopped_by:
                host = jax.device_get(pending)
                pending = []
                losses = [float(m["loss"]) for m in host]
                if not all(math.isfinite(x) for x in losses):
                    raise NonFiniteLoss(
                        f"non-finite loss {losses} at or before step {step}; stopping without "
                        f"saving. Last good checkpoint: step {last_saved} in {ckpt.directory}")
                dt = (time.perf_counter() - t0) / len(host)
                t0 = time.perf_counter()
                loss_tokens = sum(int(m["tokens"]) for m in host) / len(host)
                tokens = config.global_batch_size * config.data.max_length  # processed, padded
                last = {"loss": losses[-1], "lr": float(host[-1]["lr"]),
                        "grad_norm": float(host[-1]["grad_norm"]), "step_time_s": dt,
                        "tokens_per_s": tokens / dt, "loss_tokens": loss_tokens,
                        "mfu": flops / dt / peak,
                        **{f"skipped/{k}": v for k, v in data.skip_counts().items()}}
                writer.write(step, last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}",
                                tok_s=f"{last['tokens_per_s']:.0f}", step_s=f"{dt:.3f}",
                                mfu=f"{last['mfu']:.1%}")
            if config.data.eval_file and (step % config.eval_every == 0 or step == run.stop_step):
                ev = evaluate(run, state["params"], frozen)
                writer.write(step, ev)
                last.update(ev)
                bar.write(f"step {step}: eval loss {ev['eval_loss']:.4f}")
            if due_ckpt or stopped_by:
                ckpt.save(step, state, data_state)
                last_saved = step
            bar.update(1)
    finally:
        bar.close()
        stop_request.restore()
        writer.close()
        data.close()
    if stopped_by:
        if is_main:
            print(f"{signal_name(stopped_by)}: saved step {step} to {ckpt.directory}; re-run the "
                  f"same command to resume from step {step}", flush=True)
        ckpt.close()
        return {**last, "step": step, "stopped_by": stopped_by}
    skipped = data.skip_counts()
    if any(skipped[k] for k in COUNTED):
        print(f"skipped records: {skipped}", flush=True)
    exported = (resolve(workdir) / "sgv" / "config.json").exists()
    if step >= run.stop_step and (step > start or not exported):
        export_final(run, state, frozen, workdir)
        if is_main:
            print(f"exported the model to {resolve(workdir) / 'sgv'} (the next stage's "
                  "init_from; launch/generate.py --checkpoint)", flush=True)
    ckpt.close()
    return {**last, "step": step}


def export_final(run: setup.Run, state: dict, frozen: dict, workdir: str) -> None:
    """WORKDIR/sgv: the trained model as an sgv checkpoint, the next stage's `init_from`."""
    from sgv_jax.checkpoint_sgv import save_sgv

    params = optim.merge(state["params"], frozen)
    target = resolve(workdir) / "sgv"
    if target.exists() and jax.process_index() == 0:
        # A longer run in the same workdir (a larger max_steps) replaces the earlier export.
        target.rmtree()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("sgv-replace")
    tokenizer = run.config.data.tokenizer
    tokenizer_dir = tokenizer if tokenizer and os.path.isdir(tokenizer) else None
    save_sgv(str(resolve(workdir) / "sgv"), run.model, params, tokenizer_dir=tokenizer_dir)
