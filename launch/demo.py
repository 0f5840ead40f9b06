r"""The embedded demo: trains both ShareGPT4V stages on a synthetic shapes dataset, then answers
held-out questions, on a laptop CPU in minutes.

examples:
  python launch/demo.py                          # everything under runs/demo (make demo)
  python launch/demo.py --workdir /tmp/demo      # elsewhere; re-running resumes / skips done stages

Writes WORKDIR/demo_data/ (images, records, tokenizer), WORKDIR/{pretrain,finetune}/
(checkpoints, metrics.jsonl, TensorBoard, the sgv/ export) and WORKDIR/report/ (losses.png,
answers.png, scores.md, results.json; eval/: the held-out questions as a GQA benchmark folder,
answered and scored through launch/eval.py's harness). Ctrl-C saves the running stage; the same command resumes it.
"""

import os
import sys

from sgv_jax import allocator, cli


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--workdir", default="runs/demo", help="where everything is written")
    args = parser.parse_args(argv)

    def run() -> int:
        from sgv_jax.demo.run import run_demo
        from sgv_jax.stop import exit_status
        from sgv_jax.train.loop import NonFiniteLoss

        try:
            result = run_demo(args.workdir)
        except NonFiniteLoss as e:  # expected: the message names the last good checkpoint
            raise cli.UserError(str(e)) from None
        if result.get("stopped_by"):
            return exit_status(result["stopped_by"])
        print(f"held-out accuracy {result['accuracy']:.1%} (chance 25%); report in "
              f"{os.path.join(args.workdir, 'report')}")
        return 0

    return cli.run_guarded(run, args.debug)


if __name__ == "__main__":
    allocator.reexec_under_tcmalloc()  # before any work: see sgv_jax/allocator.py
    sys.exit(main())
