"""Lightning callbacks: caption-guided saliency during validation (galleries and localisation metrics), and a
learning-rate schedule over a run's step or time budget."""

from capsal.callbacks.saliency import SaliencyCallback
from capsal.callbacks.schedule import BudgetSchedule

__all__ = ["BudgetSchedule", "SaliencyCallback"]
