"""memfit.apply (checkpoint and per-module precision through torch.utils.checkpoint
and autocast) and verify: run a plan for real under memfit with the budget as
capacity. The plan itself (memfit.plan, memfit.Plan) is in documents.py, without torch."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.utils.checkpoint

from . import _lib
from ._lib import MemfitError, is_out_of_memory
from .documents import (  # noqa: F401  (also importable from memfit.planning, as before)
    MFP_ERR_NO_FIT, PLAN_FORMAT, PLAN_VERSION, Plan, Profile, check_profile, plan, predicted_allocated)
from .profiling import PRECISIONS, to_device
from .recompute import context_fn as recompute_context_fn, no_cache_config, without_cache
from .segments import Segment
from .selective import context_fn as selective_context_fn

# ------------------------------------------------------------------- apply


def _cast_floats(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_floats(x, dtype) for x in obj)
    if isinstance(obj, dict):
        return {k: _cast_floats(v, dtype) for k, v in obj.items()}
    return obj


def _device_type(module: torch.nn.Module) -> str:
    for p in module.parameters():
        return p.device.type
    return "cpu"


def _runner(module: torch.nn.Module, checkpoint: bool, precision: str) -> Callable[..., Any]:
    """`module`'s own forward run in `precision` (its autocast), as a checkpointed
    layer's or an uncheckpointed one's."""
    original = module.forward
    dtype = PRECISIONS[precision]
    device_type = _device_type(module)

    def run(*args: Any, **kwargs: Any) -> Any:
        if dtype is None:  # fp32: autocast off, and inputs from a lower-precision layer cast back
            with torch.autocast(device_type=device_type, enabled=False):
                return original(*_cast_floats(args, torch.float32), **_cast_floats(kwargs, torch.float32))
        # A checkpointed layer's casts of its weights are not cached: the cache
        # would hold them until the outermost autocast exits, for nothing (its
        # backward recomputes them, after that exit), and what that cache frees
        # at the exit would depend on which layers are checkpointed.
        with torch.autocast(device_type=device_type, dtype=dtype, cache_enabled=not checkpoint):
            return original(*args, **kwargs)
    return run


def _install(module: torch.nn.Module, forward: Callable[..., Any]) -> None:
    module._memfit_forward = module.forward  # type: ignore[attr-defined]
    module.forward = forward  # type: ignore[method-assign]


def _wrap(module: torch.nn.Module, checkpoint: bool, precision: str, selective: bool = False) -> None:
    """Run `module` in `precision`, checkpointed when asked: its whole forward
    recomputed in backward, or with `selective` only what memfit.selective's
    policy does not keep."""
    contexts = recompute_context_fn(module, selective_context_fn() if selective else None) if checkpoint else None
    extra = {"context_fn": contexts} if contexts is not None else {}
    run = _runner(module, checkpoint, precision)

    def forward(*args: Any, **kwargs: Any) -> Any:
        if checkpoint and torch.is_grad_enabled():
            args, kwargs = without_cache(module, args, kwargs)
            return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False, **extra, **kwargs)
        return run(*args, **kwargs)
    _install(module, forward)


def _segments(layers: List[Dict[str, Any]]) -> Dict[Any, List[Dict[str, Any]]]:
    """The plan's checkpoint segments (layers with the same "segment"), each a run of
    consecutive checkpointed layers, checked."""
    groups: Dict[Any, List[Dict[str, Any]]] = {}
    previous = None
    for layer in layers:
        seg = layer.get("segment")
        if seg is None:
            previous = None
            continue
        name = layer["name"]
        if isinstance(seg, bool) or not isinstance(seg, int):
            raise MemfitError(f"memfit.apply: layer {name!r}: segment must be an integer, not {seg!r}")
        if not layer["checkpoint"] or layer.get("selective", False):
            raise MemfitError(f"memfit.apply: layer {name!r} is in segment {seg} but not checkpointed as a whole "
                              "(a checkpoint segment's layers have checkpoint true and selective false)")
        if seg in groups and previous != seg:
            raise MemfitError(f"memfit.apply: segment {seg}'s layers are not consecutive in the plan "
                              f"({groups[seg][-1]['name']!r}, then {name!r} after other layers)")
        groups.setdefault(seg, []).append(layer)
        previous = seg
    for seg, members in groups.items():
        if len(members) < 2:
            raise MemfitError(f"memfit.apply: segment {seg} has one layer ({members[0]['name']!r}); a checkpoint "
                              "segment needs two or more (checkpoint a single layer without \"segment\")")
    return groups


def _close_segments_hook(segments: List[Segment]) -> Callable[..., None]:
    """After the model's forward (always_call: also when it raised): a segment still
    open is closed, with a MemfitError unless the forward's own error is on its way."""
    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        failing = sys.exc_info()[1] is not None
        for segment in segments:
            if failing:
                segment.abandon()
            else:
                segment.check_closed()
    return hook


