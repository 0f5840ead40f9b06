"""`run` on tiny models: LLaVA's prompt strings, HF-greedy answers, batch- and device-count
invariance, resume after kill -9, and the CLI end to end (run → score → report)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from sgv_jax.eval import answers, prompts, questions
from sgv_jax.eval.benchmarks import get_benchmark
from sgv_jax.eval.runner import answer_items, run_benchmark
from tests import eval_refs
from tests.eval_refs import write_jsonl
from tests.test_data_helpers import write_image
from tests.test_generate_helpers import tiny_generator, write_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_launcher():
    spec = importlib.util.spec_from_file_location("launch_eval",
                                                  os.path.join(ROOT, "launch", "eval.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_pope(folder, n: int) -> str:
    """A POPE folder in LLaVA's layout: n questions over images of assorted sizes."""
    data = os.path.join(folder, "pope")
    rows, labels = [], {c: [] for c in ("adversarial", "popular", "random")}
    for i in range(n):
        category = ("adversarial", "popular", "random")[i % 3]
        image = f"COCO_val2014_{i:012d}.jpg"
        write_image(os.path.join(data, "val2014", image), 20 + 3 * i % 17, 14 + 5 * i % 11,
                    seed=i, fmt="JPEG")
        thing = ("dog", "red car", "person", "kite")[i % 4]
        text = f"Is there a {thing} in the image?" + (
            "\nAnswer the question using a single word or phrase." if i % 2 else "")
        rows.append({"question_id": i + 1, "image": image, "text": text, "category": category})
        labels[category].append({"label": "yes" if i % 5 else "no"})
    write_jsonl(os.path.join(data, "llava_pope_test.jsonl"), rows)
    for category, lines in labels.items():
        write_jsonl(os.path.join(data, "coco", f"coco_pope_{category}.json"), lines)
    return data


# --- prompts as LLaVA's scripts build them (conversation.py from llava-torch) ---

def llava_prompt(qs: str, mode: str = "vicuna_v1") -> str:
    conv = eval_refs.load_llava_module("conversation.py", "llava_conv").conv_templates[mode].copy()
    conv.append_message(conv.roles[0], qs)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def test_loader_prompt_equals_model_vqa_loader(tmp_path):
    data = write_pope(str(tmp_path), 2)
    items = questions.load_items(get_benchmark("pope"), data)
    for item, line in zip(items, questions.read_jsonl(os.path.join(data,
                                                                    "llava_pope_test.jsonl"))):
        qs = "<image>" + "\n" + line["text"]  # model_vqa_loader.py CustomDataset.__getitem__
        assert prompts.conversation_prompt(item.message) == llava_prompt(qs)
        assert item.recorded_prompt == line["text"]


def test_science_prompt_equals_model_vqa_science(tmp_path):
    lines = [{"id": "7", "image": "7/image.png", "conversations": [
        {"from": "human", "value": "Context: N/A\nQuestion: Which is a mammal?\nOptions: (A) cat "
                                   "(B) fish\n<image>"}]},
             {"id": "8", "conversations": [{"from": "human", "value": "Question: 2+2?\n"}]}]
    for line in lines:
        message, recorded = prompts.science_message(line)
        # model_vqa_science.py eval_model with --single-pred-prompt
        qs = line["conversations"][0]["value"].replace("<image>", "").strip()
        cur_prompt = qs
        if "image" in line:
            qs = "<image>" + "\n" + qs
            cur_prompt = "<image>" + "\n" + cur_prompt
        qs = qs + "\n" + "Answer with the option's letter from the given choices directly."
        cur_prompt = cur_prompt + "\n" + "Answer with the option's letter from the given " \
                                         "choices directly."
        assert prompts.conversation_prompt(message) == llava_prompt(qs)
        assert recorded == cur_prompt


def test_mmbench_prompts_equal_model_vqa_mmbench_all_rounds(tmp_path):
    from tests.test_eval_metrics_choice import mmbench_tsv

    path = tmp_path / "mmbench_cn_dev.tsv"
    mmbench_tsv(path)
    suffixes = {"en": "Answer with the option's letter from the given choices directly.",
                "cn": "请直接回答选项字母。"}
    for lang, suffix in suffixes.items():
        items = questions.mmbench_items(pd.read_table(path), lang, None, True)
        want = []
        for _, row in pd.read_table(path).iterrows():  # model_vqa_mmbench.py, --all-rounds
            options = [row[c] for c in "ABCD" if not prompts.is_none(row[c])]
            for round_idx in range(len(options)):
                question = row["question"]
                if not prompts.is_none(row["hint"]):
                    question = row["hint"] + "\n" + question
                for option_char, option in zip("ABCD"[:len(options)], options):
                    question = question + "\n" + option_char + ". " + option
                want.append((int(row["index"]), round_idx, question,
                             llava_prompt("<image>" + "\n" + question + "\n" + suffix)))
                options = options[1:] + options[:1]
        got = [(it.question_id, dict(it.extra)["round_id"], it.recorded_prompt,
                prompts.conversation_prompt(it.message)) for it in items]
        assert got == want


