"""Recording the attention maps a model's own forward pass computes, for
:class:`~capsal.models.protocol.AttentionTrace`: forward hooks on the attention modules, so the traced pass is the
model's own code and its numbers are the model's (only the way the weights are computed may differ, see
:func:`recording`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from einops import rearrange
from torch import nn


@contextlib.contextmanager
def recording(groups: dict[str, Sequence[nn.Module]]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Inside the block, every call of a module of ``groups[name]`` appends its per-head attention weights
    ``(B, H, q, k)`` (the second element of its output) to ``maps[name]``, in call order; the hooks are removed
    afterwards, even after an error.

    PyTorch's ``nn.MultiheadAttention`` is called with ``need_weights=False`` by its Transformer layers: it is asked
    for the weights per head instead (its slow path, an explicit softmax), and its output is recomputed from them
    (:func:`_attended`: the same output up to rounding), since the weights it returns are a view that its output
    does not depend on, and relevancy needs the gradient of the output with respect to them. The encoder layers'
    fused fast path, which never calls it, is turned off for the block."""
    maps: dict[str, list[torch.Tensor]] = {name: [] for name in groups}
    handles = []
    for name, modules in groups.items():
        for module in modules:
            if isinstance(module, nn.MultiheadAttention):
                handles.append(module.register_forward_pre_hook(_weights_per_head, with_kwargs=True))
                handles.append(module.register_forward_hook(_attended, with_kwargs=True))
            handles.append(module.register_forward_hook(_appender(maps[name], module)))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield maps
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for handle in handles:
            handle.remove()


def _weights_per_head(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return args, {**kwargs, "need_weights": True, "average_attn_weights": False}


def _attended(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: tuple) -> tuple:
    """The attention's output ``out_proj(weights @ values)`` recomputed from the weights it returned (batch first,
    one input projection, no added key/value biases: what PyTorch's Transformer layers build)."""
    weights = output[1]
    if not module.batch_first or not module._qkv_same_embed_dim or module.bias_k is not None:
        raise NotImplementedError("attention traces read batch-first nn.MultiheadAttention with one in-projection")
    value = args[2] if len(args) > 2 else kwargs["value"]
    width = module.embed_dim
    bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * width :]
    values = rearrange(
        nn.functional.linear(value, module.in_proj_weight[2 * width :], bias),
        "b k (h e) -> b h k e",
        h=module.num_heads,
    )
    context = rearrange(weights.to(values.dtype) @ values, "b h q e -> b q (h e)")
    return module.out_proj(context), weights


def _appender(into: list[torch.Tensor], module: nn.Module):
    def hook(_module: nn.Module, _args: tuple, output: tuple) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise RuntimeError(
                f"{type(module).__name__} returned no attention weights; run it with eager attention "
                "(fused kernels return none)"
            )
        into.append(weights)

    return hook