def apply(model: torch.nn.Module, the_plan: Union[Plan, str, Path]) -> torch.nn.Module:
    """Checkpoint and set the precision of each layer the plan names (in place;
    returns the model). A layer with "selective" true is checkpointed
    selectively (memfit.selective). Layers the plan keeps in fp32 without a
    checkpoint are left alone unless a lower-precision layer runs before them.
    A transformers model's config.use_cache is turned off (memfit.recompute)."""
    if not isinstance(the_plan, Plan):
        the_plan = Plan.load(the_plan)
    if no_cache_config(model):
        warnings.warn("memfit.apply: the model's config.use_cache was on; it is now off (in training a key/value "
                      "cache only holds memory, and memfit profiles the model without it)", stacklevel=2)
    modules = dict(model.named_modules())
    mixed = any(layer["precision"] != "fp32" for layer in the_plan.layers)
    if hasattr(model, "_memfit_segments_hook"):
        raise MemfitError("memfit.apply: the model already has a plan applied; call memfit.unapply first")
    segments = _segments(the_plan.layers)
    in_segment = {layer["name"] for members in segments.values() for layer in members}
    for layer in the_plan.layers:
        name = layer["name"]
        if name not in modules or name == "":
            raise MemfitError(f"memfit.apply: the plan names layer {name!r}, which this model does not have")
        if layer["precision"] not in PRECISIONS:
            raise MemfitError(f"memfit.apply: layer {name!r}: unknown precision {layer['precision']!r}")
        module = modules[name]
        if hasattr(module, "_memfit_forward"):
            raise MemfitError(f"memfit.apply: layer {name!r} already has a plan applied; call memfit.unapply first")
        selective = bool(layer.get("selective", False))
        if selective and not layer["checkpoint"]:
            raise MemfitError(f"memfit.apply: layer {name!r}: selective is true but checkpoint is false "
                              "(selective checkpointing is a kind of checkpointing)")
        if name in in_segment:
            continue
        if layer["checkpoint"] or layer["precision"] != "fp32" or mixed:
            _wrap(module, bool(layer["checkpoint"]), layer["precision"], selective)
    built = []
    for members in segments.values():
        names = [layer["name"] for layer in members]
        runs = [_runner(modules[layer["name"]], True, layer["precision"]) for layer in members]
        segment = Segment(names, [modules[n] for n in names], runs)
        for i, n in enumerate(names):
            _install(modules[n], segment.forward_of(i))
        built.append(segment)
    if built:
        model._memfit_segments_hook = model.register_forward_hook(  # type: ignore[attr-defined]
            _close_segments_hook(built), always_call=True)
    return model


def needs_grad_scaler(the_plan: Union[Plan, str, Path]) -> bool:
    """Whether the plan runs any layer in fp16: then the training loop needs a
    torch.amp.GradScaler (scale the loss before backward, scaler.step(optimizer),
    scaler.update()), as memfit's profile and verify use; apply changes only the
    model."""
    if not isinstance(the_plan, Plan):
        the_plan = Plan.load(the_plan)
    return any(layer["precision"] == "fp16" for layer in the_plan.layers)


def unapply(model: torch.nn.Module) -> torch.nn.Module:
    hook = getattr(model, "_memfit_segments_hook", None)
    if hook is not None:
        hook.remove()
        del model._memfit_segments_hook
    for module in model.modules():
        if hasattr(module, "_memfit_forward"):
            del module.forward
            del module._memfit_forward
    return model


# ------------------------------------------------------------------ verify