def test_qbench_prompt_equals_model_vqa_qbench():
    item = {"img_path": "0.jpg", "question": "How is the clarity?",
            "candidates": ["High", "Medium", "Low"]}
    message, _ = prompts.qbench_message(item)
    # model_vqa_qbench.py: trailing newline kept, llava_v1 system prompt.
    want = item["question"] + "\nChoose between one of the options as follows:\n"
    for choice, ans in zip(["A.", "B.", "C.", "D."], item["candidates"]):
        want += f"{choice} {ans}\n"
    assert prompts.conversation_prompt(message, "llava_v1") == llava_prompt(
        "<image>" + "\n" + want, "llava_v1")


# --- generation ---

def run_to_file(generator, items, path, batch_size, shard=(0, 1)):
    answer_items(generator, items, path, conv_mode="vicuna_v1", max_new_tokens=6, aspect="pad",
                 model_id="tiny", batch_size=batch_size, shard=shard, progress=False)
    answers.merge(path, items)
    with open(path) as f:
        return f.read()


@pytest.fixture(scope="module")
def generator():
    """One tiny model for the generation tests (its init and compiles dominate their time);
    one prompt-length bucket, so each batch size compiles once."""
    return tiny_generator(seed=1, bucket=128)


@pytest.fixture(scope="module")
def pope_items(tmp_path_factory):
    data = write_pope(str(tmp_path_factory.mktemp("pope")), 11)
    return questions.load_items(get_benchmark("pope"), data)


@pytest.mark.slow
def test_answers_equal_hf_greedy(tmp_path, pope_items, highest_precision):
    torch = pytest.importorskip("torch")
    from sgv_jax.convert.llava_hf import from_llava_hf_state_dict
    from sgv_jax.data.images import ImageConfig, ImageProcessor
    from sgv_jax.data.tokenize import load_tokenizer
    from sgv_jax.generation import prompts as gen_prompts
    from sgv_jax.generation.generator import Generator
    from tests.hf_tiny import build_hf_llava, tiny_llava_config
    from tests.test_data_helpers import tiny_tokenizer_path

    tokenizer = load_tokenizer(tiny_tokenizer_path())
    hf_config = tiny_llava_config(vocab=401)  # the tokenizer's 400 + the image token
    model = build_hf_llava(hf_config, seed=3)
    cfg, params = from_llava_hf_state_dict(model.state_dict(), hf_config.to_dict())
    gen = Generator.from_params(cfg, params, tokenizer)
    items = pope_items[:5]
    text = run_to_file(gen, items, str(tmp_path / "a.jsonl"), batch_size=4)
    ours = [json.loads(line)["text"] for line in text.splitlines()]
    process = ImageProcessor(ImageConfig(size=cfg.vision.image_size, aspect="pad"))
    for item, got in zip(items, ours):
        ids = gen_prompts.encode_prompt(prompts.conversation_prompt(item.message), tokenizer,
                                        cfg.num_image_tokens, True, cfg.image_token_id)
        pixels = process(questions.load_image(item.image)).transpose(2, 0, 1)[None]
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor(ids[None], dtype=torch.long),
                                 attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                                 pixel_values=torch.tensor(pixels), max_new_tokens=6,
                                 do_sample=False, eos_token_id=tokenizer.eos_id, pad_token_id=0)
        new, _ = gen_prompts.generated_ids(out[0, len(ids):].numpy(), (tokenizer.eos_id,))
        assert got == gen_prompts.decode_text(tokenizer, new).strip()


@pytest.mark.slow
def test_batch_8_equals_batch_1_and_8_devices_equal_1(tmp_path, generator, pope_items,
                                                        highest_precision):
    from sgv_jax.generation.generator import local_mesh

    single = generator
    one = run_to_file(single, pope_items, str(tmp_path / "b1.jsonl"), batch_size=1)
    eight = run_to_file(single, pope_items, str(tmp_path / "b8.jsonl"), batch_size=8)
    assert one == eight
    sharded = tiny_generator(seed=1, mesh=local_mesh(), bucket=128)
    assert sharded.batch_multiple == 8
    assert run_to_file(sharded, pope_items, str(tmp_path / "d8.jsonl"), batch_size=8) == one
    lines = [json.loads(line) for line in one.splitlines()]
    assert [r["question_id"] for r in lines] == [it.question_id for it in pope_items]
    assert list(lines[0]) == ["question_id", "prompt", "text", "answer_id", "model_id",
                              "metadata"]


