"""The single-separator templates against their references: LLaVA's `conv_llava_v0` prompts and
v0 training masks from the installed `llava` package itself (its `preprocess` and helpers are
run from llava/train/train.py's source, whose module does not import without LLaVA's training
dependencies), and MiniGPT-4's stage-2 sample layout written out from MINIGPT4.md §3.1."""

import ast
import copy
import inspect
import pathlib
import types

import pytest
import sentencepiece as spm

from sgv_jax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from sgv_jax.data import encode, templates, tokenize
from sgv_jax.data.validate import BadRecord
from sgv_jax.generation import prompts
from tests.test_data_helpers import tiny_tokenizer_path, v1_record

conversation = pytest.importorskip("llava.conversation")
torch = pytest.importorskip("torch")


def llava_v0_prompt(messages: list[str | None]) -> str:
    conv = conversation.conv_llava_v0.copy()
    for i, message in enumerate(messages):
        conv.append_message(conv.roles[i % 2], message)
    return conv.get_prompt()


@pytest.mark.parametrize("name", ["v0", "llava_v0"])
def test_v0_prompts_equal_conv_llava_v0(name):
    assert prompts.build_prompt(name, "What is it?", has_image=True) == \
        llava_v0_prompt(["<image>\nWhat is it?", None])
    assert prompts.build_prompt(name, "Hello", has_image=False) == llava_v0_prompt(["Hello", None])
    assert prompts.render_chat(["What is it?", "A cat.", "Colour?"], True, template=name) == \
        llava_v0_prompt(["<image>\nWhat is it?", "A cat.", "Colour?", None])
    assert prompts.DEFAULT_STOP_STRINGS[name] == (conversation.conv_llava_v0.sep,)


def test_minigpt4_chat_renders_the_demo_conversation():
    two = prompts.render_chat(["q1", "a1", "q2"], True, template="minigpt4")
    assert two.endswith("###Human: <Img><ImageHere></Img> q1###Assistant: a1###Human: q2###Assistant: ")
    assert prompts.answer_text("minigpt4", "Assistant: A cat. ###Human: x") == "A cat."
    assert prompts.answer_text("v1", "Assistant: A cat.") == "Assistant: A cat."


class HFLikeTokenizer:
    """Our slow-LLaMA tokenizer behind the `tokenizer(text).input_ids` interface LLaVA calls."""

    model_max_length = 10_000
    pad_token_id = 10_001  # Vicuna v0's added [PAD]: never produced by encoding

    def __init__(self, tok):
        self.tok, self.bos_token_id = tok, tok.bos_id

    def __call__(self, text, return_tensors=None, **kw):
        ids = self.tok.encode(text)
        return types.SimpleNamespace(input_ids=torch.tensor([ids]) if return_tensors else ids)


@pytest.fixture(scope="module")
def llava_preprocess():
    """llava/train/train.py `preprocess` with `default_conversation` = conv_templates["v0"]."""
    import llava
    from llava import mm_utils

    path = inspect.getfile(llava).replace("__init__.py", "train/train.py")
    tree = ast.parse(pathlib.Path(path).read_text())
    wanted = {"_tokenize_fn", "_mask_targets", "_add_speaker_and_signal", "preprocess"}
    module = ast.Module([n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted],
                        type_ignores=[])
    conv_lib = types.SimpleNamespace(**vars(conversation))
    conv_lib.default_conversation = conversation.conv_templates["v0"]
    namespace = {"conversation_lib": conv_lib, "IGNORE_INDEX": IGNORE_INDEX, "copy": copy,
                 "tokenizer_image_token": mm_utils.tokenizer_image_token, "torch": torch,
                 "Sequence": list, "Dict": dict, "transformers": types.SimpleNamespace(
                     PreTrainedTokenizer=object)}
    # The reference's own code, compiled from the installed file (see the module docstring).
    exec(compile(module, path, "exec"), namespace)  # noqa: S102
    return namespace["preprocess"]


@pytest.mark.parametrize("with_image", [True, False])
def test_v0_ids_and_labels_equal_llava_preprocess(llava_preprocess, with_image):
    tok = tokenize.load_tokenizer(tiny_tokenizer_path())
    turns = ["<image>\nWhat is in the picture?" if with_image else "What is in the picture?",
             "A black cat sits on a red sofa.", "What colour is the car?", "The car is blue."]
    record = v1_record("r1", turns, image="a.png" if with_image else None)
    ours = encode.encode_record(record, tok, templates.get_template("v0"), num_image_tokens=3)
    source = [{"from": t["from"], "value": t["value"]} for t in record["conversations"]]
    theirs = llava_preprocess([source], HFLikeTokenizer(tok), has_image=with_image)
    assert ours["input_ids"] == theirs["input_ids"][0].tolist()
    assert ours["labels"] == theirs["labels"][0].tolist()
    assert (IMAGE_TOKEN_INDEX in ours["input_ids"]) == with_image


def test_minigpt4_stage2_layout_from_the_reference():
    """MINIGPT4.md §3.1: `[BOS] ###Human: <Img> [img] </Img> question ###Assistant:  [answer###]`,
    segments and answer each tokenized without BOS, labels on answer + end_sym only."""
    sp = spm.SentencePieceProcessor(model_file=tiny_tokenizer_path())
    tok = tokenize.load_tokenizer(tiny_tokenizer_path())
    record = v1_record("m1", ["<image>\nDescribe the image in detail.", "Two dogs run."],
                       image="a.png")
    out = encode.encode_record(record, tok, templates.get_template("minigpt4"), num_image_tokens=3)
    prompt = sp.encode("###Human: <Img>") + [IMAGE_TOKEN_INDEX] + \
        sp.encode("</Img> Describe the image in detail. ###Assistant: ")
    answer = sp.encode("Two dogs run.###")
    assert out["input_ids"] == [sp.bos_id()] + prompt + answer
    assert out["labels"] == [IGNORE_INDEX] * (1 + len(prompt)) + answer
    assert list(out["expanded_input_ids"]).count(IMAGE_TOKEN_INDEX) == 3


def test_minigpt4_refuses_multi_turn_records():
    tok = tokenize.load_tokenizer(tiny_tokenizer_path())
    record = v1_record("m2", ["<image>\nHi?", "Yes.", "More?", "No."], image="a.png")
    with pytest.raises(BadRecord, match="minigpt4_format"):
        encode.encode_record(record, tok, templates.get_template("minigpt4"), num_image_tokens=3)
