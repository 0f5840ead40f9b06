"""Tiny random stand-ins for the files a ShareGPT4V-7B run starts from, with the real folder
names and formats, so every command of BUILD.md can be run on a CPU in seconds.

    python -m tests.standins --out standins

writes
    OUT/clip-vit-large-patch14-336/        CLIPModel.save_pretrained (image 28, patch 14) +
                                           preprocessor_config.json, as the hub folder has
    OUT/vicuna-7b-v1.5/                    LlamaForCausalLM in fp16, two `pytorch_model-*.bin`
                                           shards + index (as lmsys ships it), a LLaMA-like
                                           sentencepiece tokenizer.model + tokenizer_config.json
    OUT/llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5/mm_projector.bin
                                           keys model.mm_projector.{0,2}.{weight,bias} (bf16)
    OUT/data/sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json          stage 1 captions
    OUT/data/sharegpt4v/sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json  stage 2 (v1)
    OUT/data/{coco/train2017,sam/images,llava/llava_pretrain/images/00000}/*.jpg

Shapes and formats follow REFERENCE.md §2 and §3.8; only the sizes are tiny and the weights
random. Builders are shared with the conversion and data tests.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

from tests.test_convert_helpers import write_json
from tests.test_data_helpers import (
    SYSTEM,
    train_tokenizer,
    v1_record,
    write_hf_dir,
    write_image,
)

CLIP_DIR = "clip-vit-large-patch14-336"
LLM_DIR = "vicuna-7b-v1.5"
PROJECTOR_DIR = "llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5"
PT_JSON = "sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json"
SFT_JSON = "sharegpt4v/sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json"

IMAGE_SIZE, PATCH = 28, 14  # 4 image tokens
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
          "num_attention_heads": 2, "patch_size": PATCH, "image_size": IMAGE_SIZE,
          "projection_dim": 16}
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": False}
VOCAB = 512

COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
THINGS = ["cat", "dog", "car", "boat", "house", "tree", "bird", "horse"]
PLACES = ["on a sofa", "in a field", "near the sea", "on a street", "under a bridge",
          "in a kitchen", "by a lake", "in the snow"]
PT_PROMPT = "<image>\nAnalyze the image in a comprehensive and detailed manner."


def _caption(i: int) -> str:
    c, t, p = COLOURS[i % 8], THINGS[(i * 3) % 8], PLACES[(i * 5) % 8]
    return (f"The image shows a {c} {t} {p}. In the background there are {i % 7 + 2} "
            f"smaller objects, and the light comes from the left.")


def _image_paths(n: int) -> list[str]:
    """Paths as they look in the ShareGPT4V files (REFERENCE §3.8): COCO, SAM, LLaVA-558K."""
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(f"coco/train2017/{9 + 16 * i:012d}.jpg")
        elif kind == 1:
            out.append(f"sam/images/sa_{223 + i}.jpg")
        else:
            out.append(f"llava/llava_pretrain/images/00000/{12 + i:09d}.jpg")
    return out


def pretrain_records(n: int) -> list[dict]:
    return [{"id": os.path.splitext(os.path.basename(path))[0], "image": path,
             "conversations": [{"from": "human", "value": PT_PROMPT},
                               {"from": "gpt", "value": _caption(i)}]}
            for i, path in enumerate(_image_paths(n))]


def finetune_records(n: int) -> list[dict]:
    """v1 conversations: one- and two-round image questions, every fourth one text-only."""
    records = []
    for i, path in enumerate(_image_paths(n)):
        c, t = COLOURS[i % 8], THINGS[(i * 3) % 8]
        if i % 4 == 3:
            records.append(v1_record(f"text_{i}", [
                f"Write one sentence about a {c} {t}.",
                f"A {c} {t} can be seen from far away."]))
            continue
        turns = ["<image>\nWhat is in the picture?", f"A {c} {t}."]
        if i % 2:
            turns += ["What colour is it?", f"It is {c}."]
        records.append(v1_record(f"{i:012d}", turns, image=path))
    return records


def _tokenizer_lines(records_pt, records_ft) -> list[str]:
    lines = [SYSTEM, PT_PROMPT.replace("<image>\n", "")]
    lines += [r["conversations"][1]["value"] for r in records_pt]
    lines += [f"USER: {a} ASSISTANT: {b}" for r in records_ft
              for a, b in zip(r["conversations"][::2], r["conversations"][1::2])
              for a, b in [(a["value"].replace("<image>\n", ""), b["value"])]]
    return lines * 4


def save_clip(folder: str, seed: int = 0, with_tokenizer: bool = False):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(vision_config=VISION,
                        text_config={"hidden_size": 16, "intermediate_size": 32,
                                     "num_hidden_layers": 1, "num_attention_heads": 2},
                        projection_dim=16)
    model = CLIPModel(config)
    model.save_pretrained(folder)
    # What BUILD.md downloads of openai/clip-vit-large-patch14-336: config, weights and the
    # image processor. The hub folder also holds CLIP's text tokenizer (vocab.json, merges.txt,
    # tokenizer.json, ...); `with_tokenizer` adds a tiny one, to test that it is not picked up.
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                       crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    if with_tokenizer:
        _save_clip_tokenizer(folder)
    return model


def _save_clip_tokenizer(folder: str) -> None:
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {t: i for i, t in enumerate([*letters, *(c + "</w>" for c in letters),
                                         "<|startoftext|>", "<|endoftext|>"])}
    write_json(os.path.join(folder, "vocab.json"), vocab)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    CLIPTokenizer(os.path.join(folder, "vocab.json"),
                  os.path.join(folder, "merges.txt")).save_pretrained(folder)


def save_vicuna(folder: str, tokenizer_model: str, vocab: int, legacy: bool | None, seed: int = 0):
    """fp16 LlamaForCausalLM as `pytorch_model-0000i-of-00002.bin` + index, + tokenizer files."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, torch_dtype="float16", **TEXT)
    model = LlamaForCausalLM(config).to(torch.float16)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    os.makedirs(folder, exist_ok=True)
    keys = sorted(state)
    weight_map = {}
    for i, chunk in enumerate(np.array_split(np.arange(len(keys)), 2)):
        name = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({keys[j]: state[keys[j]] for j in chunk}, os.path.join(folder, name))
        weight_map.update({keys[j]: name for j in chunk})
    write_json(os.path.join(folder, "pytorch_model.bin.index.json"),
               {"metadata": {"total_size": sum(v.numel() * 2 for v in state.values())},
                "weight_map": weight_map})
    config_dict = config.to_dict()
    config_dict.update(architectures=["LlamaForCausalLM"], torch_dtype="float16")
    write_json(os.path.join(folder, "config.json"), config_dict)
    write_hf_dir(folder, tokenizer_model, legacy)
    return state


