"""memfit.profile: run a few real training steps per (batch size, precision),
trace every allocation with marks at each layer's forward and backward, and
turn the trace into the profile that planner/PROFILE.md documents."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from . import _lib, timing
from ._lib import MemfitError, categories
from .allocator import Allocator, tag
from .blocks import describe, find_units
from .documents import FORMAT, VERSION, Profile  # noqa: F401  (also memfit.profiling.Profile)
from .install import current, install
from .job import Job, load_job
from .loader import profile_loader
from .recompute import no_cache_config
from .tracking import Tracker, move_parameters_into_memfit, on_gradient_of_outputs, storage_ptr, tensors_in

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Mark ids in the trace. Layer marks add the layer's index.
STEP_START, FORWARD_END, LOSS_END, BACKWARD_END, STEP_END = 1, 2, 3, 4, 5
FORWARD_MARK, BACKWARD_MARK = 1_000_000, 2_000_000
TIMELINE_POINTS = 1500


def to_device(obj: Any, device: str) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


@dataclass
class _StepRecord:
    marks: List[Tuple[int, int]] = field(default_factory=list)  # (mark id, C allocated bytes at the mark)
    outputs: Dict[int, List[Tuple[int, int]]] = field(default_factory=dict)  # layer -> [(storage ptr, nbytes)]
    backward_marked: set = field(default_factory=set)  # layers whose backward window is open
    seconds: float = 0.0


class _Profiler:
    def __init__(self, job: Job, alloc: Allocator, device: str) -> None:
        self.job = job
        self.alloc = alloc
        self.device = device
        model = job.model.to(device)
        model.train()  # a training step: dropout and batch-norm statistics as in training
        move_parameters_into_memfit(model, alloc)
        self.model = model
        with tag("", "none", "optimizer_state"):
            self.optimizer = job.optimizer(model.parameters())
        self.tracker = Tracker(model, self.optimizer, alloc)
        self.blocks = find_units(model, job.blocks)
        self.index = {id(m): i for i, (_, m) in enumerate(self.blocks)}
        self.record: Optional[_StepRecord] = None
        # Units whose forward runs more than once in a step (a dropout module a
        # T5 stack applies after its embedding and again after its final norm):
        # their later calls land in other units' windows, and checkpointing the
        # module changes what those windows hold, so they are not layers. Found
        # in the first (untraced) step; their calls become enclosing code.
        self.calls: Dict[int, int] = {}
        self.reused: Dict[int, int] = {}
        self.scaler: Optional[Any] = None  # fp16 settings train with a GradScaler, as fp16 training must
        self.skipped = False  # the last step's optimizer step was skipped by the scaler (inf/nan gradients)
        self.seconds = 0.0  # the last step's wall time, batch creation excluded
        self._handles = []
        for i, (_, m) in enumerate(self.blocks):
            self._handles.append(m.register_forward_pre_hook(self._forward_pre(i)))
            self._handles.append(m.register_forward_hook(self._forward_post(i)))
        self.tracker.listeners.append(self._root_listener)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self.tracker.remove()

    # Marks: one per window boundary, with memfit's own allocated count beside it.
    def mark(self, mark_id: int) -> None:
        if self.record is None:
            return
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.alloc.trace_mark(mark_id)
        self.record.marks.append((mark_id, self.alloc.allocated()))

    def _forward_pre(self, i: int):
        def hook(module: torch.nn.Module, args: Any) -> None:
            self.calls[i] = self.calls.get(i, 0) + 1
            if i in self.reused:
                return
            if self.record is not None and i not in self.record.outputs:
                self.mark(FORWARD_MARK + i)

        return hook

    def _forward_post(self, i: int):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            if self.record is None or i in self.record.outputs or i in self.reused:
                return
            seen = {}
            for t in tensors_in(output):
                seen[storage_ptr(t)] = t.untyped_storage().nbytes()
            self.record.outputs[i] = list(seen.items())
            on_gradient_of_outputs(output, self._backward_pre(i))

        return hook

    def _backward_pre(self, i: int):
        def hook(grad: Any) -> None:
            if self.record is not None and i not in self.record.backward_marked:
                self.record.backward_marked.add(i)
                self.mark(BACKWARD_MARK + i)

        return hook

    def _root_listener(self, event: str, name: str, module: torch.nn.Module, payload: Any) -> None:
        if event == "forward_post" and module is self.model:
            self.mark(FORWARD_END)

    def _scaler(self) -> Any:
        if self.scaler is None:
            with tag("", "none", "optimizer_state"):
                self.scaler = grad_scaler(self.device)
        return self.scaler

    def step(self, batch_size: int, precision: str, traced: bool) -> None:
        self.record = _StepRecord() if traced else None
        self.calls = {}
        self.optimizer.zero_grad(set_to_none=True)
        with tag("", "none", "input"):
            batch = to_device(self.job.make_batch(batch_size), self.device)
        if self.device == "cuda" and self.record is None:
            torch.cuda.synchronize()  # traced steps synchronize at every mark
        t0 = time.perf_counter()
        self.mark(STEP_START)
        # The precision is the layers' own (memfit.apply wraps each in autocast,
        # as a plan runs them): what runs outside the layers, the loss computed
        # by loss_fn included, runs as it would under the plan.
        with tag("", "forward", "temporary"):
            loss = self.job.loss_fn(self.model, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise MemfitError("memfit.profile: the job's loss_fn must return a scalar tensor")
        for i, count in self.calls.items():
            if count > 1 and i not in self.reused:
                if self.record is not None:
                    raise MemfitError(f"memfit.profile: {self.blocks[i][0]} ran {count} times in a measured step but "
                                      "once in the warm-up: the model's forward must run the same modules every step")
                self.reused[i] = count
        self.alloc.retag_live("forward", "temporary", "activation")
        scaler = self._scaler() if precision == "fp16" else None
        if scaler is not None:
            with tag("", "forward", "temporary"):
                loss = scaler.scale(loss)
        self.mark(LOSS_END)
        with tag("", "backward", "temporary"):
            loss.backward()
        self.mark(BACKWARD_END)
        self.skipped = scaler_step(scaler, self.optimizer) if scaler is not None else False
        if scaler is None:
            self.optimizer.step()
        self.mark(STEP_END)
        if self.device == "cuda" and self.record is None:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - t0
        if self.record is not None:
            self.record.seconds = self.seconds
        del loss, batch


def grad_scaler(device: str) -> Any:
    """The GradScaler fp16 training uses (fp16 gradients underflow without one):
    the loss is scaled before backward, the step skipped on inf/nan gradients."""
    return torch.amp.GradScaler(device)


def scaler_step(scaler: Any, optimizer: Any) -> bool:
    """scaler.step + update; True when the scaler skipped the optimizer's step
    (inf/nan gradients: it lowered its scale). Until a step is taken an
    optimizer like Adam has no state, so a warm-up goes on until one is."""
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() < before


MAX_SKIPPED_WARMUP = 40  # a GradScaler halves its scale per skipped step: 2^16 down to 2^-24


def _ensure_allocator(device: str, capacity: Optional[Union[str, int]]) -> Allocator:
    alloc = current()
    if alloc is not None and alloc.device != device:
        raise MemfitError(f"memfit.profile: memfit is installed for {alloc.device}, not {device}")
    if alloc is None:
        options = {"capacity": capacity} if capacity is not None else {}
        alloc = install(device, **options)
    elif capacity is not None:
        alloc.set_capacity(_lib.parse_size(capacity, "capacity"))
    return alloc


def profile(
    job: Union[Job, str],
    device: str = "cpu",
    batch_sizes: Sequence[int] = (2, 4),
    precisions: Sequence[str] = ("fp32",),
    steps: int = 3,
    warmup_steps: int = 2,
    capacity: Optional[Union[str, int]] = None,
    snapshot: Optional[Union[str, Path]] = None,
    blocks: Union[None, str, Sequence[str]] = None,
    progress: Optional[Callable[[str], None]] = None,
    selective: bool = True,
    timing_batches: Optional[Sequence[int]] = None,
    timing_max_batch: Optional[int] = None,
) -> Profile:
    """Measure `job` (a memfit.Job or 'FILE.py:FUNC') on `device` at each batch
    size and precision; see planner/PROFILE.md for what the result holds.
    snapshot: also write PyTorch's memory snapshot (memfit.snapshot) of the
    largest batch's run (first precision) there, with the trace of its measured
    steps as device_traces. blocks: the modules the plan decides on (a
    regular expression over module paths, or a list of paths), replacing the
    job's own `blocks` and the default rule (memfit.blocks.find_units).
    progress: called with a line for each thing measured (the command line
    prints them on stderr). selective: also measure every layer selectively
    checkpointed (memfit.selective), so that plans may choose it; False
    skips those runs (one traced run per setting fewer). timing_batches: the
    batch sizes whose untraced steps the planner calibrates its times to
    (memfit.timing; PROFILE.md, "timing"); None: the profiled sizes and
    doublings of the largest until a step takes 0.25 s (and the peak's
    excess over the profiled line has stopped rising: memfit.timing), the memory would
    exceed half the device's or 32x the largest, and at most
    timing_max_batch (the largest batch the job can make), then batches between
    points whose errors against the model disagree (memfit.timing.refinements);
    () measures none."""
    say = progress or (lambda message: None)
    if device not in ("cpu", "cuda"):
        raise MemfitError(f"memfit.profile: device must be 'cpu' or 'cuda', not {device!r}")
    sizes = list(batch_sizes)
    if not sizes or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in sizes):
        raise MemfitError(f"memfit.profile: batch_sizes must be positive integers, got {batch_sizes!r}")
    for p in precisions:
        if p not in PRECISIONS:
            raise MemfitError(f"memfit.profile: unknown precision {p!r} (known: {', '.join(PRECISIONS)})")
    if steps < 1 or warmup_steps < 1:
        raise MemfitError("memfit.profile: steps and warmup_steps must be at least 1 (the warm-up creates optimizer state)")
    timed = timing.ladder(sizes, timing_batches, timing_max_batch)
    alloc = _ensure_allocator(device, capacity)
    # Garbage of earlier work in this process (a model and optimizer held only by
    # reference cycles) would count as this job's fixed bytes until collected.
    gc.collect()
    job_name = job if isinstance(job, str) else type(job.model).__name__
    if isinstance(job, str):
        job = load_job(job)
    if blocks is not None:
        job = dataclasses.replace(job, blocks=blocks)
    job.check()
    loader = profile_loader(job, sizes, say)  # Job(loader=...): its samples/s at the largest batch (COMPUTE.md); None without one
    kept = _ModelState(job.model)  # the caller's model comes back as it was: weights, buffers, mode
    prof = _Profiler(job, alloc, device)
    optimizer_name = type(prof.optimizer).__name__
    say(f"profiling {job_name} on {device}: {len(prof.blocks)} units: {describe(prof.blocks)}")
    runs = len(precisions) * len(sizes) * (4 if selective else 3)  # per setting: its runs and its check
    done = 0

    def started(what: str) -> None:
        nonlocal done
        done += 1
        say(f"[{done}/{runs}] {what}: {warmup_steps} warm-up + {steps} measured steps")
    settings, checks, timed_steps = [], [], []

    def document(timed: List[Dict[str, Any]], blocks, reused: Dict[int, int]) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "memfit_version": _lib.lib().mf_version().decode(),
            "torch_version": torch.__version__,
            "device": device,
            "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "job": job_name,
            "optimizer": optimizer_name,
            "rounding_bytes": 512,
            "granule_bytes": alloc.granule(),
            "warmup_steps": warmup_steps,
            "steps": steps,
            "settings": settings,
            "checkpoint_checks": checks,
            "timing": timed,
            # Units the planner does not decide on, and why (PROFILE.md).
            "units_not_planned": _units_not_planned(blocks, reused, settings[0]["layers"]),
        }
    if no_cache_config(job.model):  # as memfit.apply runs it (memfit.recompute); kept gives it back
        say("the model's config.use_cache is off while profiling, as memfit.apply turns it off: in training "
            "a key/value cache only holds memory")
    try:
        for precision in precisions:
            for b in sizes:
                snapshot_here = snapshot if (precision, b) == (precisions[0], max(sizes)) else None
                started(f"batch {b}, {precision}")
                with _applied(prof, precision, ()):
                    setting = _measure(prof, b, precision, steps, warmup_steps, snapshot_here)
                started(f"batch {b}, {precision}, every layer checkpointed")
                setting["checkpointed"] = _measure_checkpointed(prof, b, precision, steps, warmup_steps, setting)
                if selective:
                    started(f"batch {b}, {precision}, every layer selectively checkpointed")
                    setting["selective"] = _measure_checkpointed(prof, b, precision, steps, warmup_steps, setting,
                                                                 selective=True)
                settings.append(setting)
        # The check mixes the ways a layer can run, so that each meets the others
        # as neighbours: checkpointed, kept, (selective,) checkpointed, ...
        cycle = 3 if selective else 2
        names = [layer["name"] for layer in settings[0]["layers"]]
        full = [name for k, name in enumerate(names) if k % cycle == 0]
        partial = [name for k, name in enumerate(names) if k % cycle == 2]
        what = "layers checkpointed, kept and selectively checkpointed in turn" if selective else \
            "every other layer checkpointed"
        # In every precision: what checkpointing keeps differs between them (PLAN.md, "The checkpoint check").
        for precision in precisions:
            for b in sizes:
                started(f"checkpoint check at batch {b}, {precision}, {what}")
                checks.append(_measure_check(prof, b, precision, steps, warmup_steps, full, partial))
        for precision in precisions:
            def time_steps(b, prof=prof, precision=precision):
                return _time_steps(prof, b, precision, steps, 1)
            line = timing.profiled_line([(s["batch_size"], s["peak_allocated_bytes"])
                                         for s in settings if s["precision"] == precision])
            with _applied(prof, precision, ()):
                plain = timing.measure_ladder(timed, timing_batches is None, max(sizes), alloc.capacity(), time_steps,
                                              say, alloc.empty_cache, precision, line=line)
            timed_steps += plain
            # Recomputation's share of the step changes with the batch (its fixed costs do not
            # grow): the every-layer-checkpointed (and selective) step at a few of those batches.
            # Where the plain ladder ended on memory, also past it: checkpointed plans reach batches
            # the plain step cannot (timing.mode_extension).
            at = timing.mode_batches(plain)
            past = timing.mode_extension(plain, timed, timing_batches is None, max(sizes), timing_max_batch)
            for mode in ("checkpointed", "selective") if selective else ("checkpointed",):
                with _applied(prof, precision, names if mode == "checkpointed" else (),
                              names if mode == "selective" else ()):
                    points = timing.measure_ladder(at, False, max(sizes), alloc.capacity(), time_steps, say,
                                                   alloc.empty_cache, precision, mode)
                    if past and len(points) == len(at):  # none ran out of memory
                        points += timing.measure_ladder(past, True, past[0], alloc.capacity(), time_steps, say,
                                                        alloc.empty_cache, precision, mode)
                    timed_steps += points
            if timing_batches is None:  # the default ladder: denser where the ladder check's error changes
                timed_steps += _refine_ladder(prof, precision, names, selective, time_steps, say, alloc,
                                              lambda added: document(timed_steps + added, prof.blocks, prof.reused))
    finally:
        prof_blocks, reused = prof.blocks, dict(prof.reused)
        prof.close()
        del prof  # its hooks' closures form cycles: collect them so the model's memory goes now
        gc.collect()
        kept.restore()
    names = [[layer["name"] for layer in s["layers"]] for s in settings]
    if any(n != names[0] for n in names):
        raise MemfitError("memfit.profile: the layers ran in a different order in different settings; cannot profile")
    data = document(timed_steps, prof_blocks, reused)
    if loader is not None:
        data["loader"] = loader
    for unit in data["units_not_planned"]:
        say(f"not planned: {unit['name']} ({unit['type']}): {unit['reason']}")
    return Profile(data)


class _ModelState:
    """The values of a model's parameters and buffers, its training mode and a
    transformers config's use_cache, kept while profiling trains it (optimizer
    steps change the weights, training steps the batch-norm statistics, the
    profile turns the cache off) and put back after. The copies are bytes
    held by numpy, outside every torch allocator, so the profile's memory does
    not see them."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.training = model.training
        self.use_cache = getattr(getattr(model, "config", None), "use_cache", None)
        self.values = {name: self._bytes(t) for name, t in self._tensors(model)}

    @staticmethod
    def _tensors(model: torch.nn.Module):
        yield from model.named_parameters(remove_duplicate=True)
        yield from ((name, b) for name, b in model.named_buffers(remove_duplicate=True) if b is not None)

    @staticmethod
    def _bytes(t: torch.Tensor):
        flat = t.detach().reshape(-1)
        return flat.view(torch.uint8).cpu().numpy().copy() if flat.numel() else None

    def restore(self) -> None:
        with torch.no_grad():
            for name, t in self._tensors(self.model):
                saved = self.values.get(name)
                if saved is not None:
                    t.copy_(torch.from_numpy(saved).view(t.dtype).view(t.shape))
        self.model.train(self.training)
        if self.use_cache is not None:
            self.model.config.use_cache = self.use_cache


