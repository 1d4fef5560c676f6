"""Selective activation checkpointing, memfit's one policy for it (planner/PLAN.md,
"Selective checkpointing"): a layer run through `checkpoint` keeps the outputs of its
matrix products, convolutions and attention kernels and recomputes everything else
(pointwise ops, norms, softmax, dropout) in backward. The ops kept are the expensive
ones to recompute; what is recomputed is cheap in time and often large in memory (an
MLP's activation function output is as wide as its hidden layer).

The profile measures every layer under this policy (its "selective" runs), and
memfit.apply runs a plan's selective layers with it: what is measured is what runs."""

from __future__ import annotations

import functools
from typing import Any, Callable, FrozenSet, Tuple

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

# aten overload packets whose outputs a selectively checkpointed layer keeps.
# Attention: every fused scaled-dot-product kernel PyTorch dispatches to (CPU,
# flash, memory-efficient, cuDNN) and the lower-level kernels they call.
KEPT_OPS: Tuple[str, ...] = (
    "mm", "addmm", "bmm", "baddbmm", "convolution", "_convolution",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
    "_flash_attention_forward", "_efficient_attention_forward",
)


@functools.lru_cache(maxsize=1)
def kept_ops() -> FrozenSet[Any]:
    """The overload packets of KEPT_OPS this torch has."""
    return frozenset(getattr(torch.ops.aten, name) for name in KEPT_OPS if hasattr(torch.ops.aten, name))


def _policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    packet = getattr(op, "overloadpacket", op)
    return CheckpointPolicy.MUST_SAVE if packet in kept_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def context_fn() -> Callable[[], Any]:
    """The `context_fn` for torch.utils.checkpoint.checkpoint (non-reentrant)."""
    return functools.partial(create_selective_checkpoint_contexts, _policy)
