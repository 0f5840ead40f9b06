"""MiniGPT-4 answers end to end: tiny original-format files (MINIGPT4.md §4, `minigpt4.json`
included) → `launch/convert.py --from minigpt4 --to sgv` → `launch/generate.py run --template
minigpt4`, against the original `Chat` pipeline rebuilt here from MINIGPT4.md §2 with HF torch
modules assembled the MiniGPT-4 way (tests/minigpt4_tiny.py): greedy tokens and the printed
answer identical.

The tokenizer is a tiny sentencepiece model that has LLaMA's two spellings of "###" (`▁###`,
`##` `#`), and the LLaMA head is nudged so that greedy decoding emits `▁###`: the stop
criterion, not the token budget, ends both runs."""

import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from launch import convert as convert_cli
from sgv_jax.convert import minigpt4_formats as mf
from sgv_jax.convert.minigpt4_hf import from_blip2_hf_state_dict
from sgv_jax.convert.state_dict import state_dict_from_params
from tests.minigpt4_tiny import build_hf_minigpt4
from tests.test_data_helpers import train_tokenizer, write_hf_dir, write_image
from tests.test_generate_cli import load_launcher
from tests.test_minigpt4_convert import TINY_JSON, tensors

pytestmark = pytest.mark.torch

QUESTION = "Describe this image in detail."
MAX_NEW = 24
# MINIGPT4.md §2.1: CONV_VISION_Vicuna0's system text, verbatim.
SYSTEM = ("Give the following image: <Img>ImageContent</Img>. You will be able to see the image "
          "once I provide it to you. Please answer my questions.")
CORPUS = [SYSTEM, f"###Human: <Img><ImageHere></Img> {QUESTION}###Assistant: ",
          "A cat sits on a red sofa ### next to a dog ### and ### more.## # ##",
          "Two dogs run across a green field and the sea ### with 7 boats ### now ###",
          "The picture shows a small house, a tall tower and blue sky."]
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class StoppingCriteriaSub:
    """MiniGPT-4's `StoppingCriteriaSub` (conversation.py): stop when the tail of the generated
    ids equals one of `stops`."""

    def __init__(self, stops):
        self.stops = stops

    def __call__(self, input_ids, scores, **kwargs):
        return any(bool(torch.all(input_ids[:, -len(s):] == s)) for s in self.stops
                   if input_ids.shape[1] >= len(s))


