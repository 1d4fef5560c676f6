# recompute.py — what a checkpointed layer's recomputation must not change: the
# running statistics of the normalisation layers inside it.
"""torch.utils.checkpoint runs a checkpointed layer's forward a second time in
backward. A BatchNorm (or an InstanceNorm tracking running statistics) inside it
then updates its running mean and variance twice per step and counts the batch
twice, so a plan would silently change what the model learns for evaluation
(measured on a ResNet: `num_batches_tracked` 2 after one step, running variance
0.86 against 0.93). The recomputation's context here snapshots those buffers and
restores them when it ends; the normalisation in the recomputation still uses the
batch's own statistics, as the first forward did, so the gradients do not change."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch.nn.modules.batchnorm import _NormBase

_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _norms(module: torch.nn.Module) -> List[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, _NormBase) and m.track_running_stats]


class _RunningStatsKept:
    """Restores the running statistics of `norms` to what they were on entry."""

    def __init__(self, norms: List[torch.nn.Module]) -> None:
        self.norms = norms
        self.saved: List[Tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> "_RunningStatsKept":
        self.saved = [(buf, buf.detach().clone()) for m in self.norms for name in _STATS
                      if (buf := getattr(m, name, None)) is not None]
        return self

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for buf, value in self.saved:
                buf.copy_(value)
        self.saved = []


@contextlib.contextmanager
def _both(outer: Any, inner: Any) -> Any:
    with outer, inner:
        yield


def context_fn(module: torch.nn.Module, inner: Optional[Callable[[], Any]] = None) -> Optional[Callable[[], Any]]:
    """The `context_fn` for torch.utils.checkpoint.checkpoint (non-reentrant) of
    `module`: `inner`'s contexts (selective checkpointing's, or none), with the
    recomputation's also keeping the running statistics. None when the module has
    no such statistics and there is no `inner`: checkpoint's default then applies
    (torch.compile accepts only dispatch modes as contexts)."""
    norms = _norms(module)
    if not norms:
        return inner

    def contexts() -> Tuple[Any, Any]:
        forward, recompute = inner() if inner is not None else (contextlib.nullcontext(), contextlib.nullcontext())
        return forward, _both(_RunningStatsKept(norms), recompute)
    return contexts
