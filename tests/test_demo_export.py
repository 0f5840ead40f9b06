"""The demo model leaves the project: the demo preset, trained a few steps on the demo questions,
exports with launch/convert.py to llava-hf, loads in transformers (LlavaForConditionalGeneration +
AutoProcessor) and answers the held-out demo questions exactly as `launch/generate.py run` does;
exported to the original LLaVA layout, its LLM, tower and tokenizer load in transformers and,
composed as LLaVA composes them, answer the same."""

import glob
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from sgv_jax.data.tokenize import load_tokenizer
from sgv_jax.demo.data import TOKENIZER_VOCAB
from sgv_jax.generation import prompts
from sgv_jax.models import get_preset
from sgv_jax.train.loop import train
from tests.test_generate_cli import load_launcher
from tests.train_helpers import DEMO_DATA, REPO, demo_data, load_config

pytestmark = pytest.mark.torch
MAX_NEW = 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_export")
    workdir = str(root / "finetune")
    train(load_config("finetune", init_from="", max_steps=30, global_batch_size=16,
                      per_device_batch_size=16, log_every=10, checkpoint_every=1000,
                      eval_every=1000, **{"optim.lr": 3e-3}), workdir)
    ckpt = os.path.join(workdir, "sgv")
    for fmt in ("llava-hf", "llava"):
        done = convert(ckpt, fmt, root / fmt)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr and "torchvision" not in done.stderr
        if fmt == "llava-hf":
            assert "added <image>=500, <pad>=501 in unused rows" in done.stdout
    with open(os.path.join(DEMO_DATA, "eval_answers.jsonl")) as f:
        questions = [json.loads(line) for line in f][:6]  # three kinds, two images
    return {"ckpt": ckpt, "root": root, "questions": questions}


def convert(ckpt, fmt, dst):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", "convert.py"), "--from",
                           "sgv", "--src", str(ckpt), "--to", fmt, "--dst", str(dst), "--quiet"],
                          capture_output=True, text=True, check=False)


def project_answer(ckpt, question, image, capsys):
    """What `launch/generate.py run` prints (greedy, v1)."""
    code = load_launcher().main(["run", "--checkpoint", ckpt, "--image", image, "--prompt",
                                 question, "--max-new-tokens", str(MAX_NEW)])
    assert code == 0
    return capsys.readouterr().out.strip()


@pytest.mark.slow
def test_a_vocab_with_unused_rows_takes_image_and_pad_there(tmp_path):
    """The demo's case (500 tokens, 512 rows) on the tiny model: 400 tokens in 416 rows."""
    from safetensors import safe_open

    from tests.test_generate_helpers import TOKENIZER_VOCAB as TOKENS
    from tests.test_generate_helpers import write_checkpoint

    rows = TOKENS + 16
    ckpt = write_checkpoint(str(tmp_path), vocab_size=rows)
    done = convert(ckpt, "llava-hf", tmp_path / "hf")
    assert done.returncode == 0, done.stderr
    assert (f"added <image>={TOKENS}, <pad>={TOKENS + 1} in unused rows (the tokenizer has "
            f"{TOKENS} tokens, the vocab {rows} rows; vocab unchanged)") in done.stdout
    with open(tmp_path / "hf" / "config.json") as f:
        config = json.load(f)
    assert config["image_token_index"] == TOKENS and config["pad_token_id"] == TOKENS + 1
    assert config["text_config"]["vocab_size"] == rows
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "np") as f:
        assert f.get_tensor("language_model.lm_head.weight").shape[0] == rows


def test_demo_tokenizer_leaves_rows_for_image_and_pad():
    assert TOKENIZER_VOCAB + 2 <= get_preset("demo").text.vocab_size
    assert load_tokenizer(demo_data()["tokenizer"]).vocab_size == TOKENIZER_VOCAB


@pytest.mark.slow
def test_llava_hf_export_answers_in_transformers_as_generate_run(exported, capsys):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    hf_dir = str(exported["root"] / "llava-hf")
    processor = AutoProcessor.from_pretrained(hf_dir)
    model = LlavaForConditionalGeneration.from_pretrained(hf_dir, attn_implementation="eager")
    model.eval()
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<image>") == model.config.image_token_index == 500
    for q in exported["questions"]:
        image = os.path.join(DEMO_DATA, q["image"])
        inputs = processor(images=Image.open(image).convert("RGB"), return_tensors="pt",
                           text=prompts.build_prompt("v1", q["question"], has_image=True))
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        theirs = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert theirs.strip(), q  # a few steps already answer in words ("bottom right")
        assert theirs.strip() == project_answer(exported["ckpt"], q["question"], image, capsys), q


def llava_answer(dst, question, image, tokenizer, tower, llm, projector):
    """LLaVA's forward pass written out in torch: second-to-last tower layer without CLS →
    mm_projector (Linear, GELU, Linear) → spliced at the -200 positions (REFERENCE §1.2-1.6)."""
    from transformers import CLIPImageProcessor

    pixels = CLIPImageProcessor.from_pretrained(os.path.join(dst, "vision_tower"))(
        Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        features = tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        w = projector
        hidden = torch.nn.functional.gelu(features @ w["0.weight"].T + w["0.bias"])
        image_rows = (hidden @ w["2.weight"].T + w["2.bias"])[0]
        text = prompts.build_prompt("v1", question, has_image=True)
        before, after = text.split("<image>")
        ids_before = tokenizer(before).input_ids
        ids_after = tokenizer(after, add_special_tokens=False).input_ids
        embed = llm.get_input_embeddings()
        embeds = torch.cat([embed(torch.tensor(ids_before)), image_rows,
                            embed(torch.tensor(ids_after))])[None]
        out = llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2]),
                           max_new_tokens=MAX_NEW, do_sample=False,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    return tokenizer.decode(out[0], skip_special_tokens=True).strip()


@pytest.mark.slow
def test_original_layout_export_loads_in_transformers_and_answers_the_same(exported, capsys):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, CLIPVisionModel, LlamaForCausalLM

    dst = str(exported["root"] / "llava")
    weights = {}
    for shard in glob.glob(os.path.join(dst, "*.safetensors")):
        weights.update(load_file(shard))
    prefix = "model.mm_projector."
    projector = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    assert sorted(projector) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    llm = LlamaForCausalLM.from_pretrained(dst, attn_implementation="eager").eval()
    assert llm.config.vocab_size == get_preset("demo").text.vocab_size  # images use -200
    tower = CLIPVisionModel.from_pretrained(os.path.join(dst, "vision_tower")).eval()
    tokenizer = AutoTokenizer.from_pretrained(dst)
    for q in exported["questions"][:3]:
        image = os.path.join(DEMO_DATA, q["image"])
        theirs = llava_answer(dst, q["question"], image, tokenizer, tower, llm, projector)
        assert theirs == project_answer(exported["ckpt"], q["question"], image, capsys), q
    assert "<image>" not in tokenizer.get_vocab()  # the original marks images with -200
