"""Questions/s of `launch/eval.py run` (batch 1 and 16) vs HF transformers answering the same
questions one at a time, as LLaVA's model_vqa_loader.py does, in the same process.

    python benchmarks/bench_eval.py [--questions 48] [--new-tokens 8] [--batches 1,16]

One random LlavaForConditionalGeneration (CLIP 4x256 at 112 px = 64 image tokens, LLaMA 6x512,
vocab 401 = the test tokenizer + the image token; fp32, sdpa attention, torch on 2 threads); ours gets the same weights
through the llava-hf converter. A POPE-format benchmark of N questions over random JPEGs is
written to a temp folder; both sides decode greedily with the same prompt ids (LLaVA's
vicuna_v1 prompt, the test tokenizer), so they produce the same answers (checked and printed).
Ours: `sgv_jax.eval.runner.run_benchmark`, the library call behind `launch/eval.py run`,
including image decoding, padding, the answers file; a first run compiles (reported apart), the
timed run writes a fresh file. HF: per question, load + preprocess the image, `generate`.
Prints questions/s and the ratio (goal >= 5x at batch 16).
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from sgv_jax.convert.llava_hf import from_llava_hf_state_dict
from sgv_jax.data.images import ImageConfig, ImageProcessor
from sgv_jax.data.tokenize import load_tokenizer
from sgv_jax.eval import prompts, questions
from sgv_jax.eval.benchmarks import get_benchmark
from sgv_jax.eval.runner import run_benchmark
from sgv_jax.generation import prompts as gen_prompts
from sgv_jax.generation.generator import Generator, local_mesh
from tests.test_data_helpers import tiny_tokenizer_path, write_image

# The test tokenizer's 400 pieces + the image token (a random model must only emit ids the
# tokenizer can decode); pad = unk as LLaVA's Vicuna.
VOCAB, IMAGE_ID, PAD = 401, 400, 0


def build_hf_model(layers: int):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                              num_attention_heads=4, patch_size=14, image_size=112)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=1376,
                       num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
                       rms_norm_eps=1e-5, max_position_embeddings=1024, pad_token_id=PAD)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_ID)
    config._attn_implementation = "sdpa"  # HF's default on CPU
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval(), config


def write_benchmark(folder: str, n: int) -> str:
    data = os.path.join(folder, "pope")
    rows = []
    for i in range(n):
        image = f"{i:05d}.jpg"
        write_image(os.path.join(data, "val2014", image), 96 + 7 * (i % 9), 80 + 5 * (i % 7),
                    seed=i, fmt="JPEG")
        thing = ("dog", "red car", "person in a hat", "kite")[i % 4]
        rows.append({"question_id": i, "image": image, "category": "random",
                     "text": f"Is there a {thing} in the image?\nAnswer the question using a "
                             "single word or phrase."})
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "llava_pope_test.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return data


def hf_answers(model, tokenizer, items, cfg, new_tokens: int) -> list[str]:
    """model_vqa_loader.py's loop: one question, one generate call."""
    process = ImageProcessor(ImageConfig(size=cfg.vision.image_size, aspect="pad"))
    texts = []
    for item in items:
        ids = gen_prompts.encode_prompt(prompts.conversation_prompt(item.message), tokenizer,
                                        cfg.num_image_tokens, True, cfg.image_token_id)
        pixels = process(questions.load_image(item.image)).transpose(2, 0, 1)[None]
        with torch.inference_mode():
            out = model.generate(input_ids=torch.tensor(ids[None], dtype=torch.long),
                                 attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                                 pixel_values=torch.from_numpy(np.ascontiguousarray(pixels)),
                                 max_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_id, pad_token_id=PAD)
        new, _ = gen_prompts.generated_ids(out[0, len(ids):].numpy(), (tokenizer.eos_id,))
        texts.append(gen_prompts.decode_text(tokenizer, new).strip())
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"load before: {os.getloadavg()}")
    folder = tempfile.mkdtemp(prefix="bench_eval_")
    data = write_benchmark(folder, args.questions)
    bench = get_benchmark("pope")
    items = questions.load_items(bench, data)
    tokenizer = load_tokenizer(tiny_tokenizer_path())
    model, hf_config = build_hf_model(args.layers)
    cfg, params = from_llava_hf_state_dict(model.state_dict(), hf_config.to_dict())
    generator = Generator.from_params(cfg, params, tokenizer, mesh=local_mesh())

    start = time.perf_counter()
    want = hf_answers(model, tokenizer, items, cfg, args.new_tokens)
    hf_rate = len(items) / (time.perf_counter() - start)
    print(f"HF transformers, one by one: {hf_rate:.2f} questions/s")
    for batch in map(int, args.batches.split(",")):
        kw = {"model_id": "bench", "batch_size": batch, "max_new_tokens": args.new_tokens,
              "progress": False, "shard": (0, 1)}
        start = time.perf_counter()
        run_benchmark(generator, bench, data, os.path.join(folder, f"warm{batch}.jsonl"), **kw)
        warm = time.perf_counter() - start
        out = os.path.join(folder, f"answers{batch}.jsonl")
        start = time.perf_counter()
        run_benchmark(generator, bench, data, out, **kw)
        rate = len(items) / (time.perf_counter() - start)
        with open(out) as f:
            got = [json.loads(line)["text"] for line in f]
        same = sum(a == b for a, b in zip(got, want))
        print(f"sgv_jax run, batch {batch}: {rate:.2f} questions/s = {rate / hf_rate:.2f}x HF "
              f"(first run incl. compile {warm:.1f} s; answers equal to HF: {same}/{len(want)})")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