@pytest.mark.slow
def test_two_hosts_write_parts_and_the_last_merges(tmp_path, generator, pope_items):
    gen = generator
    out = str(tmp_path / "hosts.jsonl")
    data = os.path.dirname(os.path.dirname(pope_items[0].image))
    bench = get_benchmark("pope")
    kw = {"model_id": "tiny", "batch_size": 2, "max_new_tokens": 3, "progress": False}
    first = run_benchmark(gen, bench, data, out, shard=(0, 2), **kw)
    assert first.merged is None and len(answers.part_files(out)) == 1  # host 1 not done yet
    second = run_benchmark(gen, bench, data, out, shard=(1, 2), **kw)
    assert second.merged == len(pope_items) and answers.part_files(out) == []
    ids = [r["question_id"] for r in answers.read_answers(out)]
    assert ids == [it.question_id for it in pope_items]


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_same_file(tmp_path):
    ckpt = write_checkpoint(str(tmp_path))
    data = write_pope(str(tmp_path), 40)
    flags = ["run", "--benchmark", "pope", "--data", data, "--checkpoint", ckpt,
             "--batch", "1", "--devices", "1", "--max-new-tokens", "12"]
    killed = str(tmp_path / "killed.jsonl")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch", "eval.py"), *flags,
                             "--out", killed], env=env, stderr=subprocess.DEVNULL)
    part = answers.part_path(killed, 0, 1)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(part) and len(answers.read_answers(part)) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(answers.read_answers(part))
    assert 3 <= written < 40 and not os.path.exists(killed)
    load_launcher().main([*flags, "--out", killed])
    clean = str(tmp_path / "clean.jsonl")
    load_launcher().main([*flags, "--out", clean])
    with open(killed) as a, open(clean) as b:
        got, want = a.read(), b.read()
    assert got == want
    ids = [json.loads(line)["question_id"] for line in got.splitlines()]
    assert len(ids) == len(set(ids)) == 40


@pytest.mark.slow
def test_cli_run_score_report(tmp_path, capsys):
    ckpt = write_checkpoint(str(tmp_path))
    data = write_pope(str(tmp_path), 6)
    out = str(tmp_path / "answers" / "pope.jsonl")
    os.makedirs(os.path.dirname(out))
    launcher = load_launcher()
    launcher.main(["run", "--benchmark", "pope", "--data", data, "--checkpoint", ckpt,
                   "--out", out, "--batch", "4", "--devices", "1", "--max-new-tokens", "4"])
    assert "6 answered" in capsys.readouterr().err
    launcher.main(["score", "--benchmark", "pope", "--data", data, "--answers", out])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["benchmark"] == "pope" and set(printed["metrics"]["per_category"]) == {
        "adversarial", "popular", "random"}
    assert 0 <= printed["headline"] <= 100
    launcher.main(["report", "--answers-dir", str(tmp_path / "answers")])
    report = (tmp_path / "answers" / "report.md").read_text()
    assert "| pope |" in report and "85.9" in report  # LLaVA-1.5's POPE beside ours
    assert os.path.getsize(tmp_path / "answers" / "report.png") > 1000


def test_cli_missing_file_is_named_in_one_line(tmp_path):
    os.makedirs(tmp_path / "pope")
    with pytest.raises(SystemExit) as exit_info:
        load_launcher().main(["score", "--benchmark", "pope", "--data", str(tmp_path / "pope"),
                              "--answers", str(tmp_path / "nothing.jsonl")])
    assert "nothing.jsonl" in str(exit_info.value) and "\n" not in str(exit_info.value)
    write_jsonl(str(tmp_path / "a.jsonl"), [{"question_id": 1, "text": "yes"}])
    with pytest.raises(SystemExit) as exit_info:
        load_launcher().main(["score", "--benchmark", "pope", "--data", str(tmp_path / "pope"),
                              "--answers", str(tmp_path / "a.jsonl")])
    assert "'llava_pope_test.jsonl'" in str(exit_info.value)


@pytest.mark.slow
def test_resume_drops_a_cut_line_and_never_duplicates(tmp_path, generator, pope_items):
    gen = generator
    out = str(tmp_path / "r.jsonl")
    kw = {"conv_mode": "vicuna_v1", "max_new_tokens": 3, "aspect": "pad", "model_id": "t",
          "progress": False}
    answer_items(gen, pope_items[:4], out, batch_size=2, **kw)
    part = answers.part_path(out, 0, 1)
    with open(part, "a") as f:
        f.write('{"question_id": 5, "te')  # a kill mid-write
    summary = answer_items(gen, pope_items, out, batch_size=2, **kw)
    assert summary.already_done == 4 and summary.answered == len(pope_items) - 4
    answers.merge(out, pope_items)
    ids = [r["question_id"] for r in answers.read_answers(out)]
    assert ids == [it.question_id for it in pope_items]
    assert np.all(np.diff(ids) > 0)


def test_missing_image_is_named_with_its_question(tmp_path):
    import types

    data = write_pope(str(tmp_path), 2)
    os.remove(os.path.join(data, "val2014", "COCO_val2014_000000000001.jpg"))
    items = questions.load_items(get_benchmark("pope"), data)
    no_model = types.SimpleNamespace(cfg=types.SimpleNamespace(vision=types.SimpleNamespace(
        image_size=21)), batch_multiple=1, complete=lambda *a, **k: pytest.fail("no image"))
    with pytest.raises(FileNotFoundError, match="question 2: image .*000000000001.jpg"):
        answer_items(no_model, items, str(tmp_path / "a.jsonl"), conv_mode="vicuna_v1",
                     max_new_tokens=2, aspect="pad", model_id="m", batch_size=2,
                     progress=False)
