"""Tagging a model's allocations: module hooks give every allocation its layer
(the module's path) and phase (forward, backward, recompute, optimizer), and
parameters, gradients, optimizer state and inputs are re-tagged by pointer.

Forward allocations start as temporaries; those still alive when the model's
forward returns become activations (mf_retag_live). A forward pre-hook that
fires while autograd is running backward is a checkpointed module's
recomputation, tagged with its own phase so it is not counted as forward."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional

import torch

from . import _lib
from ._lib import MemfitError
from .allocator import Allocator, layer_id, pop_tag, push_tag
from .install import current


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


def storage_ptr(t: torch.Tensor) -> int:
    """The storage's address; a DTensor's (fully_shard's sharded parameters and
    gradients) is its local shard's; 0 for a storage freed in place (FSDP2's
    resharded unsharded parameters), which has none."""
    local = getattr(t, "_local_tensor", None)
    if isinstance(local, torch.Tensor):
        t = local
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:
        return 0


def tensors_in(obj: Any) -> Iterable[torch.Tensor]:
    """The tensors in a (nested) output or input structure."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from tensors_in(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from tensors_in(x)


def on_gradient_of_outputs(output: Any, fn: Callable[[Any], None]) -> None:
    """Call fn when autograd computes the gradient of a module's output: the
    start of the module's backward. A tensor hook, not a full backward hook:
    those wrap the module's outputs in an extra autograd function that keeps
    more memory alive (3.6% of a CNN step's peak here) and so would distort the
    very numbers memfit measures."""
    for t in tensors_in(output):
        if t.requires_grad and t.grad_fn is not None:

            def hook(grad: Any) -> None:
                fn(grad)

            t.register_hook(hook)


