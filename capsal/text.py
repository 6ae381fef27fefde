"""Tokenizer and vocabulary. The vocabulary travels inside model checkpoints."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import torch

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case words; punctuation is dropped, as the captioning metrics' PTB tokenizer does."""
    return _WORD.findall(text.lower())


class Vocabulary:
    """Word <-> index map with the special tokens pad=0, bos=1, eos=2, unk=3."""

    def __init__(self, words: Iterable[str]):
        words = [w for w in words if w not in SPECIALS]
        self.itos: list[str] = [*SPECIALS, *words]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, sentences: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Vocabulary of the words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(w for s in sentences for w in tokenize(s))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` that would map to unk, in order of appearance."""
        return [w for w in tokenize(text) if w not in self.stoi]

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        ids = [self.stoi.get(w, self.unk_id) for w in tokenize(text)]
        return [self.bos_id, *ids, self.eos_id] if add_special else ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of a token sequence: bos skipped, stops at eos, pad dropped."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.bos_id, self.pad_id):
                continue
            words.append(self.itos[i])
        return words

    def decode_text(self, ids: Iterable[int]) -> str:
        return " ".join(self.decode(ids))

    def pad_batch(self, sequences: list[list[int]]) -> torch.Tensor:
        """Right-pad token lists into a ``(B, L)`` long tensor."""
        length = max(len(s) for s in sequences)
        out = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        for row, seq in enumerate(sequences):
            out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out

    def to_list(self) -> list[str]:
        return list(self.itos[len(SPECIALS) :])
