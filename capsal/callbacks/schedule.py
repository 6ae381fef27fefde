"""``BudgetSchedule``: the learning rate annealed over the run's budget, steps or time, whichever ends first.

A time-budgeted run (``trainer.max_time``) on a slower or busier machine does fewer steps than planned; a schedule
over steps alone would leave it stopped half-way, at a high learning rate. Here a run's progress is the larger of
the share of its steps done (``trainer.estimated_stepping_batches``: ``max_steps`` or ``max_epochs``) and the share
of ``max_time`` used, so every run ends annealed, however many steps the machine allowed.
"""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.callbacks import Timer

from capsal.constraints import NonNegativeInt, UnitInterval


class BudgetSchedule(L.Callback):
    """Linear warm-up over ``warmup_steps``, then a cosine from each parameter group's learning rate down to
    ``final_ratio`` times it at the end of the budget; logs ``train/lr``."""

    def __init__(self, warmup_steps: NonNegativeInt = 0, final_ratio: UnitInterval = 0.02):
        self.warmup_steps = warmup_steps
        self.final_ratio = final_ratio
        self._timer: Timer | None = None
        self._steps = math.inf

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
        self._steps = float(trainer.estimated_stepping_batches)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])  # kept in the optimizer's state: a resumed run goes on

    def progress(self, trainer: L.Trainer) -> float:
        """The share of the budget used, in [0, 1]: steps or time, whichever is further along."""
        shares = [trainer.global_step / self._steps] if 0 < self._steps < math.inf else []
        remaining = self._timer.time_remaining() if self._timer is not None else None
        if remaining is not None:
            elapsed = self._timer.time_elapsed()
            shares.append(elapsed / max(elapsed + remaining, 1e-9))
        return min(1.0, max(shares, default=0.0))

    def factor(self, step: int, progress: float) -> float:
        """The learning rate's multiplier at ``step`` after ``progress`` of the budget. The cosine waits for the
        warm-up to end: over the first steps the time share measures start-up more than progress, and its
        wall-clock noise in their learning rates would make two runs of one command train differently."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return self.final_ratio + (1.0 - self.final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        factor = self.factor(trainer.global_step, self.progress(trainer))
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else 0.0
        pl_module.log("train/lr", lr, on_step=True, on_epoch=False, batch_size=1)
