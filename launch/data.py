"""Look at training data the way the model sees it.

  python launch/data.py inspect --data FILE --image-folder DIR --tokenizer DIR --template v1 \
      [--aspect pad] [--limit N]
      one JSON line per record: id, input_ids and labels in the reference convention (one -200
      per image, -100 masked) and `trained`, the prompt with trained spans in [[ ]].
  python launch/data.py check --data FILE --image-folder DIR [--template v1] [--tokenizer DIR]
      [--workers N]
      validates the whole file (records well-formed, images exist and decode, and with a
      tokenizer the masking arithmetic) and prints the counts as JSON.
"""

import argparse
import json

from sgv_jax.data import audit, tokenize


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("inspect", "check"):
        p = sub.add_parser(name)
        p.add_argument("--data", required=True, help="JSON list or JSONL records")
        p.add_argument("--image-folder", required=True)
        p.add_argument("--template", default="v1", choices=["plain", "v1", "vicuna_v1"])
        p.add_argument("--tokenizer", required=name == "inspect",
                       help="HF tokenizer directory or sentencepiece .model")
    inspect = sub.choices["inspect"]
    # Images do not change ids or labels; --aspect is accepted so that the flags match training.
    inspect.add_argument("--aspect", default="square", choices=["square", "pad"])
    inspect.add_argument("--limit", type=int, default=None)
    inspect.add_argument("--num-image-tokens", type=int, default=576)
    sub.choices["check"].add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)

    tokenizer = tokenize.load_tokenizer(args.tokenizer) if args.tokenizer else None
    if args.command == "inspect":
        for row in audit.inspect_records(args.data, tokenizer, args.template, args.image_folder,
                                         args.limit, args.num_image_tokens):
            print(json.dumps(row, ensure_ascii=False))
    else:
        report = audit.check_file(args.data, args.image_folder, args.template, tokenizer,
                                  args.workers)
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
