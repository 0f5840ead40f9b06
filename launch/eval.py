"""Benchmark a checkpoint the way LLaVA-1.5 / ShareGPT4V report it: answer, score, report.

  python launch/eval.py run --benchmark pope --data playground/data/eval/pope \\
      --checkpoint runs/ft/sgv --out answers/pope.jsonl [--batch 16] [--limit 100]
  python launch/eval.py score --benchmark pope --data playground/data/eval/pope \\
      --answers answers/pope.jsonl [--judge https://api.openai.com/v1/chat/completions]
  python launch/eval.py report --answers-dir answers/

Benchmarks (LLaVA's script names): vqav2 gqa vizwiz scienceqa textvqa pope mme mmbench
mmbench_cn seed mmvet llavabench qbench. --data is the benchmark's folder of LLaVA's
playground/data/eval/ (docs/Evaluation.md layout, same file names). `run` resumes: re-running
skips answered questions. `score` prints one JSON object (its last stdout line) and writes
ANSWERS.score.json, which `report` collects.
"""

import argparse
import json
import sys

from sgv_jax import allocator
from sgv_jax.eval.benchmarks import BENCHMARKS


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="answer a benchmark's questions (resumable)")
    score = sub.add_parser("score", help="official metrics of an answers file")
    for p in (run, score):
        p.add_argument("--benchmark", required=True, choices=list(BENCHMARKS))
        p.add_argument("--data", required=True, help="playground/data/eval/<folder>/")
        p.add_argument("--questions", help="question file in --data (default: LLaVA's)")
    run.add_argument("--checkpoint", required=True, help="sgv checkpoint directory")
    run.add_argument("--out", required=True, help="answers file (JSONL, LLaVA's format)")
    run.add_argument("--batch", type=int, default=8, help="questions per generate call")
    run.add_argument("--limit", type=int, help="only the first K questions")
    run.add_argument("--tokenizer", help="default: CHECKPOINT/tokenizer")
    run.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    run.add_argument("--conv-mode", help="vicuna_v1 | llava_v1 (default: the script's)")
    run.add_argument("--max-new-tokens", type=int, help="default: LLaVA's (128 or 1024)")
    run.add_argument("--model-id", help="answers' model_id (default: from the path)")
    run.add_argument("--devices", type=int, help="first N local devices (default: all)")
    run.add_argument("--tensor", type=int, default=1, help="tensor-parallel devices")
    run.add_argument("--shard", help="I/N: this process's share (default: the jax process)")
    run.add_argument("--distributed", action="store_true", help="jax.distributed.initialize()")
    score.add_argument("--answers", required=True, help="answers file from `run`")
    score.add_argument("--judge", help="OpenAI-compatible chat-completions URL for MM-Vet / "
                       "LLaVA-Bench (key: $OPENAI_API_KEY); without it, requests are written")
    report = sub.add_parser("report", help="table + chart of all scores beside the papers'")
    report.add_argument("--answers-dir", required=True, help="folder of *.score.json")
    report.add_argument("--out", help="output folder (default: the answers dir)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    try:
        if args.command == "run":
            import jax

            from sgv_jax.eval.benchmarks import get_benchmark, model_name_from_path
            from sgv_jax.eval.runner import run_benchmark
            from sgv_jax.generation.generator import Generator, local_mesh

            if args.distributed:
                jax.distributed.initialize()
            bench = get_benchmark(args.benchmark)
            generator = Generator.from_checkpoint(
                args.checkpoint, tokenizer=args.tokenizer, dtype=args.dtype, aspect=bench.aspect,
                mesh=local_mesh(args.tensor, args.devices))
            run_benchmark(generator, bench, args.data, args.out,
                          model_id=args.model_id or model_name_from_path(args.checkpoint),
                          batch_size=args.batch, limit=args.limit, questions=args.questions,
                          conv_mode=args.conv_mode, max_new_tokens=args.max_new_tokens,
                          shard=tuple(map(int, args.shard.split("/"))) if args.shard else None)
        elif args.command == "score":
            from sgv_jax.eval.score_judged import http_judge
            from sgv_jax.eval.scoring import score_benchmark

            judge = http_judge(args.judge) if args.judge else None
            result = score_benchmark(args.benchmark, args.data, args.answers, judge=judge)
            print(json.dumps(result, default=str))
        else:
            from sgv_jax.eval.report import write_report

            paths = write_report(args.answers_dir, args.out)
            print(f"wrote {paths['markdown']} and {paths['png']}")
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    allocator.reexec_under_tcmalloc()  # before any work: see sgv_jax/allocator.py
    main()
