"""What `launch/convert.py` runs: check the flag combination, call one importer or exporter."""

from __future__ import annotations

import argparse
import sys

FORMATS_IN = ("llava-hf", "llava", "components", "sgv", "minigpt4", "blip2-hf")
FORMATS_OUT = ("sgv", "llava-hf", "llava", "minigpt4", "blip2-hf")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}

# Flags each direction needs / accepts besides --dst, --dtype, --seed, --quiet.
_NEEDS = {("llava-hf", "sgv"): ({"src"}, {"adapter"}),
          ("llava", "sgv"): ({"src"}, {"vision_tower", "base"}),
          ("components", "sgv"): ({"clip", "llm"}, {"projector", "projector_type"}),
          ("sgv", "llava-hf"): ({"src"}, set()),
          ("sgv", "llava"): ({"src"}, set()),
          # MiniGPT-4 (MINIGPT4.md §4): --src DIR holds the four files unless each is given.
          ("minigpt4", "sgv"): (set(), {"src", "eva_vit", "blip2", "minigpt4_ckpt", "vicuna"}),
          ("blip2-hf", "sgv"): ({"src"}, set()),
          ("sgv", "minigpt4"): ({"src"}, set()),
          ("sgv", "blip2-hf"): ({"src"}, set())}
_OPTIONAL = ("src", "vision_tower", "clip", "llm", "projector", "adapter", "base", "eva_vit",
             "blip2", "minigpt4_ckpt", "vicuna")


def check_flags(args: argparse.Namespace) -> None:
    direction = (args.src_format, args.dst_format)
    if direction not in _NEEDS:
        raise SystemExit(f"--from {args.src_format} --to {args.dst_format} is not a conversion; "
                         f"supported: " + ", ".join(f"{a}→{b}" for a, b in _NEEDS))
    need, allowed = _NEEDS[direction]
    missing = [f"--{n.replace('_', '-')}" for n in sorted(need) if getattr(args, n, None) is None]
    extra = [f"--{n.replace('_', '-')}" for n in _OPTIONAL
             if getattr(args, n, None) is not None and n not in need | allowed]
    if missing or extra:
        raise SystemExit(f"--from {args.src_format} --to {args.dst_format}: "
                         + (f"needs {', '.join(missing)}" if missing else "")
                         + ("; " if missing and extra else "")
                         + (f"does not take {', '.join(extra)}" if extra else ""))
    if getattr(args, "merge_lora", False) and args.src_format != "sgv":
        raise SystemExit("--merge-lora applies when exporting an sgv checkpoint (--from sgv)")
    if args.dtype and args.dst_format != "sgv":
        raise SystemExit("--dtype applies when writing sgv; export keeps the checkpoint's dtype")


def run(args: argparse.Namespace) -> int:
    check_flags(args)
    from sgv_jax.convert import exporters, importers
    from sgv_jax.convert.state_dict import ConversionError

    progress = not args.quiet
    if args.quiet:  # e.g. transformers' note that torchvision is absent (the PIL backend is used)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    shard_bytes = int(args.max_shard_gb * (1 << 30))
    try:
        if args.src_format == "sgv":
            from sgv_jax.model_dir import check_sgv_dir

            check_sgv_dir(args.src, "--src")
        notes = []
        if args.dst_format == "sgv":
            if args.src_format in ("minigpt4", "blip2-hf"):
                from sgv_jax.convert import minigpt4_io

                if args.src_format == "minigpt4":
                    source, notes = minigpt4_io.read_minigpt4(
                        args.src, args.eva_vit, args.blip2, args.minigpt4_ckpt, args.vicuna)
                else:
                    source = minigpt4_io.read_blip2_hf(args.src)
            elif args.src_format == "llava-hf":
                source = importers.read_llava_hf(args.src)
                if args.adapter:
                    source = importers.with_adapter(source, args.adapter)
            elif args.src_format == "llava" and args.base:
                source = importers.read_llava_lora(args.src, args.base, args.vision_tower)
            elif args.src_format == "llava":
                source = importers.read_llava(args.src, args.vision_tower)
            else:
                source = importers.read_components(args.clip, args.llm, args.projector, args.seed,
                                                   args.projector_type)
            importers.to_sgv(source, args.dst, DTYPES.get(args.dtype), progress)
        elif args.dst_format in ("minigpt4", "blip2-hf"):
            from sgv_jax.convert import minigpt4_io

            export = minigpt4_io.export_minigpt4 if args.dst_format == "minigpt4" \
                else minigpt4_io.export_blip2_hf
            notes = export(args.src, args.dst, progress)
        elif args.dst_format == "llava-hf":
            notes = exporters.export_llava_hf(args.src, args.dst, shard_bytes, args.seed, progress,
                                              args.merge_lora)
        else:
            notes = exporters.export_llava(args.src, args.dst, shard_bytes, progress,
                                           args.merge_lora)
    except (ConversionError, FileNotFoundError, FileExistsError, ValueError, TypeError) as e:
        print(f"conversion failed: {e}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.dst}")
    return 0