def verify(job: Any, the_plan: Union[Plan, str, Path], budget: Union[str, int], device: str = "cpu",
           steps: int = 3, warmup_steps: int = 1, snapshot: Optional[Union[str, Path]] = None,
           progress: Optional[Callable[[str], None]] = None,
           wrap: Optional[Callable[[torch.nn.Module], torch.nn.Module]] = None) -> Dict[str, Any]:
    """Apply the plan and train `warmup_steps + steps` real steps at its batch
    under memfit with the budget as capacity; measured against predicted peak.
    Best run in a fresh process (python3 -m memfit verify): memfit becomes the
    process's allocator with that capacity. snapshot: also write PyTorch's
    memory snapshot (memfit.snapshot) at the end of the run there, with the
    trace of the measured steps (and of an OOM's unwinding) as device_traces.
    wrap: called with the model after the plan is applied, returns the module
    the loss runs (e.g. DistributedDataParallel over it: memfit.distributed);
    the optimizer and the tracking stay on the model's own parameters."""
    from .install import current, install
    from .job import Job, load_job
    from .tracking import Tracker, move_parameters_into_memfit

    if not isinstance(the_plan, Plan):
        the_plan = Plan.load(the_plan)
    budget_bytes = _lib.parse_size(budget, "budget")
    alloc = current()
    if alloc is None or alloc.device != device:
        alloc = install(device, capacity=budget_bytes)
    else:  # a fresh allocator with this capacity: what earlier work left behind does not count
        if device == "cpu":
            alloc = install("cpu", capacity=budget_bytes)
        else:
            alloc.set_capacity(budget_bytes)
    job_obj: Job = load_job(job) if isinstance(job, str) else job
    job_obj.check()
    model = job_obj.model.to(device)
    move_parameters_into_memfit(model, alloc)
    apply(model, the_plan)
    train_model = wrap(model) if wrap is not None else model
    optimizer = job_obj.optimizer(model.parameters())
    tracker = Tracker(model, optimizer, alloc)
    scaler = None
    if needs_grad_scaler(the_plan):  # as the profile's fp16 settings trained
        from .profiling import MAX_SKIPPED_WARMUP, grad_scaler, scaler_step

        scaler = grad_scaler(device)
    batch_size = the_plan.batch_size
    result: Dict[str, Any] = {
        "batch_size": batch_size,
        "budget_bytes": budget_bytes,
        # The model's peak plus what the profile's checkpoint and ladder checks add (PLAN.md).
        "predicted_peak_bytes": predicted_allocated(the_plan.data),
        "model_peak_bytes": the_plan.data["predicted_peak_bytes"],
        "checkpoint_correction_bytes": the_plan.data.get("checkpoint_correction_bytes", 0),
        "predicted_reserved_bytes": the_plan.data.get("predicted_reserved_bytes"),
        "measured_peak_bytes": None,
        "measured_peak_reserved_bytes": None,
        "oom": False,
        "error": None,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "step_seconds": None,
    }
    times: List[float] = []
    traced = False
    if progress:
        from .reporting import human

        progress(f"verify: batch {batch_size} with a capacity of {human(budget_bytes)}: "
                 f"{warmup_steps} warm-up + {steps} measured steps")
    try:
        i, skipped = 0, 0
        while i < warmup_steps + steps:
            if i == warmup_steps:
                alloc.reset_peaks()
                if snapshot is not None:
                    alloc.trace_start()
                    traced = True
            optimizer.zero_grad(set_to_none=True)
            batch = to_device(job_obj.make_batch(batch_size), device)
            t0 = time.perf_counter()
            loss = job_obj.loss_fn(train_model, batch)
            again = False
            if scaler is not None:
                scaler.scale(loss).backward()
                # As the profile does: the warm-up goes on until the optimizer has
                # taken a step (and has its state), however many the scaler skips.
                again = scaler_step(scaler, optimizer) and i < warmup_steps and skipped < MAX_SKIPPED_WARMUP
                skipped += again
            else:
                loss.backward()
                optimizer.step()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup_steps:
                times.append(time.perf_counter() - t0)
            del loss, batch
            if not (again and i == warmup_steps - 1):
                i += 1
    except RuntimeError as e:  # torch.OutOfMemoryError, or the plugin's RuntimeError without a thrower
        if not is_out_of_memory(e):
            raise
        result["oom"] = True
        result["error"] = str(e).splitlines()[0]
    finally:
        tracker.remove()
        if traced:
            alloc.trace_stop()
    if snapshot is not None:  # right after the trace stops: it leads to this state
        from .snapshot import snapshot as write_snapshot

        write_snapshot(snapshot, allocator=alloc, trace=traced)
    stats = alloc.stats()
    result["measured_peak_bytes"] = stats["allocated_bytes"]["peak"]
    result["measured_peak_reserved_bytes"] = stats["reserved_bytes"]["peak"]
    predicted = result["predicted_peak_bytes"]
    # A run that ran out of memory stopped early: its peak says nothing about the prediction.
    fits = not result.get("oom")
    result["error_percent"] = (100.0 * (result["measured_peak_bytes"] - predicted) / predicted
                               if predicted and fits else None)
    predicted_reserved = result["predicted_reserved_bytes"]
    result["reserved_error_percent"] = (100.0 * (result["measured_peak_reserved_bytes"] - predicted_reserved)
                                        / predicted_reserved if predicted_reserved and fits else None)
    if times:
        times.sort()
        result["step_seconds"] = times[len(times) // 2]
    return result
