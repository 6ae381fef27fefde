"""Running a batched pass in chunks whose real peak memory stays under a budget.

The rule (:func:`run_in_chunks`): the first chunk is a probe of ``PROBE_INPUTS`` inputs whose peak EXTRA memory is
measured (:func:`peak_bytes`), not estimated from tensor shapes; every later chunk holds
``floor(budget / (probe peak / probe inputs))`` inputs (at least one), so its peak, which grows linearly with the
inputs of one pass, stays within the budget plus what a pass holds whatever its size. Whatever the budget, on CUDA
out-of-memory a chunk is halved and retried (down to one input), and one warning per call says so.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

log = logging.getLogger("capsal")

PROBE_INPUTS = 1  # the probe's per-input cost then includes the pass's fixed part: chunks err on the small side


class _LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages created inside the mode and still referenced, and their peak.

    Every aten op's outputs are counted once per storage (views and in-place results of a storage already counted, or
    of one from outside the mode such as weights and inputs, add nothing) and released when the last tensor on the
    storage is freed. Memory an op allocates and frees inside itself (a kernel's workspace) is not seen."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [tensors alive on it, bytes]

    def _release(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._storages[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outside = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self._storages
        }
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            key = tensor.untyped_storage().data_ptr()
            if key == 0 or key in outside:
                continue
            entry = self._storages.get(key)
            if entry is None:
                entry = self._storages[key] = [0, tensor.untyped_storage().nbytes()]
                self.live += entry[1]
                self.peak = max(self.peak, self.live)
            entry[0] += 1
            weakref.finalize(tensor, self._release, key)
        return out


def peak_bytes(fn: Callable[[], object], device: torch.device) -> tuple[object, int]:
    """``fn()`` and the peak memory it allocated beyond what was allocated before it (its result included).

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (this resets the device's peak
    statistics). Elsewhere: the peak of the live tensor storages its aten ops created (:class:`_LiveTensorBytes`)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, max(0, torch.cuda.max_memory_allocated(device) - before)
    with _LiveTensorBytes() as mode:
        result = fn()
    return result, mode.peak


def run_in_chunks(
    run: Callable[[int, int], torch.Tensor], total: int, budget_mb: float, device: torch.device
) -> tuple[torch.Tensor, dict]:
    """``torch.cat`` of ``run(start, stop)`` over ``[0, total)`` in chunks under ``budget_mb`` (module docstring),
    and what was decided: ``{"probe_bytes", "per_input_bytes", "chunk", "halved_to"}``."""
    probe = min(total, PROBE_INPUTS)
    first, probe_peak = peak_bytes(lambda: run(0, probe), device)
    per_input = max(1.0, probe_peak / max(probe, 1))
    chunk = max(1, int(budget_mb * 2**20 // per_input))
    info = {"probe_bytes": probe_peak, "per_input_bytes": per_input, "chunk": chunk, "halved_to": None}
    out, start, halved_from = [first], probe, None
    while start < total:
        stop = min(total, start + chunk)
        try:
            out.append(run(start, stop))
        except torch.cuda.OutOfMemoryError:
            if stop - start == 1:
                raise
            halved_from = halved_from or stop - start
            chunk = (stop - start) // 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start = stop
    if halved_from is not None:
        info["halved_to"] = chunk
        log.warning(
            "CUDA out of memory in a chunk of %d inputs (memory_budget_mb=%g): halved to %d and retried; lower "
            "memory_budget_mb to avoid the retries",
            halved_from,
            budget_mb,
            chunk,
        )
    return torch.cat(out), info
