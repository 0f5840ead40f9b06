"""launch/generate.py end to end on a tiny sgv checkpoint with a tiny sentencepiece tokenizer:
run prints the answer, chat keeps a vicuna_v1 conversation, caption writes and resumes."""

import importlib.util
import json
import os

import pytest

from sgv_jax.data import templates
from sgv_jax.generation import chat, prompts
from sgv_jax.generation.generator import Completion, Generator
from tests.test_generate_helpers import write_checkpoint, write_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_launcher():
    spec = importlib.util.spec_from_file_location("launch_generate",
                                                  os.path.join(ROOT, "launch", "generate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen_cli")
    ckpt = write_checkpoint(str(folder))
    write_images(str(folder / "images"), 3)
    return {"ckpt": ckpt, "images": str(folder / "images"), "folder": folder}


def test_run_prints_the_answer_of_the_checkpoint(files, capsys):
    image = os.path.join(files["images"], "part0", "img_000.png")
    flags = ["--checkpoint", files["ckpt"], "--image", image, "--max-new-tokens", "8",
             "--temperature", "0"]
    load_launcher().main(["run", *flags, "--prompt", "What is in the picture?"])
    printed = capsys.readouterr().out.strip()
    gen = Generator.from_checkpoint(files["ckpt"])
    want = chat.answer(gen, "What is in the picture?", image, max_new_tokens=8)
    assert printed == want.text
    # Template `none` with the v1 prompt written out by hand gives the same answer.
    by_hand = prompts.build_prompt("v1", "What is in the picture?", has_image=True)
    load_launcher().main(["run", *flags, "--template", "none", "--prompt", by_hand])
    assert capsys.readouterr().out.strip() == printed


def test_caption_cli_writes_then_resumes(files, capsys):
    out = str(files["folder"] / "caps.jsonl")
    flags = ["caption", "--checkpoint", files["ckpt"], "--images", files["images"], "--out", out,
             "--max-new-tokens", "4", "--batch-size", "2", "--devices", "1", "--as-records"]
    load_launcher().main(flags)
    with open(out) as f:
        records = [json.loads(line) for line in f]
    assert sorted(r["id"] for r in records) == ["part0/img_000", "part0/img_002", "part1/img_001"]
    assert records[0]["conversations"][0]["value"].startswith("<image>\nAnalyze the image")
    load_launcher().main(flags)
    assert "0 written, 3 already done" in capsys.readouterr().err
    with open(out) as f:
        assert len(f.readlines()) == 3


class FakeGenerator:
    """Records the prompts chat renders; answers 'answer N'."""

    default_template = "v1"
    tokenizer = None  # only MiniGPT-4 templates look up stop pieces

    def __init__(self):
        self.prompts = []

    def preprocess(self, image):
        return image

    def complete(self, texts, images, sampling, **kw):
        self.prompts.append(texts[0])
        return [Completion(f"answer {len(self.prompts)}", [], "eos")]


def test_chat_renders_the_vicuna_v1_conversation(monkeypatch):
    gen = FakeGenerator()
    monkeypatch.setattr(chat, "load_image", lambda path: "pixels")
    questions = iter(["What is it?", "And the colour?", "exit"])
    said = []
    turns = chat.chat_loop(gen, "img.png", read=lambda _: next(questions), write=said.append)
    assert turns == ["What is it?", "answer 1", "And the colour?", "answer 2"]
    assert said[0].startswith("Chat about img.png.") and "'exit', Ctrl-D or Ctrl-C quits" in said[0]
    assert said[1:] == ["ASSISTANT: answer 1", "ASSISTANT: answer 2"]
    assert gen.prompts[1] == (templates.VICUNA_V1.system + " USER: <image>\nWhat is it? "
                              "ASSISTANT: answer 1</s>USER: And the colour? ASSISTANT:")


def test_chat_cli_answers_each_turn(files, monkeypatch, capsys):
    questions = iter(["Hello there!", "How are you today?"])

    def read(_):
        try:
            return next(questions)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", read)
    load_launcher().main(["chat", "--checkpoint", files["ckpt"], "--max-new-tokens", "4"])
    assert capsys.readouterr().out.count("ASSISTANT:") == 2


class FakeMiniGPT4Generator(FakeGenerator):
    """A MiniGPT-4 checkpoint's generator: answers with the demo's trailing '###' text."""

    default_template = "minigpt4"
    tokenizer = type("Vocab", (), {"piece_id": staticmethod(lambda piece: {"\u2581###": 7}.get(piece))})

    def complete(self, texts, images, sampling, **kw):
        self.stop_ids = kw["stop_ids"]
        super().complete(texts, images, sampling, **kw)
        return [Completion(f"Assistant: answer {len(self.prompts)}###", [], "stop")]


def test_chat_renders_the_minigpt4_demo_conversation(monkeypatch):
    gen = FakeMiniGPT4Generator()
    monkeypatch.setattr(chat, "load_image", lambda path: "pixels")
    questions = iter(["What is it?", "And the colour?", "exit"])
    said = []
    turns = chat.chat_loop(gen, "img.png", read=lambda _: next(questions), write=said.append)
    assert turns == ["What is it?", "answer 1", "And the colour?", "answer 2"]  # Chat.answer's cut
    assert gen.stop_ids == ((7,),)  # '##' '#' is not in this vocabulary
    assert gen.prompts[1].endswith("###Human: <Img><ImageHere></Img> What is it?###Assistant: "
                                   "answer 1###Human: And the colour?###Assistant: ")