class Tracker:
    """Hooks on a model (and optionally its optimizer) that tag memfit's blocks.

    Use as a context manager or call remove(). `listeners` get (event, module
    path, module, payload) calls: the profiler uses them to cut windows.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Optional[torch.optim.Optimizer] = None,
        allocator: Optional[Allocator] = None,
    ) -> None:
        alloc = allocator or current()
        if alloc is None:
            raise MemfitError("memfit.track: memfit is not installed; call memfit.install(device=...) first")
        self.alloc = alloc
        self.model = model
        self.optimizer = optimizer
        self.listeners: List[Callable[[str, str, torch.nn.Module, Any], None]] = []
        self._handles: List[Any] = []
        self._names: Dict[int, str] = {id(m): name for name, m in model.named_modules()}
        self._owner: Dict[int, str] = {}  # id(param) -> path of the module that owns it (first owner)
        for name, m in model.named_modules():
            for p in m.parameters(recurse=False):
                self._owner.setdefault(id(p), name)
        self._forward_depth = 0
        self._backward_tagged = False
        self._optimizer_tagged = False
        for name, m in model.named_modules():
            self._hook_module(name, m)
        for p in model.parameters():
            if hasattr(p, "register_post_accumulate_grad_hook"):
                self._handles.append(p.register_post_accumulate_grad_hook(self._grad_ready))
        if optimizer is not None:
            self._handles.append(optimizer.register_step_pre_hook(self._optimizer_pre))
            self._handles.append(optimizer.register_step_post_hook(self._optimizer_post))
        self.retag_parameters()

    # --------------------------------------------------------------- hooks
    def _hook_module(self, name: str, m: torch.nn.Module) -> None:
        layer = layer_id(name)
        is_root = m is self.model

        def pre(module: torch.nn.Module, args: Any) -> None:
            if is_root and not _in_backward():
                self._root_forward_start(args)
            phase = "recompute" if _in_backward() else "forward"
            push_tag(layer, phase, "temporary")
            for fn in self.listeners:
                fn("forward_pre", name, module, args)

        def post(module: torch.nn.Module, args: Any, output: Any) -> None:
            pop_tag()
            for fn in self.listeners:
                fn("forward_post", name, module, output)
            if not _in_backward():
                on_gradient_of_outputs(output, backward_pre)
            if is_root and not _in_backward():
                self._root_forward_end()

        def backward_pre(grad: Any) -> None:
            # One backward tag at a time: the module whose output gradient arrives
            # replaces the previous one (an end-of-module event does not exist for
            # every module, so no stack); an autograd callback clears the last.
            # The process-wide shared tag, not this thread's stack: on CUDA,
            # autograd runs backward on a device thread of its own, and the
            # callback may run on yet another thread than this hook.
            if not self._backward_tagged:
                torch.autograd.Variable._execution_engine.queue_callback(self._backward_end)
            backward = _lib.Tag(layer, _lib.category_id("temporary"), _lib.phase_id("backward"))
            _lib.check(_lib.lib().mf_tag_set_shared(backward), "backward tag")
            self._backward_tagged = True

        self._handles.append(m.register_forward_pre_hook(pre))
        try:
            self._handles.append(m.register_forward_hook(post, always_call=True))
        except TypeError:  # PyTorch < 2.1
            self._handles.append(m.register_forward_hook(post))

    def _root_forward_start(self, args: Any) -> None:
        self._forward_depth += 1
        for t in tensors_in(args):
            info = self.alloc.block_info(storage_ptr(t))
            if info is not None and info["category"] == "other":
                self.alloc.retag(storage_ptr(t), "input")

    def _root_forward_end(self) -> None:
        self._forward_depth -= 1
        if self._forward_depth == 0:
            self.alloc.retag_live("forward", "temporary", "activation")

    def _backward_end(self) -> None:
        if self._backward_tagged:
            _lib.lib().mf_tag_clear_shared()
            self._backward_tagged = False
        for fn in self.listeners:
            fn("backward_end", "", self.model, None)

    def _grad_ready(self, p: torch.Tensor) -> None:
        if p.grad is not None:
            self.alloc.retag(storage_ptr(p.grad), "gradient", self._owner.get(id(p), ""), "backward")

    def _optimizer_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.retag_gradients()
        push_tag(0, "optimizer", "temporary")
        self._optimizer_tagged = True

    def _optimizer_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._optimizer_tagged:
            pop_tag()
            self._optimizer_tagged = False
        self.retag_optimizer_state()

    # -------------------------------------------------------------- re-tags
    def retag_parameters(self) -> int:
        """Tag every parameter's block as a parameter of its module; the count of
        parameters that are not memfit blocks (made before memfit was installed)."""
        foreign = 0
        for p in self.model.parameters():
            if not self.alloc.retag(storage_ptr(p), "parameter", self._owner.get(id(p), "")):
                foreign += 1
        return foreign

    def retag_gradients(self) -> None:
        for p in self.model.parameters():
            if p.grad is not None:
                self.alloc.retag(storage_ptr(p.grad), "gradient", self._owner.get(id(p), ""), "backward")

    def retag_optimizer_state(self) -> None:
        if self.optimizer is None:
            return
        for p, state in self.optimizer.state.items():
            owner = self._owner.get(id(p), "")
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.numel() > 0:
                    self.alloc.retag(storage_ptr(value), "optimizer_state", owner, "optimizer")

    def owner_of(self, p: torch.Tensor) -> str:
        return self._owner.get(id(p), "")

    def name_of(self, m: torch.nn.Module) -> str:
        return self._names.get(id(m), "")

    # ------------------------------------------------------------ lifetime
    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._backward_tagged:
            _lib.lib().mf_tag_pop()
            self._backward_tagged = False

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def move_parameters_into_memfit(model: torch.nn.Module, alloc: Allocator) -> int:
    """Copy parameters (and buffers) that were allocated before memfit was
    installed into memfit blocks, so they are counted; returns how many moved."""
    moved = 0
    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                if alloc.block_info(storage_ptr(p)) is None:
                    p.data = p.data.clone()
                    moved += 1
            for name, b in list(module.named_buffers(recurse=False)):
                if b is not None and alloc.block_info(storage_ptr(b)) is None:
                    module._buffers[name] = b.clone()
                    moved += 1
    return moved


def track(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> Tracker:
    """Tag `model`'s (and `optimizer`'s) memory in memfit's stats by layer and category."""
    return Tracker(model, optimizer)
