"""bf16 mixed precision on CPUs without bf16 recurrent kernels.

Under ``torch.autocast("cpu", torch.bfloat16)`` an ``nn.LSTM`` runs oneDNN's bf16 LSTM primitive, which exists only
where the CPU has bf16 instructions (AVX512-BF16, AMX). Elsewhere (an AVX2 CPU, e.g. many AMD EPYC machines) the
first call stops deep inside torch: "could not create a primitive descriptor for the LSTM forward propagation
primitive". capsal asks once per process (:func:`cpu_runs_bf16_recurrent`: a tiny LSTM under autocast) and, where the
answer is no, runs the recurrent layers of the model (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``; capsal's and those of a
user's own model) in float32 inside the autocast region while the rest stays bf16 (:func:`bf16_fallback`): the map or
the training a user asked for, not a refusal.

``CAPSAL_CPU_BF16_RNN=0`` answers no without asking, so the fallback runs on any CPU (the tests cover both answers this
way); ``=1`` answers yes; unset (or ``auto``) asks the CPU. oneDNN's own ``ONEDNN_MAX_CPU_ISA=AVX2`` makes a CPU that
has the kernels behave as one that lacks them (the tests use it to run the real failure).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from capsal.errors import UserError

ENV = "CAPSAL_CPU_BF16_RNN"
log = logging.getLogger("capsal")


def cpu_runs_bf16_recurrent() -> bool:
    """Whether recurrent layers run under CPU bf16 autocast here: :data:`ENV` when set, else the CPU's answer."""
    forced = os.environ.get(ENV, "auto").strip().lower()
    if forced not in ("0", "1", "auto", ""):
        raise UserError(f"{ENV}={forced!r} is not 0, 1 or auto; unset it to let capsal ask the CPU")
    return forced == "1" if forced in ("0", "1") else _probe()


@functools.cache
def _probe() -> bool:
    """A two-step LSTM under CPU bf16 autocast: oneDNN builds its bf16 primitive, or refuses with a RuntimeError."""
    lstm = nn.LSTM(4, 4)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(2, 1, 4))
    except RuntimeError:
        return False
    return True


def bf16_fallback(model: nn.Module, precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context in which ``model`` runs under ``precision`` on ``device``: its recurrent layers in float32 when
    that is bf16 mixed precision on a CPU without bf16 recurrent kernels, else nothing changes."""
    if precision != "bf16-mixed" or torch.device(device).type != "cpu" or cpu_runs_bf16_recurrent():
        return contextlib.nullcontext()
    return recurrent_layers_in_float32(model)


@contextlib.contextmanager
def recurrent_layers_in_float32(model: nn.Module) -> Iterator[None]:
    """Every ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` of ``model`` takes float32 inputs and runs with autocast off, until
    the context ends (a layer already switched by an outer context is left to it)."""
    layers = [m for m in model.modules() if isinstance(m, nn.RNNBase) and "forward" not in vars(m)]
    if layers:
        _announce(type(model).__name__, len(layers))
    for layer in layers:
        layer.forward = functools.partial(_forward_in_float32, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _forward_in_float32(layer: nn.RNNBase, *args: Any, **kwargs: Any) -> Any:
    """The layer's own forward with float32 inputs and every autocast off (a module-level function: picklable)."""
    with torch.autocast("cpu", enabled=False):
        return type(layer).forward(layer, *_float32(args), **{k: _float32(v) for k, v in kwargs.items()})


def _float32(value: Any) -> Any:
    """Floating tensors in ``value`` (a tensor, a PackedSequence, a tuple of them: input and states) as float32."""
    if isinstance(value, PackedSequence):
        return value._replace(data=value.data.float())
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_float32(v) for v in value)
    return value


@functools.cache
def _announce(model_name: str, count: int) -> None:
    log.warning(
        "this CPU has no bf16 recurrent kernels: the %d recurrent layer(s) of %s run in float32 under bf16-mixed, "
        "the rest in bf16",
        count,
        model_name,
    )
