"""A checkpoint with adapters is used as it is (no merge): `launch/generate.py run`, an eval
`run` and a server request give the same greedy answers as the checkpoint with the adapters merged
by `--merge-lora`'s arithmetic (`convert.adapters.merge_group`, PEFT's merge_and_unload), and
different ones from the base alone, so the adapters (non-zero B) are really applied."""

import json
import os

import jax
import numpy as np
import pytest

from sgv_jax.checkpoint_sgv import save_sgv
from sgv_jax.convert.adapters import merge_group
from sgv_jax.models import llava, lora
from sgv_jax.models.config import LoraConfig
from sgv_jax.models.storage import flatten, unflatten
from tests.serve_helpers import chat_body, running_server
from tests.test_eval_run import load_launcher as load_eval
from tests.test_eval_run import write_pope
from tests.test_generate_cli import load_launcher as load_generate
from tests.test_generate_helpers import tiny_cfg, tokenizer_dir, write_images

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("lora_use"))
    tok = tokenizer_dir(folder)
    cfg = tiny_cfg().replace(lora=LoraConfig(rank=4, alpha=8.0, dropout=0.05))
    flat = flatten(llava.init(cfg, jax.random.key(0)))
    for i, path in enumerate(sorted(p for p in flat if p.endswith("/lora_b"))):
        flat[path] = 0.3 * jax.random.normal(jax.random.key(i + 1), flat[path].shape)
    flat = {p: np.asarray(v) for p, v in flat.items()}
    plain = cfg.replace(lora=None)
    ckpts = {
        "adapters": save_sgv(os.path.join(folder, "adapters"), cfg, unflatten(flat),
                             tokenizer_dir=tok),
        "merged": save_sgv(os.path.join(folder, "merged"), plain,
                           unflatten(merge_group(flat, cfg.lora)), tokenizer_dir=tok),
        "base": save_sgv(os.path.join(folder, "base"), plain,
                         lora.without_adapters(unflatten(flat)), tokenizer_dir=tok),
    }
    images = write_images(os.path.join(folder, "images"), 2)
    return {"ckpts": ckpts, "images": images, "folder": folder}


def generate_run(ckpt, image, capsys) -> str:
    load_generate().main(["run", "--checkpoint", ckpt, "--image", image, "--prompt", QUESTION,
                          "--max-new-tokens", "8", "--temperature", "0"])
    return capsys.readouterr().out.strip()


def test_generate_run_with_adapters_equals_the_merged_export(files, capsys):
    for image in files["images"]:
        got = {k: generate_run(c, image, capsys) for k, c in files["ckpts"].items()}
        assert got["adapters"] == got["merged"], got
        assert got["adapters"] != got["base"], got


def test_eval_run_with_adapters_equals_the_merged_export(files, capsys):
    data = write_pope(os.path.join(files["folder"], "eval"), 6)
    texts = {}
    for kind in ("adapters", "merged", "base"):
        out = os.path.join(files["folder"], "eval", f"{kind}.jsonl")
        load_eval().main(["run", "--benchmark", "pope", "--data", data, "--checkpoint",
                          files["ckpts"][kind], "--out", out, "--batch", "4", "--devices", "1",
                          "--max-new-tokens", "6"])
        with open(out) as f:
            texts[kind] = [json.loads(line)["text"] for line in f]
    capsys.readouterr()
    assert len(texts["adapters"]) == 6 and texts["adapters"] == texts["merged"], texts
    assert texts["adapters"] != texts["base"], texts


@pytest.mark.slow
def test_server_with_adapters_answers_as_the_merged_export(files, capsys):
    import httpx

    image = files["images"][0]
    want = generate_run(files["ckpts"]["merged"], image, capsys)
    with running_server(files["ckpts"]["adapters"], "--no-web-chat",
                        log_path=os.path.join(files["folder"], "server.log")) as url:
        reply = httpx.post(url + "/v1/chat/completions", timeout=120,
                           json=chat_body(QUESTION, image, temperature=0, max_tokens=8))
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == want
