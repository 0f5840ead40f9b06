"""The benchmarks, by LLaVA's script names, and where their files sit.

`--data` is the benchmark's folder `playground/data/eval/<folder>/` exactly as LLaVA's
`docs/Evaluation.md`, its `eval.zip` and `scripts/v1_5/eval/*.sh` lay it out; every file name
below is the one those scripts pass. Generation settings are the scripts': greedy, `vicuna_v1`
(`llava_v1` for Q-Bench), `max_new_tokens` 128 for `model_vqa_loader.py` and 1024 for
`model_vqa.py` / `model_vqa_science.py` / `model_vqa_mmbench.py` / `model_vqa_qbench.py`
(REFERENCE.md §4.6), image `pad` except Q-Bench, whose script calls the CLIP processor directly.
"""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str  # LLaVA's script name (scripts/v1_5/eval/<name>.sh)
    folder: str  # its folder under playground/data/eval/
    questions: str  # the question file `run` reads, relative to --data
    images: str  # the image folder, relative to --data ("" = --data itself)
    style: str  # which LLaVA script builds the prompt: loader | science | mmbench | qbench
    max_new_tokens: int
    score_files: tuple[str, ...] = ()  # what `score` reads besides the answers
    aspect: str = "pad"
    conv_mode: str = "vicuna_v1"
    lang: str = "en"


BENCHMARKS = {b.name: b for b in (
    Benchmark("vqav2", "vqav2", "llava_vqav2_mscoco_test-dev2015.jsonl", "test2015", "loader",
              128, ("llava_vqav2_mscoco_test2015.jsonl",)),
    Benchmark("gqa", "gqa", "llava_gqa_testdev_balanced.jsonl", "data/images", "loader", 128,
              ("data/testdev_balanced_questions.json",)),
    Benchmark("vizwiz", "vizwiz", "llava_test.jsonl", "test", "loader", 128,
              ("llava_test.jsonl",)),
    Benchmark("scienceqa", "scienceqa", "llava_test_CQM-A.json", "images/test", "science", 1024,
              ("pid_splits.json", "problems.json")),
    Benchmark("textvqa", "textvqa", "llava_textvqa_val_v051_ocr.jsonl", "train_images", "loader",
              128, ("TextVQA_0.5.1_val.json",)),
    Benchmark("pope", "pope", "llava_pope_test.jsonl", "val2014", "loader", 128,
              ("llava_pope_test.jsonl", "coco/coco_pope_adversarial.json",
               "coco/coco_pope_popular.json", "coco/coco_pope_random.json")),
    Benchmark("mme", "MME", "llava_mme.jsonl", "MME_Benchmark_release_version", "loader", 128,
              ("MME_Benchmark_release_version",)),
    Benchmark("mmbench", "mmbench", "mmbench_dev_20230712.tsv", "", "mmbench", 1024,
              ("mmbench_dev_20230712.tsv",)),
    Benchmark("mmbench_cn", "mmbench_cn", "mmbench_dev_cn_20231003.tsv", "", "mmbench", 1024,
              ("mmbench_dev_cn_20231003.tsv",), lang="cn"),
    Benchmark("seed", "seed_bench", "llava-seed-bench.jsonl", "", "loader", 128,
              ("SEED-Bench.json",)),
    Benchmark("mmvet", "mm-vet", "llava-mm-vet.jsonl", "images", "loader", 1024,
              ("mm-vet.json",)),
    Benchmark("llavabench", "llava-bench-in-the-wild", "questions.jsonl", "images", "loader",
              1024, ("questions.jsonl", "context.jsonl", "answers_gpt4.jsonl")),
    Benchmark("qbench", "qbench", "llvisionqa_dev.json", "images_llvisionqa", "qbench", 1024,
              ("llvisionqa_dev.json",), aspect="square", conv_mode="llava_v1"),
)}


class MissingFile(FileNotFoundError):
    """An expected benchmark file is absent; the message names it and the layout."""


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def require(data_dir: str, relative: str, bench: Benchmark) -> str:
    """`data_dir/relative`, or a one-line error naming the file LLaVA's layout expects there."""
    path = os.path.join(data_dir, relative)
    if not os.path.exists(path):
        raise MissingFile(
            f"{path}: not found; --data for {bench.name} is LLaVA's "
            f"playground/data/eval/{bench.folder}/ (docs/Evaluation.md), which holds "
            f"{relative!r}")
    return path


def question_file(data_dir: str, bench: Benchmark, override: str | None = None) -> str:
    return require(data_dir, override or bench.questions, bench)


def model_name_from_path(path: str) -> str:
    """LLaVA's `get_model_name_from_path`: the last path part, `parent_checkpoint-N` for
    trainer checkpoints; LLaVA writes it as each answer's `model_id`."""
    parts = path.strip("/").split("/")
    return parts[-2] + "_" + parts[-1] if parts[-1].startswith("checkpoint-") else parts[-1]
