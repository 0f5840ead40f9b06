"""MiniGPT-4 training data: ids/labels vs the original's prompt_wrap + concat_emb_input_output
(rebuilt here from MINIGPT4.md §3.1), webdataset shards (skips counted, host sharding,
resume) and the blip2_image_train crop (§3.3)."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
import sentencepiece as spm
from PIL import Image

from sgv_jax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from sgv_jax.data import images, minigpt4_pipeline, minigpt4_samples, tokenize
from sgv_jax.data.minigpt4_prompts import train_prompt
from tests.test_data_helpers import tiny_tokenizer_path

Q = 5  # image positions (query tokens) of these tests


@pytest.fixture(scope="module")
def tok():
    return tokenize.load_tokenizer(tiny_tokenizer_path())


def original_batch(sp, answers, prompt, end_sym, max_txt_len, pad_id, bos_id):
    """The original forward's id layout (MINIGPT4.md §3.1, MG4 minigpt_base.py l.223-305),
    with image embeddings written as Q placeholder ids.

    prompt_wrap: prompt segments tokenized with add_special_tokens=False, [before, img, after];
    no prompt (stage 1): the image embeds alone. Targets: `t + end_sym`, right-padded to the
    longest, truncation at max_txt_len, add_special_tokens=False, pad ids -> -100.
    concat_emb_input_output: answer right after each unpadded prompt. BOS prepended; targets
    -100 except [input_len+1 : input_len+1+len(target)]."""
    if prompt is None:
        wrapped = [IMAGE_TOKEN_INDEX] * Q
    else:
        before, after = prompt.split("<ImageHere>")
        wrapped = sp.encode(before) + [IMAGE_TOKEN_INDEX] * Q + sp.encode(after)
    input_len = len(wrapped)  # the same prompt for the whole batch: no prompt padding
    texts = [t + end_sym for t in answers]
    out = [sp.encode(t)[:max_txt_len] for t in texts]
    longest = max(map(len, out))
    out_atts = [[1] * len(o) + [0] * (longest - len(o)) for o in out]
    out = [o + [pad_id] * (longest - len(o)) for o in out]
    part_targets = [[-100 if t == pad_id else t for t in o] for o in out]
    rows = []
    for o, a, t in zip(out, out_atts, part_targets):
        ids = [bos_id] + wrapped[:input_len] + o + wrapped[input_len:]
        atts = [1] + [1] * input_len + a
        targets = [-100] * len(ids)
        targets[input_len + 1:input_len + 1 + len(t)] = t
        rows.append((ids, targets, atts))
    return rows


@pytest.mark.parametrize("stage", [1, 2])
def test_ids_and_labels_equal_the_original_prompt_wrap(tok, stage):
    sp = spm.SentencePieceProcessor(model_file=tiny_tokenizer_path())
    answers = ["a black cat sits on a red sofa", ("two dogs run across a green field near the sea"
               " and the quick brown fox jumps over the lazy dog")]
    if stage == 1:
        params, prompt = {"max_txt_len": 8, "end_sym": "\n"}, None  # 8: truncation is exercised
    else:
        params = {"max_txt_len": 160, "end_sym": "###"}
        prompt = train_prompt(minigpt4_samples.ALIGNMENT_PROMPTS[1])
    want = original_batch(sp, answers, prompt, pad_id=tok.pad_id, bos_id=tok.bos_id, **params)
    for answer, (ids, labels, atts) in zip(answers, want):
        got = minigpt4_samples.encode_sample(tok, answer, prompt=prompt, num_image_tokens=Q,
                                             max_length=300, **params)
        n = len(ids)
        assert got["input_ids"][:n].tolist() == ids
        assert got["labels"][:n].tolist() == labels
        assert got["attention_mask"][:n].tolist() == atts
        assert (got["input_ids"][n:] == tok.pad_id).all()
        assert (got["labels"][n:] == IGNORE_INDEX).all() and not got["attention_mask"][n:].any()
        counted = got["labels"][got["labels"] != IGNORE_INDEX].tolist()
        assert counted == sp.encode(answer + params["end_sym"])[:params["max_txt_len"]]


def test_blip_caption_follows_lavis_pre_caption():
    assert minigpt4_samples.blip_caption("A Dog!  Runs (fast);\n") == "a dog runs fast"
    assert len(minigpt4_samples.blip_caption(" ".join(["w"] * 60)).split()) == 50


def test_random_resized_crop_box_is_torchvision_like():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = images.random_resized_crop_box(64, 48, rng)
        assert 0 <= top <= 48 - h and 0 <= left <= 64 - w
        assert 0.5 * 64 * 48 * 0.97 <= h * w <= 64 * 48  # rounding of w, h
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    processor = images.ImageProcessor(images.ImageConfig(size=16, aspect="random_resized_crop"))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), np.uint8))
    a = processor(image, np.random.default_rng(5))
    b = processor(image, np.random.default_rng(5))
    assert a.shape == (16, 16, 3) and np.array_equal(a, b)
    with pytest.raises(ValueError, match="rng"):
        processor(image)


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (20, 24, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: str) -> int:
    """Two img2dataset-style shards: 10 good samples (json or txt captions), one corrupt
    image, one sample without caption. Returns the good count."""
    os.makedirs(folder, exist_ok=True)
    good = 0
    for shard in range(2):
        with tarfile.open(os.path.join(folder, f"{shard:05d}.tar"), "w") as tar:
            for i in range(5):
                key = f"{shard:05d}{i:04d}"
                _add(tar, f"{key}.jpg", _jpeg(shard * 10 + i))
                if i % 2:
                    _add(tar, f"{key}.txt", f"A Caption {key}.".encode())
                else:
                    _add(tar, f"{key}.json", json.dumps({"caption": f"Caption {key}!",
                                                         "url": "x"}).encode())
                good += 1
            if shard == 0:
                _add(tar, "bad.jpg", b"not a jpeg at all")
                _add(tar, "bad.json", json.dumps({"caption": "broken"}).encode())
            else:
                _add(tar, "nocap.jpg", _jpeg(99))
    return good


def stage1(folder, tok, **kw):
    args = {"max_txt_len": 32, "end_sym": "\n", "image_size": 14, "num_image_tokens": Q,
            "max_length": 40, "global_batch_size": 2, "shard_index": 0, "shard_count": 1, **kw}
    return minigpt4_pipeline.make_dataset(1, folder, "", tok, **args)


def test_webdataset_shards_skip_and_count_bad_samples(tmp_path, tok):
    good = write_shards(str(tmp_path / "shards"))
    data = stage1(str(tmp_path / "shards"), tok, num_epochs=1)
    batches = list(data)
    assert sum(len(b["input_ids"]) for b in batches) == good
    counts = data.skip_counts()
    assert counts["bad_image"] == 1 and counts["missing_caption"] == 1
    assert sum(counts.values()) == 2
    assert batches[0]["pixel_values"].shape == (2, 14, 14, 3)


def test_webdataset_hosts_are_disjoint_and_resume_exactly(tmp_path, tok):
    folder = str(tmp_path / "shards")
    write_shards(folder)
    seen = []
    for host in range(2):
        data = stage1(folder, tok, num_epochs=1, global_batch_size=2, shard_index=host,
                      shard_count=2)
        seen.append({tuple(row) for b in data for row in b["labels"].tolist()})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 10
    straight = stage1(folder, tok, num_epochs=None)
    want = [next(straight) for _ in range(6)]
    first = stage1(folder, tok, num_epochs=None)
    for _ in range(3):
        next(first)
    resumed = stage1(folder, tok, num_epochs=None)
    resumed.set_state(first.get_state())
    for expected in want[3:]:
        got = next(resumed)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_cc_sbu_align_stage2_draws_alignment_instructions(tmp_path, tok):
    os.makedirs(tmp_path / "image")
    annotations = []
    for i in range(4):
        Image.open(io.BytesIO(_jpeg(i))).save(tmp_path / "image" / f"{i}.jpg")
        annotations.append({"image_id": str(i), "caption": f"The picture shows thing {i}."})
    annotations.append({"image_id": "missing", "caption": "no file"})
    (tmp_path / "filter_cap.json").write_text(json.dumps({"annotations": annotations}))
    data = minigpt4_pipeline.make_dataset(
        2, str(tmp_path / "filter_cap.json"), str(tmp_path / "image"), tok, max_txt_len=160,
        end_sym="###", image_size=14, num_image_tokens=Q, max_length=260, global_batch_size=4,
        shard_index=0, shard_count=1, num_epochs=1)
    batch = next(data)
    assert data.skip_counts()["missing_image"] <= 1
    sp = spm.SentencePieceProcessor(model_file=tiny_tokenizer_path())
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        answer = [t for t in labels if t != IGNORE_INDEX]
        start = labels.index(answer[0])
        prompt_ids = ids[1:start]
        cut = prompt_ids.index(IMAGE_TOKEN_INDEX)
        before, after = prompt_ids[:cut], prompt_ids[cut + Q:]
        candidates = [train_prompt(p).split("<ImageHere>") for p in minigpt4_samples.ALIGNMENT_PROMPTS]
        assert [before, after] in [[sp.encode(a), sp.encode(b)] for a, b in candidates]
        assert sp.decode(answer).endswith("###")
    with pytest.raises(ValueError, match="max_length"):
        minigpt4_pipeline.make_dataset(
            2, str(tmp_path / "filter_cap.json"), str(tmp_path / "image"), tok, max_txt_len=160,
            end_sym="###", num_image_tokens=Q, max_length=100, global_batch_size=4,
            shard_index=0, shard_count=1)
