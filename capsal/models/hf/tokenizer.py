"""Words of a pretrained model's subword tokenizer: captions in, the word each token belongs to out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from capsal.text import Tokenizer, tokenize


class PretrainedTokenizer(Tokenizer):
    """A Hugging Face tokenizer behind capsal's :class:`~capsal.text.Tokenizer` interface.

    Captions are encoded as :func:`~capsal.text.tokenize`'s words (lower case, no punctuation), so word spans mean
    what the datasets mean. ``prefix``: the ids a family writes (image tokens, a chat template), or else ``start``
    (tokens a decoder reads before bos, e.g. BART's decoder start token), bos, then the prompt's tokens; a caption's
    tokens follow, then eos. A token belongs to the word it adds characters to: decoding the row's first k tokens
    and the first k+1 gives :func:`~capsal.text.tokenize`'s words, and the (k+1)-th token belongs to the last word
    when the words changed, to none when they did not (punctuation).
    """

    def __init__(
        self,
        tokenizer: Any,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        size: int,
        prompt: str | None = None,
        prefix: list[int] | None = None,
        start: Sequence[int] = (),
    ):
        self.tokenizer = tokenizer
        self.bos_id, self.eos_id, self.pad_id = int(bos_id), int(eos_id), int(pad_id)
        self.size = int(size)
        self.prompt = prompt or None
        prompt_ids = self._ids(" ".join(tokenize(prompt))) if self.prompt else []
        # a family's own prefix (image tokens, a chat template) is text before the words, as a prompt is
        self.spaced = self.prompt is not None or prefix is not None
        written = [*(int(i) for i in start), self.bos_id, *prompt_ids]
        self.prefix: list[int] = [int(i) for i in prefix] if prefix is not None else written

    def __len__(self) -> int:
        return self.size

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _text_of(self, words: list[str]) -> str:
        """The text the words are encoded from: a space before them after a prompt (byte-level BPE marks word starts
        with it; WordPiece ignores it)."""
        return (" " if self.spaced else "") + " ".join(words)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        ids = self._ids(self._text_of(tokenize(text))) if tokenize(text) else []
        return [*self.prefix, *ids, self.eos_id] if add_special else ids

    def words_of(self, ids: Iterable[int]) -> tuple[list[str], list[int]]:
        ids = [int(i) for i in ids]
        start = len(self.prefix) if ids[: len(self.prefix)] == self.prefix else min(1, len(ids))
        owners = [-1] * len(ids)
        words: list[str] = []
        for k in range(start, len(ids)):
            if ids[k] == self.eos_id:
                break
            now = tokenize(self.tokenizer.decode(ids[start : k + 1], skip_special_tokens=True))
            if now != words:
                owners[k] = len(now) - 1
            words = now
        return words, owners

    def unknown_words(self, text: str) -> list[str]:
        """Words whose tokens do not decode back to them (an unknown token, or characters the vocabulary lacks)."""
        return [w for w in tokenize(text) if self.words_of(self.encode(w))[0] != [w]]
