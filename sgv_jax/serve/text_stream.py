"""Incremental detokenisation: text released as tokens arrive, never taken back.

The released pieces concatenate to exactly the final answer that `Generator.complete` returns
for the same tokens (`prompts.final_text`: cut before the first stop string, stripped). While
generating, the tail of the text that may still change is held back:
  - U+FFFD at the end: a byte-fallback token started a UTF-8 character whose other bytes have
    not come yet (sentencepiece decodes the incomplete bytes as U+FFFD), so no half character
    is ever sent;
  - whitespace at the end (the answer is stripped; it is sent once text follows it);
  - an end that could be the start of a stop string (sent once it cannot be).
"""

from __future__ import annotations

from collections.abc import Sequence

from sgv_jax.data.tokenize import SentencePieceTokenizer
from sgv_jax.generation import prompts

REPLACEMENT = "\ufffd"


def _unfinished_stop(text: str, stop_strings: Sequence[str]) -> int:
    """Length of the longest end of `text` that is a proper start of a stop string."""
    longest = 0
    for stop in stop_strings:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest


def settled_part(text: str, stop_strings: Sequence[str]) -> str:
    """The start of `text` that more tokens cannot change (see the module docstring)."""
    while True:
        before = text
        text = text.rstrip().rstrip(REPLACEMENT)
        text = text[:len(text) - _unfinished_stop(text, stop_strings)]
        if text == before:
            return text


class TextStream:
    """Feed tokens with `add` (each returns the newly settled text), then `finish` once."""

    def __init__(self, tokenizer: SentencePieceTokenizer, stop_strings: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False  # a stop string has appeared: the answer is complete

    def add(self, token: int) -> str:
        self.ids.append(int(token))
        text, self.stopped = prompts.cut_at_stop(prompts.decode_text(self.tokenizer, self.ids),
                                                 self.stop_strings)
        text = text.lstrip()
        return self._release(text.rstrip() if self.stopped else
                             settled_part(text, self.stop_strings))

    def finish(self) -> tuple[str, list[int]]:
        """(the rest of the answer, the answer's ids up to the one completing a stop string)."""
        text, ids, _ = prompts.final_text(self.tokenizer, self.ids, self.stop_strings)
        return self._release(text), ids

    def _release(self, text: str) -> str:
        # `sent` is always a start of `text`: only settled text was sent.
        new = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent += new
        return new