def original_pixels(path: str, size: int) -> np.ndarray:
    """Blip2ImageEvalProcessor (MINIGPT4.md §3.3): PIL bicubic resize to size×size (uint8), /255,
    CLIP mean/std. [1, 3, size, size]"""
    image = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    x = np.asarray(image, np.float32) / 255.0
    return ((x - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1)[None].astype(np.float32)


def original_chat_answer(hf, sp, pixels: np.ndarray, question: str, stops) -> tuple[list[int], str]:
    """`Chat.upload_img` + `ask` + `answer` (MINIGPT4.md §2.1-§2.3), greedy: the prompt with the
    image as `<Img><ImageHere></Img>` joined to the question by ' ', split at `<ImageHere>`, each
    segment tokenized on its own (slow LLaMA tokenizer = sentencepiece here), BOS only on the
    first; image embeddings = llama_proj(Q-Former(ln_vision(ViT(image)))); `generate` with the
    "###" StoppingCriteria; decode skipping special ids; `split('###')[0].split('Assistant:')[-1]
    .strip()`."""
    from transformers import StoppingCriteriaList

    prompt = SYSTEM + "###" + "Human: " + "<Img><ImageHere></Img>" + " " + question + "###" + \
        "Assistant: "
    segments = prompt.split("<ImageHere>")
    seg_ids = [([sp.bos_id()] if i == 0 else []) + sp.encode(s) for i, s in enumerate(segments)]
    lm = hf.language_model
    with torch.no_grad():
        image_embeds = hf.vision_model(torch.tensor(pixels)).last_hidden_state  # + ln_vision
        query = hf.qformer(query_embeds=hf.query_tokens, encoder_hidden_states=image_embeds)
        image = hf.language_projection(query.last_hidden_state)
        embed = lm.get_input_embeddings()
        embs = torch.cat([embed(torch.tensor([seg_ids[0]])), image,
                          embed(torch.tensor([seg_ids[1]]))], dim=1)
        out = lm.generate(inputs_embeds=embs, max_new_tokens=MAX_NEW, do_sample=False,
                          num_beams=1, min_length=1, repetition_penalty=1.0,
                          stopping_criteria=StoppingCriteriaList([StoppingCriteriaSub(stops)]),
                          pad_token_id=0, eos_token_id=2, bos_token_id=1)
    tokens = out[0].tolist()
    special = {sp.unk_id(), sp.bos_id(), sp.eos_id()}
    text = sp.decode([i for i in tokens if i not in special and i < sp.get_piece_size()])
    return tokens, text.split("###")[0].split("Assistant:")[-1].strip()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("minigpt4_gen")
    sp_file = train_tokenizer(str(root / "sp"), vocab_size=360, lines=CORPUS * 30)
    sp = spm.SentencePieceProcessor(model_file=sp_file)
    stop_pieces = [("\u2581###",), ("##", "#")]
    stops = [torch.tensor([sp.piece_to_id(p) for p in s]) for s in stop_pieces]
    assert all(sp.id_to_piece(int(i)) == p for s, ps in zip(stops, stop_pieces) for i, p in zip(s, ps))
    # Vicuna v0's vocabulary is the tokenizer's plus FastChat's [PAD] (MINIGPT4.md §1.3).
    hf = build_hf_minigpt4(seed=1, vocab=sp.get_piece_size() + 1)
    image_path = write_image(str(root / "img.png"), 40, 30, seed=3)
    pixels = original_pixels(image_path, 21)

    # Nudge the head: `▁###` takes the row of the token greedy decoding emits at step 5, scaled
    # up, so it wins there (or earlier) and the stop criterion fires mid-answer.
    free, _ = original_chat_answer(hf, sp, pixels, QUESTION, [torch.tensor([-1])])
    step = next(k for k in range(5, MAX_NEW) if free[k] not in free[:k])
    with torch.no_grad():
        head = hf.language_model.get_output_embeddings().weight
        head[int(stops[0][0])] = 1.5 * head[free[step]]
    tokens, text = original_chat_answer(hf, sp, pixels, QUESTION, stops)
    assert tokens[-1] == int(stops[0][0]) and len(tokens) > 2, tokens  # ended by "###"

    cfg, params = from_blip2_hf_state_dict(hf.state_dict(), hf.config.to_dict())
    files = root / "files"
    files.mkdir()
    torch.save(tensors(state_dict_from_params(params, mf.eva_table(cfg))), files / "eva_vit_g.pth")
    torch.save({"model": tensors(state_dict_from_params(params, mf.blip2_table(cfg)))},
               files / "blip2_pretrained_flant5xxl.pth")
    torch.save({"model": tensors(state_dict_from_params(params, mf.minigpt4_table(cfg)))},
               files / "pretrained_minigpt4.pth")
    hf.language_model.save_pretrained(files / "vicuna")
    write_hf_dir(str(files / "vicuna"), sp_file, legacy=None)
    with open(files / "vicuna" / "added_tokens.json", "w") as f:
        json.dump({"[PAD]": sp.get_piece_size()}, f)
    (files / "minigpt4.json").write_text(json.dumps({"model": {**TINY_JSON, "vit_depth_in_ckpt": 3}}))
    ckpt = str(root / "ck")
    assert convert_cli.main(["--from", "minigpt4", "--src", str(files), "--to", "sgv",
                             "--dst", ckpt, "--quiet"]) == 0
    return {"ckpt": ckpt, "image": image_path, "tokens": tokens, "text": text}


@pytest.mark.slow  # the fixture converts and compiles: ~2 min on 2 shared cores
def test_run_prints_the_answer_of_the_original_chat(setup, capsys):
    flags = ["run", "--checkpoint", setup["ckpt"], "--image", setup["image"], "--prompt", QUESTION,
             "--max-new-tokens", str(MAX_NEW)]
    load_launcher().main([*flags, "--template", "minigpt4"])
    printed = capsys.readouterr().out.strip()
    assert printed == setup["text"]
    load_launcher().main(flags)  # the checkpoint's family picks the minigpt4 template
    assert capsys.readouterr().out.strip() == printed


@pytest.mark.slow
def test_greedy_tokens_equal_the_original_until_its_stop(setup):
    from sgv_jax.generation import chat
    from sgv_jax.generation.generator import Generator

    gen = Generator.from_checkpoint(setup["ckpt"])
    assert gen.image_processor.config.aspect == "resize" and gen.default_template == "minigpt4"
    reply = chat.answer(gen, QUESTION, setup["image"], "minigpt4", max_new_tokens=MAX_NEW)
    assert reply.finish == "stop"
    assert reply.tokens == setup["tokens"]
    assert reply.text == setup["text"]


@pytest.mark.slow
def test_image_is_spliced_mid_prompt_with_one_bos(setup):
    from sgv_jax.generation import prompts
    from sgv_jax.generation.generator import Generator

    gen = Generator.from_checkpoint(setup["ckpt"])
    text = prompts.build_prompt("minigpt4", QUESTION, has_image=True)
    ids = prompts.encode_prompt(text, gen.tokenizer, gen.cfg.num_image_tokens, True,
                                gen.cfg.image_token_id)
    before, after = text.split("<ImageHere>")
    tok = gen.tokenizer
    want = (tok.encode(before) + [gen.cfg.image_token_id] * gen.cfg.num_image_tokens
            + tok.encode(after)[1:])
    assert ids.tolist() == want and ids.tolist().count(tok.bos_id) == 1


def test_repetition_penalty_skips_the_prompt_as_inputs_embeds_does():
    """MiniGPT-4 gives `generate` only `inputs_embeds`, so HF's repetition penalty sees no prompt
    ids (MINIGPT4.md §2.3); a LLaVA prompt's text ids are penalised."""
    import jax.numpy as jnp

    from sgv_jax.generation.decode import prompt_token_mask
    from sgv_jax.models.config import get_preset

    ids, mask = jnp.asarray([[1, 5, 9]]), jnp.ones((1, 3), jnp.int32)
    assert not prompt_token_mask(ids, mask, get_preset("minigpt4_tiny")).any()
    assert prompt_token_mask(ids, mask, get_preset("tiny"))[0, [1, 5, 9]].all()
