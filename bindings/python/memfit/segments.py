# segments.py — checkpoint segments: consecutive layers checkpointed as one region, only the
# first one's inputs kept, while the parent's own loop still calls each layer.
"""A checkpoint segment (Chen et al.'s) runs several consecutive layers under one
torch.utils.checkpoint region: it keeps the inputs of its first layer only, and
in backward recomputes all of them when autograd first needs one of their saved
tensors. Against checkpointing each layer it keeps fewer inputs (one per segment
instead of one per layer) and holds more at once in backward (the whole
segment's recomputed activations), for the same recomputation.

The parent module calls the layers itself (`for block in self.h: h = block(h,
...)`), so a segment cannot be one function call. Here the first layer's call
opens a non-reentrant checkpoint frame (PyTorch's
`_checkpoint_without_reentrant_generator`, the code behind
`checkpoint(use_reentrant=False)`), the last layer's call closes it, and between
the layers' calls the frame is paused: what the parent computes there is saved
by autograd as usual, not taken into the segment (its recomputation would not
repeat it). The recomputation runs the segment's layers from the first one's
saved inputs, each later layer given the earlier one's output and the other
arguments of its own call. That is only the forward when each later layer's
first argument *is* the output of the layer before it (the same tensor, or the
first element of a tuple it returned): the layers are *chained*. Each call
checks it and a layer that is not chained raises a MemfitError naming both
layers (a U-Net decoder stage given a skip instead, a parent that transforms the
hidden states between two blocks). A segment left open when the model's forward
returns (its last layer never ran) is closed with a MemfitError as well.

Measured on CPU (benchmarks/results/segments-2026-12-03.md): a segment pays
where the inputs it does not keep outweigh the activations it holds at once;
for a transformer block, whose activations are tens of times its input, that
is only in deep stacks."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.utils.checkpoint

from ._lib import MemfitError
from .recompute import context_fn as recompute_context_fn, without_cache


def _first_tensor(output: Any) -> Any:
    """What a chained next layer is called with: the output, or its first element."""
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    return output


def _open_frame(fn: Callable[..., Any], context_fn: Optional[Callable[[], Any]], args: Tuple[Any, ...],
                kwargs: Dict[str, Any]) -> Any:
    generator = getattr(torch.utils.checkpoint, "_checkpoint_without_reentrant_generator", None)
    if generator is None:
        raise MemfitError(f"memfit: checkpoint segments need torch.utils.checkpoint's non-reentrant frame, which "
                          f"torch {torch.__version__} does not have; plan without segments")
    # (fn, preserve_rng_state, context_fn, determinism_check, debug, early_stop, *args, **kwargs)
    frame = generator(fn, True, context_fn or torch.utils.checkpoint.noop_context_fn, "default", False, True,
                      *args, **kwargs)
    next(frame)  # inside: the checkpoint's saved-tensor hooks are on
    return frame


def _close_frame(frame: Any, error: Optional[BaseException] = None) -> None:
    try:
        if error is None:
            next(frame)
        else:
            frame.throw(error)
    except StopIteration:
        return
    except BaseException:
        if error is None:
            raise
        return  # the caller raises `error` itself
    raise MemfitError("memfit: a checkpoint segment's frame did not close")  # a generator yielding twice


class _Call:
    """One forward through the segment: what its recomputation needs of the later layers."""

    def __init__(self) -> None:
        self.later: List[Tuple[Tuple[Any, ...], Dict[str, Any]]] = []


class Segment:
    """The layers `names` (consecutive, in the order the parent calls them),
    each run by `runs[i]` (its precision's wrapper of its own forward),
    checkpointed as one region."""

    def __init__(self, names: Sequence[str], modules: Sequence[torch.nn.Module],
                 runs: Sequence[Callable[..., Any]]) -> None:
        if len(names) < 2:
            raise MemfitError(f"memfit.apply: a checkpoint segment needs two layers or more, not {list(names)}")
        self.names, self.modules, self.runs = list(names), list(modules), list(runs)
        self.context_fn = recompute_context_fn(torch.nn.ModuleList(self.modules))
        # While a forward is inside the segment: its call, the frame, the pause between layers,
        # the index of the next layer expected and the output it must be given.
        self.active: Optional[Tuple[_Call, Any, Any, int, Any]] = None

    # --------------------------------------------------------------- forwards

    def forward_of(self, index: int) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return self.runs[index](*args, **kwargs)
            return self._enter(*args, **kwargs) if index == 0 else self._continue(index, *args, **kwargs)
        return forward

    def _recompute(self, call: _Call) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> None:
            out = self.runs[0](*args, **kwargs)
            for i, (rest, kw) in enumerate(call.later, start=1):
                out = self.runs[i](_first_tensor(out), *rest, **kw)
        return run

    def _enter(self, *args: Any, **kwargs: Any) -> Any:
        if self.active is not None:
            self.abandon()
            raise MemfitError(f"memfit: checkpoint segment {self._span()}: layer {self.names[0]!r} was called again "
                              f"before {self.names[-1]!r} closed the segment (the parent does not call its layers "
                              "in the plan's order once each)")
        args, kwargs = without_cache(self.modules[0], args, kwargs)
        call = _Call()
        frame = _open_frame(self._recompute(call), self.context_fn, args, kwargs)
        try:
            out = self.runs[0](*args, **kwargs)
        except BaseException as e:
            _close_frame(frame, e)
            raise
        self.active = (call, frame, self._pause(), 1, out)
        return out

    def _continue(self, index: int, *args: Any, **kwargs: Any) -> Any:
        if self.active is None or self.active[3] != index:
            self.abandon()
            raise MemfitError(f"memfit: checkpoint segment {self._span()}: layer {self.names[index]!r} was called "
                              f"without {self.names[index - 1]!r} right before it (the parent does not call its "
                              "layers in the plan's order)")
        call, frame, pause, _, previous = self.active
        pause.__exit__(None, None, None)
        self.active = (call, frame, None, index, previous)
        if not args or args[0] is not _first_tensor(previous):
            self.abandon()
            raise MemfitError(f"memfit: checkpoint segment {self._span()}: layer {self.names[index]!r} is not "
                              f"chained to {self.names[index - 1]!r}: its first argument is not that layer's output, "
                              "so a recomputation from the segment's inputs would not repeat its forward; checkpoint "
                              "these layers one by one")
        args, kwargs = without_cache(self.modules[index], args, kwargs)
        call.later.append((tuple(args[1:]), dict(kwargs)))
        try:
            out = self.runs[index](*args, **kwargs)
        except BaseException as e:
            self.active = None
            _close_frame(frame, e)
            raise
        if index == len(self.runs) - 1:
            self.active = None
            _close_frame(frame)
        else:
            self.active = (call, frame, self._pause(), index + 1, out)
        return out

    @staticmethod
    def _pause() -> Any:
        """Between two of its layers' calls the segment's saved-tensor hooks are
        covered by identity ones: the parent's own operations are saved as usual."""
        pause = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
        pause.__enter__()
        return pause

    def _span(self) -> str:
        return f"{self.names[0]!r}..{self.names[-1]!r}"

    def abandon(self) -> None:
        """Closes a segment left open (its forward stopped inside it)."""
        if self.active is None:
            return
        _, frame, pause, _, _ = self.active
        self.active = None
        if pause is not None:
            pause.__exit__(None, None, None)
        _close_frame(frame, MemfitError("memfit: checkpoint segment abandoned"))

    def check_closed(self) -> None:
        """After the model's forward: a segment still open never ran its last layer."""
        if self.active is not None:
            index = self.active[3]
            self.abandon()
            raise MemfitError(f"memfit: checkpoint segment {self._span()}: the model's forward returned before "
                              f"layer {self.names[index]!r} ran (the parent skipped it, or called its layers in "
                              "another order than the plan's)")