def save_projector(path: str, d_vis: int, d_llm: int, seed: int = 0) -> dict:
    """LLaVA-1.5 stage-1 `mm_projector.bin` (REFERENCE §2.1): Linear(d_vis→d), GELU, Linear(d→d)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state = {"model.mm_projector.0.weight": torch.randn(d_llm, d_vis, generator=g),
             "model.mm_projector.0.bias": torch.randn(d_llm, generator=g),
             "model.mm_projector.2.weight": torch.randn(d_llm, d_llm, generator=g),
             "model.mm_projector.2.bias": torch.randn(d_llm, generator=g)}
    state = {k: (0.02 * v).to(torch.bfloat16) for k, v in state.items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)
    return state


def write_data(folder: str, records_pt: list[dict], records_ft: list[dict]) -> dict[str, str]:
    for i, path in enumerate(sorted({r["image"] for r in records_pt + records_ft if "image" in r})):
        write_image(os.path.join(folder, path), 40 + 4 * (i % 5), 30 + 3 * (i % 4), seed=i,
                    fmt="JPEG")
    out = {}
    for name, records in ((PT_JSON, records_pt), (SFT_JSON, records_ft)):
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(records, f)
        out[name] = path
    return out


def build(out: str, n_pretrain: int = 48, n_finetune: int = 32,
          legacy: bool | None = False, clip_tokenizer: bool = False) -> dict[str, str]:
    """Writes every stand-in under `out`; returns their paths by role."""
    os.makedirs(out, exist_ok=True)
    records_pt, records_ft = pretrain_records(n_pretrain), finetune_records(n_finetune)
    model_file = train_tokenizer(os.path.join(tempfile.gettempdir(), "sgv_jax_standins"), vocab_size=VOCAB,
                                 lines=_tokenizer_lines(records_pt, records_ft))
    paths = {"clip": os.path.join(out, CLIP_DIR), "llm": os.path.join(out, LLM_DIR),
             "projector": os.path.join(out, PROJECTOR_DIR, "mm_projector.bin"),
             "data": os.path.join(out, "data")}
    save_clip(paths["clip"], with_tokenizer=clip_tokenizer)
    save_vicuna(paths["llm"], model_file, VOCAB, legacy)
    save_projector(paths["projector"], VISION["hidden_size"], TEXT["hidden_size"])
    files = write_data(paths["data"], records_pt, records_ft)
    paths.update(pretrain_json=files[PT_JSON], finetune_json=files[SFT_JSON])
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to create the stand-ins in")
    parser.add_argument("--legacy", choices=("true", "false", "absent"), default="false",
                        help="`legacy` in vicuna's tokenizer_config.json (default false)")
    parser.add_argument("--clip-tokenizer", action="store_true",
                        help="also write CLIP's text tokenizer files, as the full hub folder has")
    args = parser.parse_args(argv)
    legacy = {"true": True, "false": False, "absent": None}[args.legacy]
    for role, path in build(args.out, legacy=legacy, clip_tokenizer=args.clip_tokenizer).items():
        print(f"{role:14s} {path}")


if __name__ == "__main__":
    main()
