"""Captioning metrics through pycocoevalcap (real Java METEOR and PTB tokenizer)."""

from __future__ import annotations

import pytest

from capsal.metrics.captioning import caption_scores

REFERENCES = {
    "a": ["a big red circle and a small blue square", "a small blue square and a big red circle"],
    "b": ["a green triangle", "a small green triangle"],
}


def test_perfect_captions_score_one_and_wrong_ones_score_lower():
    perfect = caption_scores({"a": REFERENCES["a"][0], "b": REFERENCES["b"][1]}, REFERENCES)
    wrong = caption_scores({"a": "a yellow diamond", "b": "a big red circle"}, REFERENCES)
    assert set(perfect) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "exact"}
    assert perfect["exact"] == 1.0 and wrong["exact"] == 0.0
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["rouge_l"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["meteor"] > 0.9
    for name in perfect:
        assert wrong[name] < perfect[name], name
    assert wrong["meteor"] < 0.5


def test_only_requested_metrics_run_and_unknown_names_are_rejected():
    assert set(caption_scores({"b": "a green triangle"}, REFERENCES, ["bleu"])) == {"bleu1", "bleu2", "bleu3", "bleu4"}
    assert caption_scores({"b": "a green triangle"}, REFERENCES, []) == {}
    with pytest.raises(ValueError, match="unknown captioning metrics"):
        caption_scores({"b": "x"}, REFERENCES, ["spice"])


def test_exact_counts_captions_equal_to_a_reference_whatever_their_case_and_punctuation():
    predictions = {"a": "A small blue square and a big red circle.", "b": "a big green triangle"}
    assert caption_scores(predictions, REFERENCES, ["exact"]) == {"exact": 0.5}  # one word off is not exact