def _units_not_planned(blocks, reused: Dict[int, int], layers: List[Dict[str, Any]]) -> List[Dict[str, str]]:
    planned = {layer["name"] for layer in layers}
    out = []
    for i, (name, module) in enumerate(blocks):
        if name in planned:
            continue
        reason = (f"its forward runs {reused[i]} times per step" if i in reused
                  else "its forward never ran")
        out.append({"name": name, "type": type(module).__name__, "reason": reason})
    return out


def _refine_ladder(prof: _Profiler, precision: str, names: Sequence[str], selective: bool,
                   time_steps: Callable[[int], Dict[str, float]], say: Callable[[str], None], alloc: Allocator,
                   document: Callable[[List[Dict[str, Any]]], Dict[str, Any]]) -> List[Dict[str, Any]]:
    """More timing entries of `precision` where the default ladder's points so far
    leave the ladder check's rule unsupported (memfit.timing.refinements): each
    round plans the profile as it stands (`document(added)`: with the entries
    added so far) for the model's peak at every point, then times the batches
    between disagreeing neighbours in that mode, until none are left or each
    mode has REFINE_POINTS more (an out-of-memory ends a mode's). The added
    entries; none when the planner cannot read the profile yet (said)."""
    from .documents import plan
    modes = ("plain", "checkpointed", "selective") if selective else ("plain", "checkpointed")
    left = dict.fromkeys(modes, timing.REFINE_POINTS)
    added: List[Dict[str, Any]] = []
    while True:
        try:  # the largest budget the planner takes, and batch 1: only the points' model peaks are read
            points = plan(document(added), budget="16TiB", max_batch=1).data["ladder_checks"]
        except MemfitError as e:
            say(f"timing {precision}: no points added between the ladder's ({e})")
            return added
        todo = {}
        for mode in modes:
            mine = [(c["batch_size"], c["measured"], c["predicted"]) for c in points
                    if c["precision"] == precision and c.get("mode", "plain") == mode]
            batches = timing.refinements(mine)[:left[mode]]
            if batches:
                todo[mode] = batches
        if not todo:
            return added
        for mode, batches in todo.items():
            say(f"timing {precision}, {mode}: the model's error changes between points; also at "
                f"{', '.join(map(str, batches))}")
            with _applied(prof, precision, names if mode == "checkpointed" else (),
                          names if mode == "selective" else ()):
                got = timing.measure_ladder(batches, False, 0, alloc.capacity(), time_steps, say,
                                            alloc.empty_cache, precision, mode)
            added += got
            left[mode] = left[mode] - len(batches) if len(got) == len(batches) else 0


