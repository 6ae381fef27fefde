"""BudgetSchedule: a run ends annealed whether its step count or its time budget runs out first."""

from __future__ import annotations

import csv
import itertools
import math

import pytest
from tiny import tiny_cfg

from capsal.callbacks import BudgetSchedule
from capsal.cli.train import train

SCHEDULE = ("+callbacks.budget_schedule._target_=capsal.callbacks.schedule.BudgetSchedule",)


def logged_lrs(output_dir) -> list[float]:
    (metrics,) = output_dir.rglob("metrics.csv")
    with metrics.open() as handle:
        return [float(row["train/lr"]) for row in csv.DictReader(handle) if row.get("train/lr")]


def test_warm_up_then_cosine_down_to_the_final_ratio():
    schedule = BudgetSchedule(warmup_steps=10, final_ratio=0.1)
    assert schedule.factor(0, 0.3) == pytest.approx(0.1)  # first warm-up step, whatever the time share says
    assert schedule.factor(9, 0.3) == pytest.approx(1.0)
    assert schedule.factor(50, 0.5) == pytest.approx(0.55)
    assert schedule.factor(99, 1.0) == pytest.approx(0.1)
    values = [schedule.factor(10 + i, i / 100) for i in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_a_run_stopped_by_its_time_budget_ends_annealed(tmp_path):
    # 200 epochs could never finish in 4 seconds: time is the budget that binds, long before the step count
    cfg = tiny_cfg(
        tmp_path,
        *SCHEDULE,
        "trainer.max_epochs=200",
        "trainer.max_time=00:00:00:04",
        "trainer.log_every_n_steps=1",
        "callbacks.saliency.localisation=false",
        "callbacks.saliency.num_samples=0",
    )
    summary = train(cfg)
    steps_planned = 200 * 4
    assert summary["global_step"] < steps_planned / 2, "the time budget did not bind; the test proves nothing"
    lrs = logged_lrs(tmp_path)
    base = cfg.model.optimizer.lr
    step_share = summary["global_step"] / steps_planned
    by_steps_alone = 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step_share))
    assert lrs[0] > 0.9 * base
    assert lrs[-1] < 0.1 * base < by_steps_alone * base, (lrs[-1], base, by_steps_alone)


def test_a_run_stopped_by_its_step_count_follows_the_steps(tmp_path):
    # a time budget that does not bind: the learning rates are the steps' alone, warm-up included (the same in
    # every run of the command, however long its start-up took)
    summary = train(
        tiny_cfg(
            tmp_path,
            *SCHEDULE,
            "+callbacks.budget_schedule.warmup_steps=3",
            "trainer.max_steps=12",
            "trainer.max_time=00:00:10:00",
            "trainer.max_epochs=10",
            "trainer.log_every_n_steps=1",
        )
    )
    assert summary["global_step"] == 12
    schedule = BudgetSchedule(warmup_steps=3)
    base = 1e-3
    expected = [base * schedule.factor(step, step / 12) for step in range(12)]
    assert logged_lrs(tmp_path) == pytest.approx(expected, rel=1e-5)
