"""Look at training data the way the model sees it: one record at a time (inspect) or the whole
file (check).

examples:
  python launch/data.py inspect --data data.json --image-folder data --tokenizer models/init/tokenizer --limit 2
  python launch/data.py check --data data.json --image-folder data --tokenizer models/init/tokenizer --workers 8

Each command's --help lists its flags.
"""

import sys

from sgv_jax import cli

INSPECT = """Print one JSON line per record: id, input_ids and labels in the reference convention
(one -200 per image, -100 masked) and `trained`, the prompt with trained spans in [[ ]].

examples:
  python launch/data.py inspect --data data.json --image-folder data --tokenizer models/init/tokenizer --limit 2
  python launch/data.py inspect --data pt.json --image-folder data --tokenizer models/init/tokenizer --template plain
"""
CHECK = """Validate the whole file (records well-formed, images exist and decode, and with a
tokenizer the masking arithmetic) and print the counts as JSON.

examples:
  python launch/data.py check --data data.json --image-folder data
  python launch/data.py check --data data.json --image-folder data --tokenizer models/init/tokenizer --workers 8
"""


def parse(argv):
    parser = cli.parser(__doc__, subcommands=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{inspect,check}")
    for name, doc in (("inspect", INSPECT), ("check", CHECK)):
        p = cli.subcommand(sub, name, doc)
        p.add_argument("--data", required=True, help="JSON list or JSONL records")
        p.add_argument("--image-folder", required=True, help="root of the records' image paths")
        p.add_argument("--template", default="v1",
                       choices=["plain", "v1", "vicuna_v1", "v0", "llava_v0", "minigpt4",
                                "minigpt4_2304"],
                       help="conversation template (plain: stage 1, v1: stage 2; v0: LLaVA's "
                       "conv_llava_v0; minigpt4: MiniGPT-4's stage-2 layout, one round)")
        p.add_argument("--tokenizer", required=name == "inspect",
                       help="HF tokenizer directory or sentencepiece .model")
    inspect = sub.choices["inspect"]
    # Images do not change ids or labels; --aspect is accepted so that the flags match training.
    inspect.add_argument("--aspect", default="square", choices=["square", "pad", "resize"],
                         help="image preprocessing (as the training config's data.aspect)")
    inspect.add_argument("--limit", type=int, default=None, help="first N records (default all)")
    inspect.add_argument("--num-image-tokens", type=int, default=576,
                         help="image positions per image (576 for CLIP-L/14-336)")
    check = sub.choices["check"]
    check.add_argument("--workers", type=int, default=0, help="processes (0: this one)")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    return cli.run_guarded(lambda: audit_data(args), args.debug)


def audit_data(args) -> int:
    import json

    from sgv_jax.data import audit, tokenize

    tokenizer = tokenize.load_tokenizer(args.tokenizer) if args.tokenizer else None
    if args.command == "inspect":
        for row in audit.inspect_records(args.data, tokenizer, args.template, args.image_folder,
                                         args.limit, args.num_image_tokens):
            print(json.dumps(row, ensure_ascii=False))
    else:
        report = audit.check_file(args.data, args.image_folder, args.template, tokenizer,
                                  args.workers, progress=not args.quiet)
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
