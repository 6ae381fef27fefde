"""Bootstrap intervals over samples: they cover a known value as often as they claim, also when the phrases of one
image share an effect (where intervals that resample phrases would not), and paired differences cancel what the
samples share."""

from __future__ import annotations

import numpy as np
import pytest

from capsal.metrics.intervals import Interval, paired_difference, per_sample, record_intervals, sample_bootstrap

SEEDS = 200


def _coverage(make_data, clusters: bool) -> float:
    """How often the 95% interval of the mean covers 0.5 over ``SEEDS`` data sets."""
    covered = 0
    for seed in range(SEEDS):
        values, sample_of = make_data(np.random.default_rng(1000 + seed))
        if clusters:
            sums, counts = per_sample(values, sample_of)
        else:  # every phrase its own sample: the independence the phrases do not have
            sums, counts = values, np.ones_like(values)
        interval = sample_bootstrap(sums, counts, seed=seed)
        covered += interval.low <= 0.5 <= interval.high
    return covered / SEEDS


def _independent(rng):
    """400 images, one Bernoulli(0.5) hit each."""
    return rng.integers(0, 2, 400).astype(float), np.arange(400)


def _clustered(rng):
    """400 images of 5 phrases; each image is easy (hits with p=0.9) or hard (p=0.1): mean 0.5, phrases of one image
    alike."""
    p = np.where(rng.random(400) < 0.5, 0.9, 0.1)
    hits = (rng.random((400, 5)) < p[:, None]).astype(float)
    return hits.reshape(-1), np.repeat(np.arange(400), 5)


def test_intervals_of_independent_hits_cover_the_true_rate():
    assert 0.90 <= _coverage(_independent, clusters=True) <= 0.99


def test_on_clustered_phrases_sample_intervals_cover_and_phrase_intervals_do_not():
    by_sample = _coverage(_clustered, clusters=True)
    by_phrase = _coverage(_clustered, clusters=False)
    assert 0.90 <= by_sample <= 0.99, by_sample
    assert by_phrase < 0.85, by_phrase  # too narrow: the 5 phrases of an image count as 5 independent draws


def test_the_estimate_is_the_mean_over_phrases_and_the_interval_holds_it():
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    sums, counts = per_sample(values, ["b", "b", "a", "c", "c", "c"])
    assert sums.tolist() == [1.0, 1.0, 2.0] and counts.tolist() == [2.0, 1.0, 3.0]  # samples in the order seen
    interval = sample_bootstrap(sums, counts)
    assert interval.estimate == pytest.approx(4 / 6)
    assert interval.low <= interval.estimate <= interval.high
    assert str(Interval(0.8812, 0.85, 0.9101)) == "0.881 [0.850, 0.910]"


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    sums, counts = per_sample(*_clustered(np.random.default_rng(0)))
    assert sample_bootstrap(sums, counts, seed=3) == sample_bootstrap(sums, counts, seed=3)
    assert sample_bootstrap(sums, counts, seed=3) != sample_bootstrap(sums, counts, seed=4)


def test_a_paired_difference_cancels_what_the_samples_share():
    rng = np.random.default_rng(0)
    values, sample_of = _clustered(rng)
    better = np.minimum(values + (rng.random(values.shape) < 0.1), 1.0)  # explainer b: a few more hits
    sums_a, counts = per_sample(values, sample_of)
    sums_b, _ = per_sample(better, sample_of)
    same = paired_difference(sums_a, sums_a, counts)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    paired = paired_difference(sums_b, sums_a, counts)
    assert paired.estimate == pytest.approx((better.sum() - values.sum()) / len(values))
    assert paired.low > 0  # b is better, and the pairing sees it
    # unpaired, the two means' intervals overlap: the image effect swamps the small gain
    a, b = sample_bootstrap(sums_a, counts), sample_bootstrap(sums_b, counts, seed=1)
    assert b.low < a.high
    assert paired.high - paired.low < (a.high - a.low) / 2


def phrase_records(rng: np.random.Generator, samples: int = 30) -> list[dict]:
    """capsal-eval's per-phrase records of two explainers: 1-4 phrases per image, three categories (one not listed),
    a phrase without boxes (``hit`` None) now and then."""
    records = []
    for s in range(samples):
        for p in range(int(rng.integers(1, 5))):
            category = ["dog", "cat", "bicycle"][int(rng.integers(0, 3))]
            boxed = rng.random() > 0.1
            for name, rate in (("caption_guided", 0.7), ("random", 0.3)):
                hit = bool(rng.random() < rate) if boxed else None
                mass = float(rng.random()) if boxed else None
                records.append(
                    {"sample_id": f"img{s}", "span": [p, p + 1], "category": category, "explainer": name}
                    | {"hit": hit, "mass_inside": mass}
                )
    return records


def test_record_intervals_per_category_resample_the_samples_with_that_category():
    records = phrase_records(np.random.default_rng(0))
    intervals = record_intervals(records, categories=["dog", "cat"])
    guided = intervals["caption_guided"]["pointing_game"]
    assert set(guided) == {"avg", "dog", "cat", "other"}  # the unlisted bicycle counts in "other", as in the metrics
    assert "minus_caption_guided" in intervals["random"]["pointing_game"]
    scored = [r for r in records if r["explainer"] == "caption_guided" and r["hit"] is not None]
    dogs = [r for r in scored if r["category"] == "dog"]
    assert guided["dog"].estimate == pytest.approx(sum(r["hit"] for r in dogs) / len(dogs))
    # the same interval as a bootstrap over just the images that have a scored dog phrase (masses: continuous, so
    # another set or order of images would not give the same percentiles by chance)
    images = sorted({r["sample_id"] for r in dogs})
    sums, counts = per_sample([r["mass_inside"] for r in dogs], [r["sample_id"] for r in dogs], images)
    assert intervals["caption_guided"]["attention_correctness"]["dog"] == sample_bootstrap(sums, counts)
    other = [r for r in scored if r["category"] == "bicycle"]
    assert guided["other"].estimate == pytest.approx(sum(r["hit"] for r in other) / len(other))
    mass = intervals["random"]["attention_correctness"]["cat"]
    assert mass.low <= mass.estimate <= mass.high and mass.low < mass.high


def test_record_intervals_do_not_depend_on_the_order_the_records_arrive_in():
    """DDP ranks deliver the records of samples 0, 2, 4, ... then 1, 3, 5, ...: the same intervals as one process."""
    records = phrase_records(np.random.default_rng(1))
    by_sample: dict[str, list[dict]] = {}
    for record in records:
        by_sample.setdefault(record["sample_id"], []).append(record)
    shards = [list(by_sample.values())[rank::2] for rank in range(2)]
    gathered = [record for shard in shards for sample in shard for record in sample]
    assert gathered != records
    assert record_intervals(gathered, ["dog", "cat"]) == record_intervals(records, ["dog", "cat"])
