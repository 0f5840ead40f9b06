"""Data pipeline throughput vs the reference path, and opening a 1.2M-record file.

    python benchmarks/bench_data.py [--samples 256] [--workers 2] [--big-records 1200000]
                                    [--chip v5p] [--mfu 0.4]

1. Synthetic 640x480 JPEGs and v1 multi-turn records, a LLaMA-size (32000) sentencepiece
   vocabulary trained here on synthetic text (cached under the temp dir).
2. Reference path, one sample at a time in this process, as ShareGPT4V's dataset does it:
   PIL open + expand2square + transformers CLIPImageProcessor, preprocess_v1 with the
   transformers LlamaTokenizer (torch tensors), pad/stack like the collator.
3. Ours: make_dataset (worker_count=0, i.e. the same single core), then with N workers.
4. A synthetic 1.2M-record JSON list: index build time and peak RSS, then opening it and
   taking the first batch in a fresh process (time and peak RSS).
Prints samples/s per core (samples per CPU-second of every thread and worker process that did
the work, so other users' load on a shared machine does not enter the ratio) and wall-clock
samples/s, the ratio ours/reference per core, the host cores one chip needs to be fed at the
planner's step time for the ShareGPT4V-7B stage-2 step (configs/finetune.py, `--chip`, `--mfu`
as `launch/plan.py`), and the RSS numbers.

Worker processes: each worker runs the same per-sample work as the in-process path; the batches
then cross a process boundary (grain pickles them through shared memory), the main process
unpickles them, and on a machine with fewer idle cores than workers + 1 they also share the
cores. The worker line prints the CPU seconds per sample of the main process and of the workers
separately, which shows where the extra time goes.
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CACHE = os.path.join(tempfile.gettempdir(), "sgv_jax_bench_data")
SYLLABLES = ["ka", "ri", "to", "ne", "sa", "mo", "lu", "pe", "di", "go", "ba", "chi", "ver", "an",
             "tion", "ly", "ing", "ed", "er", "st", "qu", "th", "pl", "or", "ex", "un", "re"]


def _word(rng):
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))


def _sentence(rng, n):
    return " ".join(_word(rng) for _ in range(n)).capitalize() + rng.choice([".", "?", "!", ","])


def llama_size_tokenizer(vocab_size=32000):
    """A LLaMA-like BPE model with a real-size vocabulary (REFERENCE.md §8 settings)."""
    import sentencepiece as spm
    prefix = os.path.join(CACHE, f"llama_like_{vocab_size}")
    if not os.path.isfile(prefix + ".model"):
        os.makedirs(CACHE, exist_ok=True)
        rng = random.Random(0)
        with open(prefix + ".txt", "w") as f:
            f.writelines(_sentence(rng, rng.randint(5, 30)) + "\n" for _ in range(60000))
        spm.SentencePieceTrainer.train(
            input=prefix + ".txt", model_prefix=prefix, model_type="bpe", vocab_size=vocab_size,
            byte_fallback=True, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
            allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            minloglevel=2, num_threads=2, hard_vocab_limit=False)
    folder = prefix + "_hf"
    os.makedirs(folder, exist_ok=True)
    with open(prefix + ".model", "rb") as src, open(os.path.join(folder, "tokenizer.model"),
                                                     "wb") as dst:
        dst.write(src.read())
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True,
                   "add_eos_token": False, "model_max_length": 2048}, f)
    return folder


def make_dataset_files(n_records, n_images=32):
    folder = os.path.join(CACHE, "jpeg")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_images):
        path = os.path.join(folder, f"{i}.jpg")
        if not os.path.isfile(path):
            # Smooth content + noise: JPEG sizes close to photos, not to pure noise.
            base = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((640, 480), Image.Resampling.BICUBIC)
            noisy = np.clip(np.asarray(img) + rng.normal(0, 8, (480, 640, 3)), 0, 255)
            Image.fromarray(noisy.astype(np.uint8)).save(path, quality=90)
    prng = random.Random(1)
    records = []
    for i in range(n_records):
        turns = []
        for r in range(prng.randint(1, 4)):
            turns.append({"from": "human", "value": ("<image>\n" if r == 0 else "")
                          + _sentence(prng, prng.randint(5, 20))})
            turns.append({"from": "gpt", "value": _sentence(prng, prng.randint(10, 80))})
        records.append({"id": str(i), "image": f"jpeg/{i % n_images}.jpg",
                        "conversations": turns})
    data_file = os.path.join(CACHE, f"records_{n_records}.json")
    with open(data_file, "w") as f:
        json.dump(records, f)
    return data_file, records


def reference_path(records, hf_dir, n):
    """Per sample, as LazySupervisedDataset.__getitem__ + preprocess_v1 + the collator."""
    import torch
    from transformers import AutoTokenizer, CLIPImageProcessor

    from sgv_jax.data import templates, tokenize
    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    proc = CLIPImageProcessor(size={"shortest_edge": 336},
                              crop_size={"height": 336, "width": 336})
    background = tuple(int(x * 255) for x in proc.image_mean)

    class HF:  # the Tokenizer protocol over the transformers tokenizer
        bos_id, eos_id, pad_id = 1, 2, 0

        def encode(self, text):
            return hf_tok(text).input_ids

    tok = HF()
    start, cpu = time.perf_counter(), _cpu_seconds()
    for record in records[:n]:
        image = Image.open(os.path.join(CACHE, record["image"])).convert("RGB")
        image = _expand2square(image, background)
        pixels = proc.preprocess(image, return_tensors="pt")["pixel_values"][0]
        messages = [templates.move_image_token_first(t["value"]) for t in record["conversations"]]
        ids, labels = tokenize.preprocess_v1(messages, True, tok)
        ids, labels = torch.tensor(ids), torch.tensor(labels)
        torch.nn.utils.rnn.pad_sequence([ids], batch_first=True, padding_value=0)
        torch.stack([pixels])
    return Rate(n, time.perf_counter() - start, _cpu_seconds() - cpu)


def _cpu_seconds() -> float:
    """CPU seconds of this process, all threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Rate:
    """n samples in `wall` seconds using `cpu` CPU-seconds (`worker_cpu` of them in workers)."""

    def __init__(self, n: int, wall: float, cpu: float, worker_cpu: float = 0.0):
        self.n, self.wall, self.cpu, self.worker_cpu = n, wall, cpu, worker_cpu

    @property
    def per_core(self) -> float:
        return self.n / self.cpu

    @property
    def per_second(self) -> float:
        return self.n / self.wall


