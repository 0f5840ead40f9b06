"""The embedded demo: both ShareGPT4V stages on a synthetic shapes dataset, then held-out
question answering, on a laptop CPU in minutes.

    python launch/demo.py --workdir runs/demo

Writes WORKDIR/{pretrain,finetune}/ (checkpoints, metrics.jsonl, TensorBoard, sgv/), and
WORKDIR/report/ (losses.png, answers.png, results.json). Re-running resumes / skips done stages.
"""

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo")
    args = parser.parse_args()
    from sgv_jax.train.demo_run import run_demo

    result = run_demo(args.workdir)
    print(f"held-out accuracy {result['accuracy']:.1%} (chance 25%); report in "
          f"{os.path.join(args.workdir, 'report')}")


if __name__ == "__main__":
    main()
