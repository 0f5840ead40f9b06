"""Tokenization and label masking with the reference's exact semantics (REFERENCE.md §1.6, §3).

The reference tokenizes with transformers 4.31's slow sentencepiece `LlamaTokenizer`, which
transformers 5.x no longer has. `SentencePieceTokenizer` re-implements that slow tokenizer on
sentencepiece directly: split the text on the special-token strings, encode each piece
separately, prepend BOS. Its `legacy` flag follows the slow tokenizer's `legacy` option (read
from `tokenizer_config.json`): True puts sentencepiece's dummy-prefix `▁` after `</s>`, False
drops it. Masking follows `preprocess_plain` / `preprocess_v1` of ShareGPT4V (§3.3-3.4).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Protocol

import sentencepiece as spm

from sgv_jax.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from sgv_jax.data import templates
from sgv_jax.data.validate import BadRecord

_UNDERLINE = "\u2581"  # sentencepiece's `▁`


class Tokenizer(Protocol):
    """What the data pipeline needs: slow-tokenizer `tokenizer(text).input_ids` and the ids."""

    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...


class SentencePieceTokenizer:
    """The slow LLaMA tokenizer of transformers 4.31 (`tokenization_llama.py`) on sentencepiece.

    `pad_id` is the unk id: LLaVA sets `pad_token = unk_token` for v1/plain (§3.1).
    """

    def __init__(self, model_file: str, *, legacy: bool = True, add_bos: bool = True,
                              add_eos: bool = False):
        self.model_file = str(model_file)
        self.legacy = legacy
        self.add_bos = add_bos
        self.add_eos = add_eos
        self._load()

    def _load(self) -> None:
        self._sp = spm.SentencePieceProcessor(model_file=self.model_file)
        sp = self._sp
        self.bos_id, self.eos_id, self.pad_id = sp.bos_id(), sp.eos_id(), sp.unk_id()
        self.vocab_size = sp.get_piece_size()
        # The slow tokenizer never splits its special tokens (<unk>, <s>, </s>) and, as
        # AddedToken(lstrip=False, rstrip=False), leaves the spaces around them alone.
        self._special = {sp.id_to_piece(i): i for i in (sp.unk_id(), sp.bos_id(), sp.eos_id())
                                          if i >= 0}
        pattern = "|".join(re.escape(s) for s in sorted(self._special, key=len, reverse=True))
        self._split = re.compile(f"({pattern})")

    def __getstate__(self) -> dict:
        # SentencePieceProcessor does not pickle; grain sends the pipeline to worker processes.
        return {k: v for k, v in self.__dict__.items() if k in
                        ("model_file", "legacy", "add_bos", "add_eos")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._load()

    def encode(self, text: str) -> list[int]:
        """Ids of `tokenizer(text).input_ids` (BOS included when add_bos)."""
        if not self.legacy:
            # LlamaTokenizer.tokenize (non-legacy): marks the true start of the text.
            text = _UNDERLINE + text.replace(_UNDERLINE, " ")
        ids = [self.bos_id] if self.add_bos else []
        for piece in self._split.split(text):
            if not piece:
                continue
            if piece in self._special:
                ids.append(self._special[piece])
            else:
                ids.extend(self._encode_piece(piece))
        if self.add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Readable text of `ids`, special tokens spelled out (`<s>`, `</s>`, `<unk>`); with
        `skip_special_tokens`, HF's `batch_decode(ids, skip_special_tokens=True)` of the slow
        LLaMA tokenizer: unk/pad, BOS and EOS dropped, sentencepiece detokenization."""
        if skip_special_tokens:
            # Ids past the sentencepiece vocabulary are added special tokens (Vicuna v0's
            # `[PAD]` = 32000, MINIGPT4.md §1.3), which HF skips too.
            special = {self.bos_id, self.eos_id, self.pad_id}
            return self._sp.decode([i for i in ids if i not in special and 0 <= i < self.vocab_size])
        out, run = [], []
        for i in ids:
            if i in self._special.values():
                out.append(self._sp.decode(run))
                out.append(self._sp.id_to_piece(i))
                run = []
            else:
                run.append(i)
        out.append(self._sp.decode(run))
        return "".join(out)

    def piece_id(self, piece: str) -> int | None:
        """The id of one vocabulary piece (`▁###`), or None when the vocabulary lacks it."""
        i = self._sp.piece_to_id(piece)
        return None if i == self._sp.unk_id() and piece != self._sp.id_to_piece(i) else i

    def _encode_piece(self, text: str) -> list[int]:
        if self.legacy:
            return self._sp.encode(text)
        # LlamaTokenizer._tokenize (non-legacy): only the start of the text keeps the dummy
        # prefix; a piece after a special token loses its leading `▁` (then looked up as is,
        # which can map to <unk>).
        is_first = text.startswith(_UNDERLINE)
        if is_first:
            text = text[1:]
        pieces = self._sp.encode(text, out_type=str)
        if not is_first and not text.startswith(" ") and pieces and pieces[0].startswith(_UNDERLINE):
            pieces = ([pieces[0][1:]] if len(pieces[0]) > 1 else []) + pieces[1:]
        return [self._sp.piece_to_id(p) for p in pieces]