@contextlib.contextmanager
def _applied(prof: _Profiler, precision: str, checkpointed: Sequence[str], selective: Sequence[str] = ()):
    """The model with every unit in `precision`, the named ones checkpointed
    and those in `selective` selectively checkpointed, through memfit.apply
    (nothing to apply for fp32 without checkpoints)."""
    from .planning import Plan, apply, unapply

    chosen, partial = set(checkpointed), set(selective)
    if precision == "fp32" and not chosen and not partial:
        yield
        return
    layers = [{"name": name, "checkpoint": name in chosen or name in partial, "selective": name in partial,
               "precision": precision}
              for i, (name, _) in enumerate(prof.blocks) if i not in prof.reused]
    apply(prof.model, Plan({"batch_size": 0, "layers": layers}))
    try:
        yield
    finally:
        unapply(prof.model)


def _measure_checkpointed(prof: _Profiler, batch_size: int, precision: str, steps: int, warmup: int,
                          plain: Dict[str, Any], selective: bool = False) -> Dict[str, Any]:
    """The setting's steps again with every layer checkpointed (selectively
    with `selective`), traced: what such a layer really keeps and what its
    recomputation costs, measured (PROFILE.md, "checkpointed" and
    "selective"), in the layers' order of the plain run."""
    names = [layer["name"] for layer in plain["layers"]]
    with _applied(prof, precision, () if selective else names, names if selective else ()):
        run = _measure(prof, batch_size, precision, steps, warmup)
    if [layer["name"] for layer in run["layers"]] != names:
        how = "selectively checkpointed" if selective else "checkpointed"
        raise MemfitError(f"memfit.profile: with every layer {how}, the layers ran in a different order; "
                          "cannot profile")
    keep = ("peak_allocated_bytes", "peak_reserved_bytes", "step_seconds", "fixed_bytes", "loss",
            "loss_backward", "optimizer")
    return dict({k: run[k] for k in keep},
                layers=[{k: layer[k] for k in ("name", "forward", "backward", "forward_seconds", "backward_seconds",
                                               "output_held_bytes")}
                        for layer in run["layers"]])


