"""Where tensors live: the one place that turns a ``device=`` option or a model into a ``torch.device``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("capsal")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) picks the GPU when one is present, else the CPU; any other name is taken as given."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_device(model: object) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model without tensors).

    Read from the tensors, not from ``model.device``, so a user's plain ``nn.Module`` works as well as a
    LightningModule.
    """
    for tensors in (getattr(model, "parameters", None), getattr(model, "buffers", None)):
        if callable(tensors):
            for tensor in tensors():
                return tensor.device
    return torch.device("cpu")


def idle_cpus(sample_s: float = 0.5) -> int:
    """How many of this process's CPUs were idle over the next ``sample_s`` seconds (Linux ``/proc/stat``; at least
    one; all of them where that cannot be read)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def times() -> tuple[int, int] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return sum(fields[:8]), fields[3] + fields[4]  # total, idle + iowait

    before = times()
    time.sleep(sample_s)
    after = times()
    if before is None or after is None or after[0] <= before[0]:
        return available
    idle_share = (after[1] - before[1]) / (after[0] - before[0])
    return max(1, min(available, round(idle_share * (os.cpu_count() or available))))


def set_cpu_threads(option: int | str | None) -> None:
    """Torch's CPU threads as the config's ``cpu_threads`` says: null leaves torch's default (every core), ``auto``
    takes the cores idle at start (on a busy machine, threads that wait for a core slow every step), a number is
    taken as given."""
    if option is None:
        return
    if option == "auto":
        threads = idle_cpus()
        log.info("torch CPU threads: %d (cpu_threads=auto: the cores idle at start)", threads)
    else:
        threads = int(option)  # a positive integer: capsal/config_checks.py checked it
    torch.set_num_threads(threads)


def model_dtype(model: object) -> torch.dtype | None:
    """The dtype of a model's first floating-point parameter (None for a model without one)."""
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        for tensor in parameters():
            if tensor.is_floating_point():
                return tensor.dtype
    return None


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 outside ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_objects(local: Any) -> list[Any]:
    """Every rank's ``local`` (any picklable object: strings cannot travel through ``all_gather``), in rank order;
    a collective under DDP, so every rank calls it."""
    _, world = rank_and_world()
    if world == 1:
        return [local]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, local)
    return gathered


def gather_dicts(local: dict) -> dict:
    """Every rank's dict merged into one (see :func:`gather_objects`)."""
    merged: dict = {}
    for part in gather_objects(local):
        merged.update(part)
    return merged