def load_tokenizer(path: str | os.PathLike) -> SentencePieceTokenizer:
    """Loads a HF LLaMA tokenizer directory (`tokenizer.model` + `tokenizer_config.json`, as
    Vicuna ships it) or a bare sentencepiece `.model` file."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return SentencePieceTokenizer(path)
    model_file = os.path.join(path, "tokenizer.model")
    if not os.path.isfile(model_file):
        raise FileNotFoundError(
                f"{path}: expected a sentencepiece .model file or a directory with tokenizer.model")
    config_file = os.path.join(path, "tokenizer_config.json")
    config = {}
    if os.path.isfile(config_file):
        with open(config_file) as f:
            config = json.load(f)
    # Defaults are LlamaTokenizer 4.31's: legacy True, BOS added, EOS not.
    return SentencePieceTokenizer(
            model_file,
            legacy=config.get("legacy", True) is not False,
            add_bos=config.get("add_bos_token", True),
            add_eos=config.get("add_eos_token", False))


def tokenizer_image_token(prompt: str, tokenizer: Tokenizer) -> list[int]:
    """mm_utils.tokenizer_image_token (§1.6): chunks around `<image>` are tokenized separately,
    the first chunk's BOS is kept, later chunks' BOS dropped, one IMAGE_TOKEN_INDEX per image."""
    chunks = [tokenizer.encode(chunk) for chunk in prompt.split(DEFAULT_IMAGE_TOKEN)]
    offset = 1 if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_id else 0
    ids = [chunks[0][0]] if offset else []
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


def preprocess_plain(messages: Sequence[str], tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """Stage-1 ids and labels (§3.3): `<image>` + caption + `\\n`; BOS and image masked."""
    prompt = templates.render_plain(messages[1])
    ids = tokenizer_image_token(prompt, tokenizer)
    n_masked = len(tokenizer_image_token(DEFAULT_IMAGE_TOKEN, tokenizer))
    labels = [IGNORE_INDEX] * n_masked + ids[n_masked:]
    return ids, labels


def preprocess_v1(messages: Sequence[str], has_image: bool, tokenizer: Tokenizer,
                                    record_id: str = "") -> tuple[list[int], list[int]]:
    """Stage-2 ids and labels (§3.4): instructions masked round by round.

    Raises BadRecord("tokenization_mismatch") where the reference would print
    "WARNING: tokenization mismatch" and mask the whole sample. The reference skips the check
    for samples of >= model_max_length tokens (it truncated them first); we encode untruncated,
    so the check always applies.
    """
    prompt = templates.render_v1(list(messages))

    def tok(text: str) -> list[int]:
        return tokenizer_image_token(text, tokenizer) if has_image else tokenizer.encode(text)

    ids = tok(prompt)
    labels = list(ids)
    # total_len counts non-pad ids, as the reference does (an in-text <unk> counts as padding).
    total_len = sum(1 for i in ids if i != tokenizer.pad_id)
    sep = templates.assistant_separator()
    cur_len = 1
    labels[:cur_len] = [IGNORE_INDEX] * cur_len
    for rou in prompt.split(templates.VICUNA_V1.sep2):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        # round_len counts BOS in place of the round's `</s>`; `- 2` drops BOS and the
        # trailing-space token of "... ASSISTANT: " (§3.4 step 3).
        round_len = len(tok(rou))
        instruction_len = len(tok(parts[0] + sep)) - 2
        end = min(cur_len + instruction_len, len(labels))
        labels[cur_len:end] = [IGNORE_INDEX] * max(0, end - cur_len)
        cur_len += round_len
    labels[cur_len:] = [IGNORE_INDEX] * max(0, len(labels) - cur_len)
    if cur_len != total_len:
        raise BadRecord("tokenization_mismatch", record_id,
                                        f"masking arithmetic reaches {cur_len} tokens, prompt has {total_len}")
    return ids, labels