def _measure_check(prof: _Profiler, batch_size: int, precision: str, steps: int,
                   warmup: int, names: Sequence[str], selective: Sequence[str] = ()) -> Dict[str, Any]:
    """The checkpoint check (planner/PLAN.md): the same steps with the named
    layers checkpointed and those in `selective` selectively (the model's terms
    come from runs with none and with all, so a mixed plan tests how they
    combine), untraced; only their peaks are kept."""
    alloc = prof.alloc
    with _applied(prof, precision, names, selective):
        alloc.empty_cache()
        _warm_up(prof, batch_size, precision, warmup)
        alloc.reset_peaks()
        for _ in range(steps):
            prof.step(batch_size, precision, traced=False)
        stats = alloc.stats()
    check = {"batch_size": batch_size, "precision": precision, "checkpointed_layers": list(names),
             "peak_allocated_bytes": stats["allocated_bytes"]["peak"],
             "peak_reserved_bytes": stats["reserved_bytes"]["peak"]}
    if selective:
        check["selective_layers"] = list(selective)
    return check


def _measure(prof: _Profiler, batch_size: int, precision: str, steps: int, warmup: int,
             snapshot: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    alloc = prof.alloc
    alloc.empty_cache()
    _warm_up(prof, batch_size, precision, warmup)
    prof.tracker.retag_optimizer_state()
    alloc.reset_peaks()
    start_stats = alloc.stats()
    start_categories = alloc.categories()
    alloc.trace_start()
    records = []
    try:
        for _ in range(steps):
            prof.step(batch_size, precision, traced=True)
            records.append(prof.record)
            prof.record = None
    finally:
        alloc.trace_stop()
    end_stats = alloc.stats()
    events = alloc.trace_events()
    if snapshot is not None:  # now, before anything allocates: the trace leads to this state
        from .snapshot import snapshot as write_snapshot

        write_snapshot(snapshot, allocator=alloc, trace=events)
    analysis = _analyse(events, start_stats, start_categories, records)
    layers = _layer_fields(prof, analysis, records[-1])
    last = analysis["steps"][-1]
    for m in last["timeline"]["marks"]:
        m["label"] = _mark_label(prof, m["id"])
    setting = {
        "batch_size": batch_size,
        "precision": precision,
        "peak_allocated_bytes": end_stats["allocated_bytes"]["peak"],
        "peak_reserved_bytes": end_stats["reserved_bytes"]["peak"],
        "peak_requested_bytes": end_stats["requested_bytes"]["peak"],
        "fixed_bytes": last["fixed"],
        "input_bytes": last["input_bytes"],
        "totals": last["totals"],
        "totals_allocated": last["totals_allocated"],
        "step_seconds": statistics.median(r.seconds for r in records),
        "loss": last["loss"],
        "loss_backward": last["loss_backward"],
        "optimizer": last["optimizer"],
        "loss_seconds": _median_over_steps(analysis, "loss_seconds"),
        "loss_backward_seconds": _median_over_steps(analysis, "loss_backward_seconds"),
        "optimizer_seconds": _median_over_steps(analysis, "optimizer_seconds"),
        "layers": layers,
        "timeline": last["timeline"],
    }
    return setting


def _time_steps(prof: _Profiler, batch_size: int, precision: str, steps: int, warmup: int) -> Dict[str, float]:
    """The median wall time of `steps` untraced steps after the warm-up (one
    step: the allocator's cache and the kernels' for the new shape), every layer
    as it is (timing.py), and their peak allocated bytes."""
    _warm_up(prof, batch_size, precision, warmup)
    prof.alloc.reset_peaks()
    seconds = []
    for _ in range(steps):
        prof.step(batch_size, precision, traced=False)
        seconds.append(prof.seconds)
    return {"step_seconds": statistics.median(seconds), "peak_bytes": prof.alloc.stats()["allocated_bytes"]["peak"]}


def _warm_up(prof: _Profiler, batch_size: int, precision: str, warmup: int) -> None:
    """`warmup` untraced steps, and more while the GradScaler skips the
    optimizer's step (fp16): the measured steps start with the optimizer state."""
    for _ in range(warmup):
        prof.step(batch_size, precision, traced=False)
    extra = 0
    while prof.skipped:
        if extra == MAX_SKIPPED_WARMUP:
            raise MemfitError(f"memfit.profile: batch {batch_size}, {precision}: the GradScaler skipped "
                              f"{MAX_SKIPPED_WARMUP} optimizer steps in a row (the gradients are inf or nan)")
        prof.step(batch_size, precision, traced=False)
        extra += 1


def _mark_label(prof: _Profiler, mark_id: int) -> str:
    if FORWARD_MARK <= mark_id < BACKWARD_MARK:
        return "F " + prof.blocks[mark_id - FORWARD_MARK][0]
    if mark_id >= BACKWARD_MARK:
        return "B " + prof.blocks[mark_id - BACKWARD_MARK][0]
    return {FORWARD_END: "loss", LOSS_END: "backward", BACKWARD_END: "optimizer"}.get(mark_id, "")


# ---------------------------------------------------------------- analysis


def _final_tags(events: Sequence[_lib.TraceEvent]) -> Dict[int, int]:
    """For each alloc event index, the category its block had last (at its
    free, or at the end of the trace)."""
    final: Dict[int, int] = {}
    live: Dict[int, int] = {}  # addr -> alloc event index
    for i, e in enumerate(events):
        if e.kind == _lib.TRACE_ALLOC:
            live[e.addr] = i
            final[i] = e.category
        elif e.kind == _lib.TRACE_RETAG and e.addr in live:
            final[live[e.addr]] = e.category
        elif e.kind == _lib.TRACE_FREE and e.addr in live:
            final[live.pop(e.addr)] = e.category
    return final


def _analyse(events, start_stats, start_categories, records: List[_StepRecord]) -> Dict[str, Any]:
    """Replay the trace: live bytes, window points and per-category timelines."""
    final = _final_tags(events)
    cat_alloc = [start_categories[c]["bytes"]["current"] for c in categories()]
    cat_req = [start_categories[c]["requested"]["current"] for c in categories()]
    allocated = start_stats["allocated_bytes"]["current"]
    live: Dict[int, Tuple[int, int, int, int]] = {}  # addr -> (alloc index, size, requested, final category)
    marks: List[Dict[str, Any]] = []  # in order: id, event index, t_ns, allocated (replayed), categories
    samples: List[Tuple[int, int, List[int]]] = []  # (t_ns, allocated, per-category allocated)
    alloc_of: Dict[int, Tuple[int, int, int, int]] = {}
    free_index: Dict[int, int] = {}
    for i, e in enumerate(events):
        k = e.kind
        if k == _lib.TRACE_ALLOC:
            c = final[i]
            live[e.addr] = (i, e.size, e.requested, c)
            alloc_of[i] = (e.size, e.requested, c, e.layer)
            allocated += e.size
            cat_alloc[c] += e.size
            cat_req[c] += e.requested
        elif k == _lib.TRACE_FREE:
            entry = live.pop(e.addr, None)
            allocated -= e.size
            if entry is not None:
                free_index[entry[0]] = i
                c = entry[3]
            else:  # a block from before the trace: its tag when freed
                c = e.category
            cat_alloc[c] -= e.size
            cat_req[c] -= e.requested
        elif k == _lib.TRACE_RETAG:
            if e.addr not in live:  # blocks from before the trace move between categories when re-tagged
                cat_alloc[e.old_category] -= e.size
                cat_alloc[e.category] += e.size
                cat_req[e.old_category] -= e.requested
                cat_req[e.category] += e.requested
        elif k == _lib.TRACE_MARK:
            # rise: the allocator's window counter (the peak since the previous mark above the value there)
            marks.append({"id": e.addr, "index": i, "pos": len(marks), "t": e.t_ns, "allocated": allocated,
                          "before": marks[-1]["allocated"] if marks else start_stats["allocated_bytes"]["current"],
                          "rise": e.requested, "cat_alloc": list(cat_alloc), "cat_req": list(cat_req)})
            continue
        else:
            continue
        samples.append((e.t_ns, allocated, list(cat_alloc), list(cat_req)))
    measured_marks = [m for r in records for m in r.marks]
    if len(measured_marks) != len(marks):
        raise MemfitError(f"memfit.profile: {len(marks)} marks in the trace but {len(measured_marks)} recorded")
    for m, (mark_id, c_allocated) in zip(marks, measured_marks):
        if m["id"] != mark_id:
            raise MemfitError("memfit.profile: the trace's marks are out of order (allocations from another thread?)")
        m["c_allocated"] = c_allocated
    # Split the marks into steps, each starting at STEP_START.
    steps: List[List[Dict[str, Any]]] = []
    for m in marks:
        if m["id"] == STEP_START:
            steps.append([])
        steps[-1].append(m)
    ctx = {"events": events, "samples": samples, "alloc_of": alloc_of, "free_index": free_index, "marks": marks}
    return {"steps": [_step_windows(s, ctx) for s in steps], "ctx": ctx}


def _peak_between(marks: List[Dict[str, Any]], start_mark: Dict[str, Any], end_mark: Dict[str, Any]) -> int:
    """The peak of allocated bytes between two marks, from the allocator's window
    counters (each mark's rise over the window since the mark before it), not
    from a replay of the events between them."""
    return max([start_mark["allocated"]] +
               [m["before"] + m["rise"] for m in marks[start_mark["pos"] + 1 : end_mark["pos"] + 1]])


def _window(marks: List[Dict[str, Any]], a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, int]:
    return {"start": a["allocated"], "peak": _peak_between(marks, a, b), "end": b["allocated"]}


def _step_windows(marks: List[Dict[str, Any]], ctx: Dict[str, Any]) -> Dict[str, Any]:
    by_id: Dict[int, Dict[str, Any]] = {}
    for m in marks:
        by_id.setdefault(m["id"], m)
    for needed in (STEP_START, FORWARD_END, LOSS_END, BACKWARD_END, STEP_END):
        if needed not in by_id:
            raise MemfitError("memfit.profile: a training step did not reach every phase (did the model's forward run?)")
    fwd = [m for m in marks if FORWARD_MARK <= m["id"] < BACKWARD_MARK]
    bwd = [m for m in marks if m["id"] >= BACKWARD_MARK]
    fwd_bounds = [by_id[STEP_START]] + fwd[1:] + [by_id[FORWARD_END]]  # the first window opens at the step's start
    forward = {}
    for j, m in enumerate(fwd):
        forward[m["id"] - FORWARD_MARK] = (fwd_bounds[j], fwd_bounds[j + 1])
    bwd_bounds = bwd + [by_id[BACKWARD_END]]
    backward = {}
    for j, layer in enumerate(_backward_layers(bwd, forward)):
        if layer not in backward:
            backward[layer] = (bwd_bounds[j], bwd_bounds[j + 1])
    loss_backward_end = bwd[0] if bwd else by_id[BACKWARD_END]
    start, end = by_id[STEP_START], by_id[STEP_END]

    # Per-category peaks inside the step, from the samples (events) between the step's marks.
    t0, t1 = start["t"], end["t"]
    cat_peak_alloc = list(start["cat_alloc"])
    cat_peak_req = list(start["cat_req"])
    timeline_t: List[int] = [t0]
    timeline_cat: List[List[int]] = [list(start["cat_alloc"])]
    for t, _allocated, ca, cr in ctx["samples"]:
        if t < t0 or t > t1:
            continue
        for i in range(len(categories())):
            if ca[i] > cat_peak_alloc[i]:
                cat_peak_alloc[i] = ca[i]
            if cr[i] > cat_peak_req[i]:
                cat_peak_req[i] = cr[i]
        timeline_t.append(t)
        timeline_cat.append(ca)
    stride = max(1, -(-len(timeline_t) // TIMELINE_POINTS))  # ceil: at most TIMELINE_POINTS (+ the last)
    keep = list(range(0, len(timeline_t), stride))
    if keep[-1] != len(timeline_t) - 1:
        keep.append(len(timeline_t) - 1)
    timeline = {
        "t_seconds": [(timeline_t[i] - t0) / 1e9 for i in keep],
        "allocated_bytes": {c: [timeline_cat[i][j] for i in keep] for j, c in enumerate(categories())},
        "marks": [
            {"t_seconds": (m["t"] - t0) / 1e9, "id": m["id"], "allocated_bytes": m["allocated"],
             "memfit_allocated_bytes": m["c_allocated"],
             "category_bytes": dict(zip(categories(), m["cat_alloc"]))}
            for m in marks
        ],
    }
    seconds = lambda a, b: (b["t"] - a["t"]) / 1e9  # noqa: E731
    return {
        "fixed": start["allocated"],
        "input_bytes": start["cat_req"][categories().index("input")],
        "totals": dict(zip(categories(), cat_peak_req)),
        "totals_allocated": dict(zip(categories(), cat_peak_alloc)),
        "forward": forward,
        "backward": backward,
        "loss": _window(ctx["marks"], by_id[FORWARD_END], by_id[LOSS_END]),
        "loss_backward": _window(ctx["marks"], by_id[LOSS_END], loss_backward_end),
        "optimizer": _window(ctx["marks"], by_id[BACKWARD_END], end),
        "loss_seconds": seconds(by_id[FORWARD_END], by_id[LOSS_END]),
        "loss_backward_seconds": seconds(by_id[LOSS_END], loss_backward_end),
        "optimizer_seconds": seconds(by_id[BACKWARD_END], end),
        "forward_end_index": by_id[FORWARD_END]["index"],
        "loss_end_index": by_id[LOSS_END]["index"],
        "timeline": timeline,
    }


def _backward_layers(bwd: List[Dict[str, Any]], forward: Dict[int, Tuple[Dict[str, Any], Dict[str, Any]]]) -> List[int]:
    """The layer each backward mark opens, in the marks' order. Marks that follow
    one another with no allocation or free between them fired on the same
    gradient: a unit that returns its input (Dropout(p=0), as GPT-NeoX's
    emb_dropout, or nn.Identity) shares its output with the unit before it, and
    the tensor's hooks run in the order they were registered, the earlier unit's
    first. Within such a run the windows are empty but the last, and the last
    belongs to the earliest unit (its backward runs after the others'), so the
    layers of the run are taken in reverse forward order."""
    layers = [m["id"] - BACKWARD_MARK for m in bwd]  # each marked in its forward, so each has a forward window
    j = 0
    while j < len(bwd):
        k = j + 1
        while k < len(bwd) and bwd[k]["index"] == bwd[k - 1]["index"] + 1:
            k += 1
        layers[j:k] = sorted(layers[j:k], key=lambda layer: forward[layer][0]["pos"], reverse=True)
        j = k
    return layers


def _layer_fields(prof: _Profiler, analysis: Dict[str, Any], record: _StepRecord) -> List[Dict[str, Any]]:
    """The per-layer fields of PROFILE.md for the last measured step, in execution order."""
    step = analysis["steps"][-1]
    ctx = analysis["ctx"]
    events = ctx["events"]
    alloc_of, free_index = ctx["alloc_of"], ctx["free_index"]
    act, tmp, grad = (categories().index(c) for c in ("activation", "temporary", "gradient"))
    forward_end = step["loss_end_index"]  # the forward pass ends after the loss is computed
    # Units whose forward never ran (a pooler the head does not use) are not
    # layers of the profile: the plan cannot decide on them, and their
    # parameters are in fixed_bytes like any other state.
    order = sorted(step["forward"], key=lambda i: step["forward"][i][0]["index"])
    if not order:
        raise MemfitError("memfit.profile: none of the model's units ran in the forward pass")
    owned = _state_bytes(prof)
    layers = []
    for i in order:
        name, module = prof.blocks[i]
        fa, fb = step["forward"][i]
        window_allocs = [j for j in range(fa["index"] + 1, fb["index"]) if events[j].kind == _lib.TRACE_ALLOC]
        activation = sum(alloc_of[j][1] for j in window_allocs if alloc_of[j][2] == act
                         and free_index.get(j, len(events)) > forward_end)
        temporaries = {j for j in window_allocs if free_index.get(j, len(events)) < forward_end}
        fwd_tmp_peak = _live_peak(events, fa["index"], fb["index"], temporaries, alloc_of)
        out_ptrs = dict(record.outputs.get(i, []))
        out_js = [j for j in window_allocs
                  if events[j].addr in out_ptrs and free_index.get(j, len(events)) > fb["index"]]
        out_alloc = sum(alloc_of[j][0] for j in out_js)
        held = out_alloc  # no backward: nothing after it frees it first
        if i in step["backward"]:
            ba, bb = step["backward"][i]
            # What of its output is not freed before its own backward: held by
            # itself (or by the parent), not by the layers after it (PLAN.md,
            # "The boundary term").
            held = sum(alloc_of[j][0] for j in out_js if free_index.get(j, len(events)) >= ba["index"])
            bwd_allocs = {j for j in range(ba["index"] + 1, bb["index"])
                          if events[j].kind == _lib.TRACE_ALLOC and alloc_of[j][2] != grad}
            bwd_tmp_peak = _live_peak(events, ba["index"], bb["index"], bwd_allocs, alloc_of)
            backward = _window(ctx["marks"], ba, bb)
        else:  # no gradient flowed through it: an empty window where its backward would be
            backward, bwd_tmp_peak = None, 0
        layers.append({
            "name": name,
            "type": type(module).__name__,
            "parameter_bytes": owned[name]["parameter"],
            "gradient_bytes": owned[name]["gradient"],
            "optimizer_state_bytes": owned[name]["optimizer_state"],
            "activation_bytes": activation,
            "output_bytes": sum(out_ptrs.values()),
            "output_allocated_bytes": out_alloc,
            "output_held_bytes": held,
            "forward_temporary_peak_bytes": fwd_tmp_peak,
            "backward_temporary_peak_bytes": bwd_tmp_peak,
            "forward_seconds": _median_window_seconds(analysis, "forward", i),
            "backward_seconds": _median_window_seconds(analysis, "backward", i) if backward else 0.0,
            "forward": _window(ctx["marks"], fa, fb),
            "backward": backward,
        })
    _fill_missing_backward(layers, step)
    return layers


def _median_over_steps(analysis: Dict[str, Any], key: str) -> float:
    """Times are medians over the measured steps (memory comes from the last one):
    one slow step on a busy machine must not skew the planner's time fit."""
    return statistics.median(step[key] for step in analysis["steps"])


def _median_window_seconds(analysis: Dict[str, Any], kind: str, layer: int) -> float:
    times = [(step[kind][layer][1]["t"] - step[kind][layer][0]["t"]) / 1e9
             for step in analysis["steps"] if layer in step[kind]]
    return statistics.median(times) if times else 0.0


def _fill_missing_backward(layers: List[Dict[str, Any]], step: Dict[str, Any]) -> None:
    """A layer no gradient reached gets an empty window at the point its backward
    would have run (after the next layer's), so the windows stay contiguous."""
    following = step["loss_backward"]["end"]
    for layer in reversed(layers):
        if layer["backward"] is None:
            layer["backward"] = {"start": following, "peak": following, "end": following}
        following = layer["backward"]["end"]


def _live_peak(events, first: int, last: int, wanted: set, alloc_of) -> int:
    value = peak = 0
    live = {}
    for j in range(first + 1, last):
        e = events[j]
        if e.kind == _lib.TRACE_ALLOC and j in wanted:
            live[e.addr] = alloc_of[j][1]
            value += alloc_of[j][1]
            peak = max(peak, value)
        elif e.kind == _lib.TRACE_FREE and e.addr in live:
            value -= live.pop(e.addr)
    return peak


def _state_bytes(prof: _Profiler) -> Dict[str, Dict[str, int]]:
    """Requested bytes of parameters, gradients and optimizer state per block
    (a block owns its submodules' parameters; shared ones count once)."""
    names = [n for n, _ in prof.blocks]
    out = {n: {"parameter": 0, "gradient": 0, "optimizer_state": 0} for n in names}

    def block_of(owner: str) -> Optional[str]:
        for n in names:
            if owner == n or owner.startswith(n + "."):
                return n
        return None

    seen = set()
    for p in prof.model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        block = block_of(prof.tracker.owner_of(p))
        if block is None:
            continue
        items = [("parameter", p)]
        if p.grad is not None:
            items.append(("gradient", p.grad))
        for value in prof.optimizer.state.get(p, {}).values():
            if isinstance(value, torch.Tensor):
                items.append(("optimizer_state", value))
        for kind, t in items:
            info = prof.alloc.block_info(storage_ptr(t))
            if info is not None:
                out[block][kind] += info["requested"]
    return out
