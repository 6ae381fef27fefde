"""Running a batched pass in chunks whose real peak memory stays under a budget.

The rule (:func:`run_in_chunks`): the first two chunks are probes of 1 and 2 inputs whose peak EXTRA memory is
measured (:func:`peak_bytes`), not estimated from tensor shapes. Their difference is the cost of one more input, the
rest is the pass's fixed part (:class:`ChunkCost`), plus what the probes cannot see (:func:`unseen_bytes`); every
later chunk holds ``(budget - fixed) / per input`` inputs (at least one), so its peak stays within the budget. A
caller that explains many sentences with one model keeps the measured cost per sentence length and passes it back
(``cost=``): the probes then run once, not per call. Whatever the budget, on CUDA out-of-memory a chunk is halved
and retried (down to one input), and one warning per call says so.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

log = logging.getLogger("capsal")

PROBE_INPUTS = (1, 2)  # the smallest probes: they alone may exceed a budget below two inputs' peak


@dataclass(frozen=True)
class Probe:
    """One measured pass: its inputs, its peak extra bytes, and the bytes it left allocated beyond its result."""

    inputs: int
    peak: int
    kept: int


@dataclass(frozen=True)
class ChunkCost:
    """Measured peak bytes of one pass: ``fixed + per_input * inputs``."""

    fixed_bytes: float
    per_input_bytes: float

    @classmethod
    def from_probes(cls, small: Probe, large: Probe) -> ChunkCost:
        """From two probes; a per-input cost of at least one byte, a fixed part >= 0. What a probe left allocated
        (a cache filled on first use, such as autocast's casts of the weights) is left out of its peak for the
        slope, and added to the fixed part: it stays allocated while the later chunks run."""
        peak_small, peak_large = small.peak - small.kept, large.peak - large.kept
        per_input = max(1.0, (peak_large - peak_small) / (large.inputs - small.inputs))
        fixed = max(0.0, peak_small - per_input * small.inputs) + small.kept + large.kept
        return cls(fixed_bytes=fixed, per_input_bytes=per_input)

    def plus_fixed(self, extra_bytes: float) -> ChunkCost:
        return ChunkCost(self.fixed_bytes + extra_bytes, self.per_input_bytes)

    def chunk(self, budget_mb: float) -> int:
        """The most inputs whose pass stays under ``budget_mb`` (at least one)."""
        return max(1, int((budget_mb * 2**20 - self.fixed_bytes) // self.per_input_bytes))


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


def peak_bytes(fn: Callable[[], object], device: torch.device) -> tuple[object, int, int]:
    """``fn()``, the peak memory it allocated beyond what was allocated before it (its result included), and what
    it left allocated beyond its result (caches it filled).

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (this resets the device's peak
    statistics). Elsewhere: the peak of the live tensor storages its aten ops created (:class:`_LiveTensorBytes`)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        grown = torch.cuda.memory_allocated(device) - before
        return result, max(0, torch.cuda.max_memory_allocated(device) - before), max(0, grown - _bytes_of(result))
    with _LiveTensorBytes() as mode:
        result = fn()
    return result, mode.peak, max(0, mode.live - _bytes_of(result))


def _bytes_of(result: object) -> int:
    """Bytes of the distinct storages of the tensors in ``result``."""
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in tree_leaves(result)
        if isinstance(t, torch.Tensor)
    }
    return sum(storages.values())


def unseen_bytes(model: object, device: torch.device) -> int:
    """Memory a pass allocates that :func:`peak_bytes` does not see on CPU: oneDNN's recurrent kernels copy their
    module's weights on every call, one module at a time, so the largest recurrent module's weights. Nothing
    elsewhere (CUDA's peak counts everything), nor for a model that is not an ``nn.Module`` (its modules are
    unknown)."""
    if not isinstance(model, torch.nn.Module) or device.type != "cpu":
        return 0
    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return 0
    recurrent = [module for module in model.modules() if isinstance(module, torch.nn.RNNBase)]
    return max((sum(p.numel() * p.element_size() for p in module.parameters()) for module in recurrent), default=0)


def pass_key(tokens: torch.Tensor, inputs: torch.Tensor) -> tuple:
    """What a measured :class:`ChunkCost` holds for: the sentence length, one input's shape, dtype, device and
    autocast."""
    return (tokens.shape[1], tuple(inputs.shape[1:]), inputs.dtype, str(inputs.device), torch.is_autocast_enabled())


def known_costs(store: weakref.WeakKeyDictionary, model: object) -> dict[tuple, ChunkCost]:
    """The pass costs measured for ``model`` so far in ``store`` (by :func:`pass_key`), so repeated calls probe
    memory once per shape; models that cannot be weakly referenced are probed on every call."""
    try:
        return store.setdefault(model, {})
    except TypeError:
        return {}


def run_in_chunks(
    run: Callable[[int, int], torch.Tensor],
    total: int,
    budget_mb: float,
    device: torch.device,
    cost: ChunkCost | None = None,
    unseen: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """``torch.cat`` of ``run(start, stop)`` over ``[0, total)`` in chunks under ``budget_mb`` (module docstring),
    and what was decided: ``{"cost", "probed", "chunk", "halved_to"}`` (``cost`` is None when the work was too
    small to probe twice; ``probed`` says whether this call measured it). ``unseen``: bytes to add to a measured
    fixed part (:func:`unseen_bytes`). A budget below the fixed part gets chunks of one input and a warning."""
    out, start, probed = [], 0, cost is None
    if cost is None:
        peaks = []
        for size in PROBE_INPUTS:
            if start + size > total:
                break
            result, peak, kept = peak_bytes(lambda start=start, size=size: run(start, start + size), device)
            out.append(result)
            peaks.append(Probe(size, peak, kept))
            start += size
        if len(peaks) == len(PROBE_INPUTS):
            cost = ChunkCost.from_probes(*peaks).plus_fixed(unseen)
            if cost.fixed_bytes + cost.per_input_bytes > budget_mb * 2**20:
                log.warning(
                    "memory_budget_mb=%g is below what one input's pass needs (%.0f MB, of which %.0f MB whatever "
                    "the chunk): explaining one input per chunk; raise memory_budget_mb for speed",
                    budget_mb,
                    (cost.fixed_bytes + cost.per_input_bytes) / 2**20,
                    cost.fixed_bytes / 2**20,
                )
    chunk = cost.chunk(budget_mb) if cost is not None else max(1, total - start)
    info = {"cost": cost, "probed": probed, "chunk": chunk, "halved_to": None}
    halved_from = None
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
