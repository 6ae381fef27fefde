"""The protocol's text side: the :class:`Tokenizer` interface and capsal's word-level :class:`Vocabulary`.

A tokenizer turns a sentence into token ids (``encode``) and token ids back into words, saying which word each
token belongs to (``words_of``). Words are always :func:`tokenize`'s words (lower case, punctuation dropped), the
words datasets count phrase spans in, so ``Saliency`` rows and phrase spans mean the same thing for a word-level
vocabulary (one token per word) and for a pretrained model's subword tokenizer (several tokens per word, and
prompt tokens that belong to no word). The vocabulary travels inside model checkpoints."""

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


class Tokenizer:
    """Sentences <-> token ids, and the word each token belongs to. A subclass supplies ``pad_id``, ``bos_id``,
    ``eos_id``, ``__len__`` (the size of the model's output distribution), ``encode``, ``words_of`` and
    ``unknown_words``; decoding and padding follow from them.

    Token rows follow one layout everywhere: the prefix (bos, then any prompt tokens), the sentence's tokens, eos,
    then pad. ``pad_id`` may equal ``eos_id`` (GPT-2): nothing reads a token after the first eos.
    """

    pad_id: int
    bos_id: int
    eos_id: int

    def __len__(self) -> int:
        raise NotImplementedError

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of ``text``'s words (prefix and eos around them when ``add_special``)."""
        raise NotImplementedError

    def words_of(self, ids: Iterable[int]) -> tuple[list[str], list[int]]:
        """The words of a token row (the prefix skipped, up to the first eos) and, for every position of ``ids``, the
        index of the word its token belongs to, -1 for tokens of no word (prefix, eos, pad, punctuation)."""
        raise NotImplementedError

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` the tokenizer cannot represent, in order of appearance."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> list[str]:
        """The words of a token row."""
        return self.words_of(ids)[0]

    def decode_text(self, ids: Iterable[int]) -> str:
        return " ".join(self.decode(ids))

    def pad_batch(self, sequences: list[list[int]]) -> torch.Tensor:
        """Right-pad token lists into a ``(B, L)`` long tensor."""
        length = max(len(s) for s in sequences)
        out = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        for row, seq in enumerate(sequences):
            out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out


class Vocabulary(Tokenizer):
    """Word <-> index map with the special tokens pad=0, bos=1, eos=2, unk=3: one token per word."""

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

    def words_of(self, ids: Iterable[int]) -> tuple[list[str], list[int]]:
        """Every token but bos, pad and eos is one word; the row ends at the first eos."""
        words: list[str] = []
        owners: list[int] = []
        ended = False
        for i in ids:
            i = int(i)
            ended = ended or i == self.eos_id
            if ended or i in (self.bos_id, self.pad_id):
                owners.append(-1)
                continue
            words.append(self.itos[i])
            owners.append(len(words) - 1)
        return words, owners

    def to_list(self) -> list[str]:
        return list(self.itos[len(SPECIALS) :])
