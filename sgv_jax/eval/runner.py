"""`run`: a benchmark's questions → LLaVA-format answers, batched, sharded, resumable.

Greedy through `Generator.complete` (left-padded batches with attention masks; a short last
batch is padded with filler rows so it reuses the compiled program). Host i of n takes every
n-th question (stable whatever is done) and spreads its batches over its own devices
(`Generator.batch_multiple`); the answers of all hosts meet in one file at the end
(`answers.merge`, run by host 0 once every host is through). Images are decoded and
preprocessed on a thread pool one batch ahead of the model.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence

import jax
from tqdm import tqdm

from sgv_jax.data.images import ImageConfig, ImageProcessor
from sgv_jax.eval import answers, prompts
from sgv_jax.eval.benchmarks import Benchmark
from sgv_jax.eval.questions import Item, load_image, load_items
from sgv_jax.generation.captioning import drop_partial_line
from sgv_jax.generation.generator import Generator
from sgv_jax.generation.sampling import GREEDY


@dataclasses.dataclass
class RunSummary:
    questions: int = 0  # this host's share
    answered: int = 0  # written by this run
    already_done: int = 0
    seconds: float = 0.0
    merged: int | None = None  # lines in the final file (the host that merged)

    @property
    def questions_per_second(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0


def _pixels(processor: ImageProcessor, item: Item):
    if item.image is None:
        return None
    try:
        return processor(load_image(item.image))
    except FileNotFoundError:
        raise FileNotFoundError(f"question {item.question_id!r}: image {item.image} not found; "
                                "check --data and the benchmark's image folder") from None


def answer_items(generator: Generator, items: Sequence[Item], out: str, *, conv_mode: str,
                 max_new_tokens: int, aspect: str, model_id: str, batch_size: int = 8,
                 shard: tuple[int, int] = (0, 1), progress: bool = True,
                 loaders: int = 4) -> RunSummary:
    """Answers this host's share of `items` not yet in `out` (or any host's part of it)."""
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    processor = ImageProcessor(ImageConfig(size=generator.cfg.vision.image_size, aspect=aspect))
    batch_size = -(-batch_size // generator.batch_multiple) * generator.batch_multiple
    mine = list(items)[index::count]
    finished = answers.done_keys(out)
    pending = [it for it in mine if it.key not in finished]
    summary = RunSummary(questions=len(mine), already_done=len(mine) - len(pending))
    part = answers.part_path(out, index, count)
    drop_partial_line(part)
    batches = [pending[i:i + batch_size] for i in range(0, len(pending), batch_size)]
    bar = tqdm(total=len(pending), unit="q", desc="answer", disable=not progress)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(loaders) as pool:
        submit = lambda batch: [pool.submit(_pixels, processor, it) for it in batch]
        next_loads = submit(batches[0]) if batches else []
        for b, batch in enumerate(batches):
            loads, next_loads = next_loads, submit(batches[b + 1]) if b + 1 < len(batches) else []
            pixels = [fut.result() for fut in loads]
            texts = [prompts.conversation_prompt(it.message, conv_mode) for it in batch]
            completions = generator.complete(texts, pixels, GREEDY,
                                              max_new_tokens=max_new_tokens, pad_to=batch_size)
            answers.append(part, [answers.answer_record(it, c.text, model_id)
                                  for it, c in zip(batch, completions)])
            summary.answered += len(batch)
            bar.update(len(batch))
    bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def run_benchmark(generator: Generator, bench: Benchmark, data_dir: str, out: str, *,
                  model_id: str, batch_size: int = 8, limit: int | None = None,
                  questions: str | None = None, conv_mode: str | None = None,
                  max_new_tokens: int | None = None, shard: tuple[int, int] | None = None,
                  progress: bool = True,
                  barrier: Callable[[], None] | None = None) -> RunSummary:
    """The `run` command. `shard` defaults to (jax.process_index(), jax.process_count());
    `barrier` (default: a cross-host sync when there are several processes) runs before host
    0 merges the parts into `out`."""
    items = load_items(bench, data_dir, questions=questions, limit=limit)
    index, count = shard or (jax.process_index(), jax.process_count())
    summary = answer_items(
        generator, items, out, conv_mode=conv_mode or bench.conv_mode,
        max_new_tokens=max_new_tokens or bench.max_new_tokens, aspect=bench.aspect,
        model_id=model_id, batch_size=batch_size, shard=(index, count), progress=progress)
    if barrier is None and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        barrier = lambda: multihost_utils.sync_global_devices("sgv_eval_merge")
    if barrier is not None:
        barrier()
    # Host 0 merges after the barrier; without one (independent --shard processes) whichever
    # host finds every item answered merges.
    if (index == 0 and barrier is not None) or answers.done_keys(out) >= {
            it.key for it in items}:
        summary.merged = answers.merge(out, items)
    print(f"{bench.name}: {summary.answered} answered ({summary.questions_per_second:.2f} "
          f"questions/s), {summary.already_done} already done, of {summary.questions} on this "
          f"host" + (f"; {out}: {summary.merged} answers" if summary.merged is not None else ""),
          file=sys.stderr)
    return summary
