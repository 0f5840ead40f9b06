"""Talk to a model, answer one question, or caption images in bulk, from an sgv checkpoint (a
training run's WORKDIR/sgv, or what launch/convert.py --to sgv wrote).

examples:
  python launch/generate.py chat --checkpoint runs/demo/finetune/sgv --image runs/demo/demo_data/images/eval/00000.png
  python launch/generate.py run --checkpoint runs/demo/finetune/sgv --image IMG --prompt "What color is the shape?"
  python launch/generate.py caption --checkpoint CKPT --images DIR_OR_RECORDS --out OUT.jsonl

Each command's --help lists its flags.
"""

import sys

from sgv_jax import allocator, cli

CHAT = """Multi-turn conversation about one image (or none), in the terminal: vicuna_v1, LLaVA v0
or MiniGPT-4's demo prompt (--template; default: the checkpoint's family).

examples:
  python launch/generate.py chat --checkpoint runs/demo/finetune/sgv --image runs/demo/demo_data/images/eval/00000.png
  python launch/generate.py chat --checkpoint CKPT --temperature 0.2 --top-p 0.7
"""
RUN = """Answer one question (prints the answer only).

examples:
  python launch/generate.py run --checkpoint runs/demo/finetune/sgv --image runs/demo/demo_data/images/eval/00000.png --prompt "Where is the shape?"
  python launch/generate.py run --checkpoint CKPT --template none --prompt "<image>" --image IMG --stop "."
  python launch/generate.py run --checkpoint MINIGPT4_CKPT --template minigpt4 --image IMG --prompt "Describe this image in detail."
"""
CAPTION = """Caption a folder of images or a records file into resumable JSONL (one line per image).

examples:
  python launch/generate.py caption --checkpoint CKPT --images photos/ --out captions.jsonl
  python launch/generate.py caption --checkpoint CKPT --images data.json --image-folder data \\
      --out sharegpt4v_pt.jsonl --as-records --batch-size 32

Re-running the same command continues where it stopped; Ctrl-C or SIGTERM writes the batch in
flight and stops (exit 130 / 143); a second Ctrl-C aborts.
"""


def parse(argv):
    from sgv_jax.generation import prompts

    parser = cli.parser(__doc__, subcommands=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{chat,run,caption}")
    for name, doc in (("chat", CHAT), ("run", RUN), ("caption", CAPTION)):
        p = cli.subcommand(sub, name, doc)
        p.add_argument("--checkpoint", required=True, help="sgv checkpoint directory")
        p.add_argument("--tokenizer", help="tokenizer directory (default: CHECKPOINT/tokenizer)")
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                       help="compute dtype")
        p.add_argument("--aspect", choices=["pad", "square", "resize"],
                       help="image preprocessing: pad (LLaVA-1.5/ShareGPT4V fine-tunes), square "
                       "or resize (MiniGPT-4); default: the checkpoint's family (resize for "
                       "MiniGPT-4, else pad)")
        # Greedy by default, as the reference's benchmarks decode (REFERENCE.md §4.6).
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
        p.add_argument("--top-k", type=int, default=50, help="top-k sampling; 0 = off")
        p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
        p.add_argument("--max-new-tokens", type=int, default=500 if name == "caption" else 1024,
                       help="longest answer")
        p.add_argument("--seed", type=int, default=0, help="sampling seed")
        p.add_argument("--tensor", type=int, default=1, help="tensor-parallel devices")
        p.add_argument("--devices", type=int, help="use the first N local devices (default all)")
    sub.choices["chat"].add_argument("--image", help="image file the conversation is about")
    sub.choices["chat"].add_argument(
        "--template", choices=["v1", "v0", "llava_v0", "minigpt4", "minigpt4_2304"],
        help="conversation template (default: minigpt4 for a MiniGPT-4 checkpoint, else v1)")
    run = sub.choices["run"]
    run.add_argument("--image", help="image file")
    run.add_argument("--prompt", required=True, help="the question")
    cap = sub.choices["caption"]
    cap.add_argument("--images", required=True, help="image folder or records JSON/JSONL")
    cap.add_argument("--image-folder", help="root of the records' image paths "
                     "(default: the records file's folder)")
    cap.add_argument("--out", required=True, help="output JSONL (appended to; resumable)")
    cap.add_argument("--prompt", help="instruction (default: ShareCaptioner's; none for plain)")
    cap.add_argument("--as-records", action="store_true",
                     help="write ShareGPT4V-PT records instead of caption lines")
    cap.add_argument("--batch-size", type=int, default=8, help="images per decode batch")
    cap.add_argument("--shard", help="I/N: this host's share (default: the jax process)")
    cap.add_argument("--distributed", action="store_true", help="jax.distributed.initialize()")
    for p in (run, cap):
        p.add_argument("--template", choices=prompts.TEMPLATES,
                       help="prompt template (none: --prompt is used verbatim; default: minigpt4 "
                       "for a MiniGPT-4 checkpoint, else v1)")
        p.add_argument("--stop", action="append", help="stop string (repeatable)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    return cli.run_guarded(lambda: generate(args), args.debug)


def generate(args) -> int:
    from sgv_jax.model_dir import check_sgv_dir

    check_sgv_dir(args.checkpoint, "checkpoint")  # before the slow imports
    import jax

    from sgv_jax.generation import captioning, chat
    from sgv_jax.generation.generator import Generator, local_mesh
    from sgv_jax.generation.sampling import SamplingConfig
    from sgv_jax.stop import exit_status

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
        chat.chat_loop(gen, args.image, seed=args.seed, template=args.template, **common)
    elif args.command == "run":
        reply = chat.answer(gen, args.prompt, args.image, args.template, stop_strings=args.stop,
                            seed=args.seed, **common)
        print(reply.text)
    else:
        shard = (parse_shard(args.shard) if args.shard
                 else (jax.process_index(), jax.process_count()))
        summary = captioning.caption_job(
            gen, args.images, args.out, image_folder=args.image_folder, shard=shard,
            user_prompt=args.prompt, template=args.template or gen.default_template,
            batch_size=args.batch_size,
            as_records=args.as_records, stop_strings=args.stop, **common)
        if summary.stopped_by:
            return exit_status(summary.stopped_by)
    return 0


def parse_shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()):
        raise cli.UserError(f"--shard {text!r}: use I/N, e.g. 0/4 for the first of four hosts")
    return int(index), int(count)


if __name__ == "__main__":
    allocator.reexec_under_tcmalloc()  # before any work: see sgv_jax/allocator.py
    sys.exit(main())
