"""Tokenizer and vocabulary: round trips, special tokens, unknown words."""

from __future__ import annotations

import torch

from capsal.text import Vocabulary, tokenize


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A big, RED circle.") == ["a", "big", "red", "circle"]


def test_vocabulary_round_trip_and_special_tokens():
    vocab = Vocabulary.build(["a red circle", "a blue square", "a red square"], min_count=1)
    assert vocab.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert vocab.itos[4:6] == ["a", "red"]  # most frequent first
    ids = vocab.encode("a blue circle")
    assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id
    assert vocab.decode(ids) == ["a", "blue", "circle"]
    assert vocab.decode([*ids, vocab.pad_id, 5]) == ["a", "blue", "circle"]  # stops at eos
    assert Vocabulary(vocab.to_list()) == vocab  # what checkpoints store rebuilds the same vocabulary


def test_min_count_and_unknown_words_map_to_unk_and_are_reported():
    vocab = Vocabulary.build(["a red circle", "a red square"], min_count=2)
    assert vocab.to_list() == ["a", "red"]
    assert vocab.unknown_words("a red zebra circle") == ["zebra", "circle"]
    assert vocab.decode(vocab.encode("a zebra")) == ["a", "<unk>"]


def test_pad_batch_right_pads():
    vocab = Vocabulary(["a", "b"])
    batch = vocab.pad_batch([[1, 4, 2], [1, 2]])
    assert torch.equal(batch, torch.tensor([[1, 4, 2], [1, 2, 0]]))
