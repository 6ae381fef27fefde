"""Where tensors live: the one place that turns a ``device=`` option or a model into a ``torch.device``."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
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


THREADS_ENV = "CAPSAL_CPU_THREADS"  # rank zero's cpu_threads=auto choice, inherited by the ranks Lightning launches


def set_cpu_threads(option: int | str | None, processes: int = 1) -> int | None:
    """Torch's CPU threads as the config's ``cpu_threads`` says: null leaves torch's default (every core), ``auto``
    takes the cores idle at start (on a busy machine, threads that wait for a core slow every step) shared among
    the ``processes`` that training runs on this machine (DDP: ``trainer.devices``), a number is taken as given.
    Under ``auto`` the ranks Lightning launches after rank zero take rank zero's count (:data:`THREADS_ENV`)
    rather than measure a machine that rank zero already keeps busy. Returns the count set (None: torch's)."""
    if option is None:
        return None
    if option != "auto":
        threads = int(option)  # a positive integer: capsal.config_schema checked it
    elif os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(THREADS_ENV):
        threads = int(os.environ[THREADS_ENV])
        log.info("torch CPU threads: %d (rank zero's cpu_threads=auto)", threads)
    else:
        idle = idle_cpus()
        threads = max(1, idle // max(1, processes))
        os.environ[THREADS_ENV] = str(threads)
        log.info(
            "torch CPU threads: %d (cpu_threads=auto: %d cores idle at start, %d process(es))", threads, idle, processes
        )
    torch.set_num_threads(threads)
    return threads


def processes_per_machine(devices: Any, accelerator: Any = "auto") -> int:
    """How many training processes Lightning starts on each machine for ``trainer.devices`` (as
    Lightning's Trainer admits it): the number, the length of a device list, every visible GPU for ``-1`` and
    ``auto`` when the accelerator may be a GPU, else one (``auto`` on a CPU). Strings are read by Lightning's own
    parser: ``"3"`` is 3, ``"0,1"`` two GPUs."""
    from lightning.fabric.utilities.device_parser import _normalize_parse_gpu_string_input

    if devices != "auto":
        devices = _normalize_parse_gpu_string_input(devices)
    if devices in (-1, "auto"):
        gpu = str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        return max(1, torch.cuda.device_count()) if gpu else 1
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return max(1, len(devices))
    return 1


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
