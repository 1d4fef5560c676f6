# recompute.py — what a checkpointed layer's recomputation must not change: the
# running statistics of the normalisation layers inside it, and a key/value cache.
"""torch.utils.checkpoint runs a checkpointed layer's forward a second time in
backward. Two kinds of state would see it twice:

- A BatchNorm (or an InstanceNorm tracking running statistics) inside it updates
  its running mean and variance twice per step and counts the batch twice, so a
  plan would silently change what the model learns for evaluation (measured on a
  ResNet: `num_batches_tracked` 2 after one step, running variance 0.86 against
  0.93). The recomputation's context here snapshots those buffers and restores
  them when it ends; the normalisation in the recomputation still uses the batch's
  own statistics, as the first forward did, so the gradients do not change.
- A transformers key/value cache (a model whose config keeps the default
  `use_cache=True`, trained without HF's own checkpointing) is appended to again
  by the recomputation, which then runs other operations than the forward did:
  selective checkpointing of GPT-2 and Mixtral stopped in backward with PyTorch's
  "encountered during backward but not found in storage" (the plain recomputation
  happened to give the same gradients, attention slicing off the keys added twice).
  A checkpointed layer therefore runs without the cache, as HF's gradient
  checkpointing does (`without_cache`), unless its class declares it only reads it
  (`_can_checkpoint_with_cache`). And since the kept layers would still fill it
  and the loss window free it (the model took that free from the run with no layer
  checkpointed, so a Mixtral plan checkpointing its decoder layers was
  under-predicted by 16 KiB a sample and ran out of memory), memfit.profile and
  memfit.apply train the model with its config's `use_cache` off (`no_cache_config`):
  in training the cache only holds memory."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

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


def _is_cache(value: Any) -> bool:
    """A transformers Cache (DynamicCache, StaticCache, ...), known without importing transformers."""
    return any(c.__name__ == "Cache" and c.__module__ == "transformers.cache_utils" for c in type(value).__mro__)


def without_cache(module: torch.nn.Module, args: Tuple[Any, ...],
                  kwargs: Dict[str, Any]) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """`args` and `kwargs` for a checkpointed call of `module`, with any key/value
    cache replaced by None and `use_cache` false (a warning says so). The cache
    then lacks the layer's keys: a model generating with gradients enabled should
    not run a checkpointing plan."""
    if getattr(module, "_can_checkpoint_with_cache", False):
        return args, kwargs
    at = [i for i, a in enumerate(args) if _is_cache(a)]
    named = [name for name, v in kwargs.items() if _is_cache(v)]
    if at or named:
        args = tuple(None if i in at else a for i, a in enumerate(args))
        kwargs = dict(kwargs, **{name: None for name in named})
        # Python's warning filters show it once per layer class.
        warnings.warn(f"memfit.apply: a checkpointed {type(module).__name__} was given a key/value cache "
                      f"({', '.join([f'argument {i}' for i in at] + named)}); it runs without it, since its "
                      "recomputation would append to it again (use_cache=False in the model's config says so "
                      "once and for all)", stacklevel=2)
    if kwargs.get("use_cache"):
        kwargs = dict(kwargs, use_cache=False)
    return args, kwargs


def no_cache_config(model: torch.nn.Module) -> bool:
    """Turns off `model.config.use_cache` (a transformers model's) when it is on;
    returns whether it was."""
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", None) is True:
        config.use_cache = False
        return True
    return False