def _expand2square(img, background):
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    result = Image.new(img.mode, (side, side), background)
    result.paste(img, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return result


def ours(data_file, hf_dir, n, workers, batch=8):
    import psutil

    from sgv_jax.data import pipeline
    it = pipeline.make_dataset(data_file, CACHE, hf_dir, "v1", aspect="pad",
                               global_batch_size=batch, shard_index=0, shard_count=1,
                               num_epochs=None, worker_count=workers)
    for _ in range(max(1, workers)):  # worker start-up and first batches are not throughput
        next(it)
    children = psutil.Process().children(recursive=True)

    def worker_cpu():
        total = 0.0
        for child in children:
            try:
                times = child.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    start, cpu, wcpu = time.perf_counter(), _cpu_seconds(), worker_cpu()
    for _ in range(n // batch):
        next(it)
    wall, cpu, wcpu = time.perf_counter() - start, _cpu_seconds() - cpu, worker_cpu() - wcpu
    it.close()
    return Rate((n // batch) * batch, wall, cpu + wcpu, wcpu)


def samples_per_chip_second(chip: str, mfu: float) -> tuple[float, str]:
    """Samples/s one chip consumes running the ShareGPT4V-7B stage-2 step (configs/finetune.py)
    at the planner's step time: model FLOPs per sample / (chip peak x MFU), as launch/plan.py."""
    import jax

    from configs import finetune
    from sgv_jax.chips import CHIPS
    from sgv_jax.models.config import get_preset
    from sgv_jax.train.layout import build_layout

    config = finetune.get_config()
    config.global_batch_size = config.per_device_batch_size  # one device, no accumulation
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    layout = build_layout(config, get_preset(config.model), mesh, total_steps=1)
    per_sample = layout.model_flops_per_step() / config.per_device_batch_size
    rate = CHIPS[chip].peak_flops * mfu / per_sample
    step = config.per_device_batch_size / rate
    return rate, (f"{config.model}, {config.data.max_length} tokens, {per_sample / 1e12:.1f} "
                  f"TFLOP/sample; {config.per_device_batch_size} samples per {chip} step of "
                  f"{step:.2f} s at {mfu:.0%} MFU")


def big_file(n):
    """A JSON list of n ShareGPT4V-PT-like records (~1.2 KB each), written once."""
    path = os.path.join(CACHE, f"big_{n}.json")
    if os.path.isfile(path):
        return path
    rng = random.Random(2)
    captions = [" ".join(_word(rng) for _ in range(150)) for _ in range(1000)]
    with open(path + ".tmp", "w") as f:
        f.write("[")
        for i in range(n):
            record = {"id": f"sa_{i}", "image": "jpeg/0.jpg", "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the image?"},
                {"from": "gpt", "value": captions[i % 1000]}]}
            f.write(("," if i else "") + json.dumps(record))
        f.write("]")
    os.replace(path + ".tmp", path)
    return path


def _child(mode, path, hf_dir):
    start = time.perf_counter()
    if mode == "index":
        from sgv_jax.data import records
        records.build_index(path)
    else:
        from sgv_jax.data import pipeline
        it = pipeline.make_dataset(path, CACHE, hf_dir, "plain", global_batch_size=8,
                                   shard_index=0, shard_count=1)
        next(it)
    seconds = time.perf_counter() - start
    # VmHWM, not getrusage: Linux carries ru_maxrss across exec from the (big) parent.
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    print(json.dumps({"seconds": seconds, "peak_rss_mb": hwm / 1024}))


def _run_child(mode, path, hf_dir):
    out = subprocess.run([sys.executable, __file__, "--child", mode, path, hf_dir],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--big-records", type=int, default=1_200_000)
    parser.add_argument("--chip", default="v5p", help="for the cores-per-chip line (chips.py)")
    parser.add_argument("--mfu", type=float, default=0.4, help="as launch/plan.py --mfu")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(*args.child)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t = time.perf_counter()
    hf_dir = llama_size_tokenizer()
    from sgv_jax.data import tokenize
    vocab = tokenize.load_tokenizer(hf_dir).vocab_size
    print(f"tokenizer: {vocab}-piece LLaMA-like vocabulary ready in "
          f"{time.perf_counter() - t:.0f} s")
    data_file, recs = make_dataset_files(args.samples)
    print("load {:.2f} {:.2f} {:.2f} (before timing)".format(*os.getloadavg()))
    ref = reference_path(recs, hf_dir, args.samples)
    one = ours(data_file, hf_dir, args.samples, 0)
    print(f"reference path, in process: {ref.per_core:7.1f} samples/s per core "
          f"({ref.per_second:.1f} samples/s wall)")
    print(f"ours, no workers:           {one.per_core:7.1f} samples/s per core "
          f"({one.per_second:.1f} samples/s wall)")
    print(f"ratio ours/reference per core: {one.per_core / ref.per_core:.2f}x (goal >= 1.5x; "
          f"wall-clock ratio {one.per_second / ref.per_second:.2f}x)")
    many = ours(data_file, hf_dir, args.samples * 4, args.workers)
    main_cpu = many.cpu - many.worker_cpu
    print(f"ours, {args.workers} worker processes: {many.per_core:7.1f} samples/s per core, "
          f"{many.per_second:.1f} samples/s wall ({many.per_second / one.per_second:.2f}x the "
          f"in-process wall rate; machine has {os.cpu_count()} cores); CPU ms per sample: "
          f"workers {1e3 * many.worker_cpu / many.n:.1f}, main process "
          f"{1e3 * main_cpu / many.n:.1f} (in process: {1e3 / one.per_core:.1f} in all)")
    chip_rate, how = samples_per_chip_second(args.chip, args.mfu)
    print(f"host cores per {args.chip} chip to feed the step: {chip_rate / one.per_core:.2f} "
          f"({chip_rate:.2f} samples/s per chip / {one.per_core:.1f} per core; {how})")
    print("load {:.2f} {:.2f} {:.2f} (after timing)".format(*os.getloadavg()))
    if args.big_records:
        t = time.perf_counter()
        path = big_file(args.big_records)
        size = os.path.getsize(path) / 2**20
        print(f"{args.big_records} records, {size:.0f} MiB JSON list "
              f"(written in {time.perf_counter() - t:.0f} s)")
        index = _run_child("index", path, hf_dir)
        print(f"  index build (once): {index['seconds']:.1f} s, peak RSS "
              f"{index['peak_rss_mb']:.0f} MiB")
        first = _run_child("first", path, hf_dir)
        print(f"  open + first batch (index built): {first['seconds']:.2f} s, peak RSS "
              f"{first['peak_rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
