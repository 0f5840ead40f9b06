"""Talk to a model, answer one question, or caption images in bulk (sgv checkpoints).

  python launch/generate.py chat --checkpoint CKPT [--image IMG]
  python launch/generate.py run --checkpoint CKPT --image IMG --prompt TEXT
      [--template v1|plain|none] [--max-new-tokens N] [--temperature 0]
  python launch/generate.py caption --checkpoint CKPT --images DIR_OR_RECORDS --out OUT.jsonl
      [--prompt TEXT] [--as-records] [--batch-size N] [--shard I/N]
"""

import argparse

import jax

from sgv_jax.generation import captioning, chat, prompts
from sgv_jax.generation.generator import Generator, local_mesh
from sgv_jax.generation.sampling import SamplingConfig


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("chat", "run", "caption"):
        p = sub.add_parser(name)
        p.add_argument("--checkpoint", required=True, help="sgv checkpoint directory")
        p.add_argument("--tokenizer", help="default: CHECKPOINT/tokenizer")
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
        p.add_argument("--aspect", default="pad", choices=["pad", "square"],
                       help="image preprocessing; ShareGPT4V/LLaVA-1.5 fine-tunes use pad (§3.7)")
        # Greedy by default, as the reference's benchmarks decode (REFERENCE.md §4.6).
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        p.add_argument("--top-p", type=float, default=1.0)
        p.add_argument("--top-k", type=int, default=50, help="HF default; 0 = off")
        p.add_argument("--repetition-penalty", type=float, default=1.0)
        p.add_argument("--max-new-tokens", type=int, default=500 if name == "caption" else 1024)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--tensor", type=int, default=1, help="tensor-parallel devices")
        p.add_argument("--devices", type=int, help="use the first N local devices (default all)")
    sub.choices["chat"].add_argument("--image")
    run = sub.choices["run"]
    run.add_argument("--image")
    run.add_argument("--prompt", required=True)
    cap = sub.choices["caption"]
    cap.add_argument("--images", required=True, help="image folder or records JSON/JSONL")
    cap.add_argument("--image-folder", help="root of the records' image paths")
    cap.add_argument("--out", required=True)
    cap.add_argument("--prompt", help="default: ShareCaptioner's instruction; none for plain")
    cap.add_argument("--as-records", action="store_true", help="ShareGPT4V-PT records")
    cap.add_argument("--batch-size", type=int, default=8)
    cap.add_argument("--shard", help="I/N: this host's share (default: the jax process)")
    cap.add_argument("--distributed", action="store_true", help="jax.distributed.initialize()")
    for p in (run, cap):
        p.add_argument("--template", default="v1", choices=prompts.TEMPLATES)
        p.add_argument("--stop", action="append", help="stop string (repeatable)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if getattr(args, "distributed", False):
        jax.distributed.initialize()
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    # Captioning spreads batches over this host's devices; chat/run use one unless --tensor.
    mesh = (local_mesh(args.tensor, args.devices)
            if args.command == "caption" or args.tensor > 1 else None)
    gen = Generator.from_checkpoint(args.checkpoint, tokenizer=args.tokenizer, dtype=args.dtype,
                                    aspect=args.aspect, mesh=mesh)
    common = {"sampling": sampling, "max_new_tokens": args.max_new_tokens}
    if args.command == "chat":
        chat.chat_loop(gen, args.image, seed=args.seed, **common)
    elif args.command == "run":
        reply = chat.answer(gen, args.prompt, args.image, args.template, stop_strings=args.stop,
                            seed=args.seed, **common)
        print(reply.text)
    else:
        shard = (tuple(map(int, args.shard.split("/"))) if args.shard
                 else (jax.process_index(), jax.process_count()))
        captioning.caption_job(gen, args.images, args.out, image_folder=args.image_folder,
                               shard=shard, user_prompt=args.prompt, template=args.template,
                               batch_size=args.batch_size, as_records=args.as_records,
                               stop_strings=args.stop, **common)


if __name__ == "__main__":
    main()
