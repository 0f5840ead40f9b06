"""Batch captioning (the Share-Captioner job, REFERENCE.md §4.7) with resumable JSONL output.

Input is a folder of images or a LLaVA/ShareGPT4V records file (§3.8). Each host takes every
`count`-th item of the full list (stable whatever is already done), skips ids already present
in the output (its own file and every other host's), and appends one JSON line per image,
flushed and fsynced per batch: a crash loses at most the batch in flight, and a line cut by a
kill is dropped on restart. Images that do not decode are reported and skipped (retried on the
next run). `as_records` writes ShareGPT4V-PT style records (§3.8) that the data pipeline reads
as JSONL.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import glob
import json
import os
import sys
from collections.abc import Callable, Sequence

from tqdm import tqdm

from sgv_jax.constants import DEFAULT_IMAGE_TOKEN
from sgv_jax.data.images import load_image
from sgv_jax.data.records import RecordFile
from sgv_jax.data.validate import record_id_of
from sgv_jax.generation import prompts
from sgv_jax.generation.generator import Generator
from sgv_jax.generation.sampling import GREEDY, SamplingConfig
from sgv_jax.stop import StopRequest, signal_name

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# ShareCaptioner's instruction (§4.7).
DEFAULT_PROMPT = "Analyze the image in a comprehensive and detailed manner."


@dataclasses.dataclass(frozen=True)
class CaptionItem:
    id: str
    image: str  # as recorded in the output: relative to the image folder
    path: str  # the file to open


@dataclasses.dataclass
class CaptionSummary:
    written: int = 0
    already_done: int = 0
    corrupt: list[str] = dataclasses.field(default_factory=list)  # "id: path: reason"
    stopped_by: int = 0  # the signal (SIGTERM, SIGINT) that ended the job early


def items_from_dir(folder: str) -> list[CaptionItem]:
    """Every image under `folder`, sorted; id = relative path without extension."""
    items = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, folder).replace(os.sep, "/")
                items.append(CaptionItem(os.path.splitext(rel)[0], rel, path))
    return items


def items_from_records(data_file: str, image_folder: str | None = None) -> list[CaptionItem]:
    """Records (JSON list or JSONL) that have an `image`; paths relative to `image_folder`
    (default: the records file's folder)."""
    folder = image_folder or os.path.dirname(os.path.abspath(data_file))
    records = RecordFile(data_file)
    items, seen = [], set()
    for i in range(len(records)):
        record = records[i]
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            continue
        item_id = record_id_of(record, i)
        if item_id in seen:
            raise ValueError(f"{data_file}: record id {item_id!r} appears twice; ids key the "
                             "resumable output, so they must be unique")
        seen.add(item_id)
        items.append(CaptionItem(item_id, record["image"], os.path.join(folder, record["image"])))
    return items


def list_items(source: str, image_folder: str | None = None) -> list[CaptionItem]:
    if os.path.isdir(source):
        return items_from_dir(source)
    if os.path.isfile(source):
        return items_from_records(source, image_folder)
    raise FileNotFoundError(f"--images {source}: neither an image folder nor a records file")


def host_output_path(out: str, index: int, count: int) -> str:
    """One file per host when several hosts caption (no two processes append to one file)."""
    if count == 1:
        return out
    root, ext = os.path.splitext(out)
    return f"{root}.host{index}-of-{count}{ext}"


def output_files(out: str) -> list[str]:
    root, ext = os.path.splitext(out)
    return [p for p in [out, *sorted(glob.glob(f"{root}.host*-of-*{ext}"))] if os.path.isfile(p)]


def drop_partial_line(path: str) -> None:
    """A kill mid-write leaves a last line without its newline: cut it, so the append that
    follows starts on a fresh line and that id is captioned again."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def done_ids(out: str) -> set[str]:
    """Ids already captioned in `out` and in every host's part of it."""
    return set(done_prompts(out))


def done_prompts(out: str) -> dict[str, str]:
    """{id: the prompt it was captioned with} over `out` and every host's part of it; records
    (`as_records`) show the prompt as the human turn."""
    done = {}
    for path in output_files(out):
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith("\n") or not line.strip():
                    continue  # a line cut by a kill: captioned again
                try:
                    row = json.loads(line)
                    done[str(row["id"])] = prompt_of(row)
                except (ValueError, KeyError, TypeError, IndexError) as e:
                    raise ValueError(f"{path}:{number}: not a caption line with an id ({e}); "
                                     "fix or remove it to resume") from None
    return done


def check_same_prompt(out: str, done: dict[str, str], recorded_prompt: str) -> None:
    """Resuming into `out` with another prompt would skip every id done with the first one and
    silently write nothing: refuse, naming both prompts."""
    other = next((p for p in done.values() if p != recorded_prompt), None)
    if other is not None:
        raise ValueError(f"{out} already holds captions made with another prompt ({other!r}; "
                         f"this run: {recorded_prompt!r}); resume with the same --prompt and "
                         "--as-records choice, or write to another --out")


def output_record(item: CaptionItem, user_prompt: str, caption: str, as_records: bool) -> dict:
    if as_records:
        human = DEFAULT_IMAGE_TOKEN + "\n" + user_prompt if user_prompt else DEFAULT_IMAGE_TOKEN
        return {"id": item.id, "image": item.image,
                "conversations": [{"from": "human", "value": human},
                                  {"from": "gpt", "value": caption}]}
    return {"id": item.id, "image": item.image, "prompt": user_prompt, "caption": caption}


def prompt_of(row: dict) -> str:
    """The prompt a caption line records (see `done_prompts`)."""
    return row["prompt"] if "prompt" in row else row["conversations"][0]["value"]


def _load(generator: Generator, item: CaptionItem):
    try:
        return generator.preprocess(load_image(item.path)), None
    except Exception as e:  # noqa: BLE001 -- PIL raises many types (OSError, SyntaxError, ...)
        return None, f"{item.id}: {item.path}: {type(e).__name__}: {e}"


def caption_items(generator: Generator, items: Sequence[CaptionItem], out: str, *,
                  user_prompt: str = DEFAULT_PROMPT, template: str = "v1",
                  sampling: SamplingConfig = GREEDY, max_new_tokens: int = 512,
                  batch_size: int = 8, as_records: bool = False,
                  stop_strings: Sequence[str] | None = None, progress: bool = True,
                  report: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
                  loaders: int = 4) -> CaptionSummary:
    """Captions the items not yet in `out` (this host's file; see `host_output_path`). SIGTERM
    or Ctrl-C ends the job after the batch in flight is written (`summary.stopped_by`)."""
    stop = prompts.DEFAULT_STOP_STRINGS[template] if stop_strings is None else stop_strings
    prompt_text = prompts.build_prompt(template, user_prompt, has_image=True)
    stop_ids = prompts.minigpt4_stop_ids(template, generator.tokenizer)
    batch_size = -(-batch_size // generator.batch_multiple) * generator.batch_multiple
    summary = CaptionSummary()
    finished = done_prompts(out)
    recorded = prompt_of(output_record(CaptionItem("", "", ""), user_prompt, "", as_records))
    check_same_prompt(out, finished, recorded)
    pending = [it for it in items if it.id not in finished]
    summary.already_done = len(items) - len(pending)
    drop_partial_line(out)
    batches = [pending[i:i + batch_size] for i in range(0, len(pending), batch_size)]
    bar = tqdm(total=len(pending), unit="img", desc="caption", disable=not progress)
    request = StopRequest(finishing="writing the batch in flight, then stopping")
    with concurrent.futures.ThreadPoolExecutor(loaders) as pool, \
            open(out, "a", encoding="utf-8") as f, contextlib.ExitStack() as cleanup:
        cleanup.callback(request.restore)
        submit = lambda batch: [pool.submit(_load, generator, it) for it in batch]
        next_loads = submit(batches[0]) if batches else []
        for b, batch in enumerate(batches):
            loads, next_loads = next_loads, submit(batches[b + 1]) if b + 1 < len(batches) else []
            loaded = [(it, *fut.result()) for it, fut in zip(batch, loads)]
            for _, _, error in loaded:
                if error:
                    summary.corrupt.append(error)
                    report(f"skipping unreadable image {error}")
            good = [(it, pixels) for it, pixels, error in loaded if error is None]
            if good:
                completions = generator.complete(
                    [prompt_text] * len(good), [p for _, p in good], sampling,
                    max_new_tokens=max_new_tokens, stop_strings=stop, pad_to=batch_size,
                    stop_ids=stop_ids)
                f.write("".join(json.dumps(output_record(it, user_prompt,
                                                         prompts.answer_text(template, c.text),
                                                         as_records),
                                           ensure_ascii=False) + "\n"
                                for (it, _), c in zip(good, completions)))
                f.flush()
                os.fsync(f.fileno())
                summary.written += len(good)
            bar.update(len(batch))
            bar.set_postfix(corrupt=len(summary.corrupt), refresh=False)
            if request.signum:
                summary.stopped_by = request.signum
                for future in next_loads:
                    future.cancel()
                break
    bar.close()
    return summary


def caption_job(generator: Generator, source: str, out: str, *, image_folder: str | None = None,
                shard: tuple[int, int] = (0, 1), user_prompt: str | None = None,
                template: str = "v1", **kw) -> CaptionSummary:
    """The `caption` command: this host's share (every `count`-th item from `index`) of a
    folder or records file, into its output file; prints a summary line to stderr."""
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    items = list_items(source, image_folder)[index::count]
    host_out = host_output_path(out, index, count)
    if user_prompt is None:  # `plain` was trained on a bare `<image>` (§3.3)
        user_prompt = "" if template == "plain" else DEFAULT_PROMPT
    summary = caption_items(generator, items, host_out, user_prompt=user_prompt,
                            template=template, **kw)
    print(f"{host_out}: {summary.written} written, {summary.already_done} already done, "
          f"{len(summary.corrupt)} unreadable", file=sys.stderr)
    if summary.stopped_by:
        print(f"{signal_name(summary.stopped_by)}: stopped after the last complete batch; re-run "
              "the same command to caption the rest", file=sys.stderr)
    return summary
