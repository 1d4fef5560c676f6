"""Plans for several ranks from one single-process profile, and their check with
real torch.distributed ranks (planner/DISTRIBUTED.md).

DDP (torch.nn.parallel.DistributedDataParallel): every rank holds the whole
model, its gradients and its optimizer state, as the profiled process did, plus
the reducer's gradient buckets. With gradient_as_bucket_view=False (DDP's
default) the buckets are flat tensors allocated when DDP is built and alive for
the rest of the run: their bytes are a constant on top of every point of the
step. memfit.plan is therefore run unchanged on the profile shifted by those
bytes (shift_profile): fixed_bytes and every window's start, peak and end, the
measured peaks of each setting, of its checkpointed and selective runs and of the checkpoint
checks. The C planner is untouched and its self-check still compares like with
like. With gradient_as_bucket_view=True the gradients are views into the
buckets: nothing is added.

Planning needs no torch (plan --profile stays torch-free); torch is imported
inside the functions that run ranks only.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from ._lib import MemfitError

STRATEGIES = ("ddp", "fsdp")
MIB = 1 << 20
DDP_BUCKET_CAP_BYTES = 25 * MIB  # DistributedDataParallel(bucket_cap_mb=25): torch/nn/parallel/distributed.py
DDP_FIRST_BUCKET_BYTES = 1 * MIB  # dist._DEFAULT_FIRST_BUCKET_BYTES (c10d reducer kDefaultFirstBucketBytes)


# A setting's optional runs (PROFILE.md): every layer checkpointed, every layer
# selectively checkpointed. Each is transformed like the setting itself.
RUNS = ("checkpointed", "selective")


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to if to > 0 else n


def ddp_buckets(setting: Dict[str, Any], bucket_cap_bytes: int = DDP_BUCKET_CAP_BYTES,
                first_bucket_bytes: int = DDP_FIRST_BUCKET_BYTES) -> List[Dict[str, Any]]:
    """The reducer's buckets after its rebuild at the second iteration, at the
    planner's layer granularity: gradients in the order backward produces them
    (the layers in reverse execution order), filled into buckets that close once
    they hold >= their limit (first_bucket_bytes for the first, then
    bucket_cap_bytes), as c10d's compute_bucket_assignment_by_size does.
    Gradients of parameters outside every layer (totals.gradient less the
    layers' gradient_bytes) come last. Each: {"layers", "bytes"} (requested)."""
    layers = [(layer["name"], int(layer.get("gradient_bytes", 0))) for layer in setting["layers"]]
    rest = int(setting.get("totals", {}).get("gradient", 0)) - sum(b for _, b in layers)
    order = list(reversed(layers)) + ([("(outside the layers)", rest)] if rest > 0 else [])
    buckets: List[Dict[str, Any]] = []
    current: Dict[str, Any] = {"layers": [], "bytes": 0}
    for name, nbytes in order:
        if nbytes <= 0:
            continue
        current["layers"].append(name)
        current["bytes"] += nbytes
        if current["bytes"] >= (first_bucket_bytes if not buckets else bucket_cap_bytes):
            buckets.append(current)
            current = {"layers": [], "bytes": 0}
    if current["bytes"]:
        buckets.append(current)
    return buckets


def ddp_bucket_bytes(profile: Dict[str, Any], gradient_as_bucket_view: bool = False,
                     bucket_cap_bytes: int = DDP_BUCKET_CAP_BYTES,
                     first_bucket_bytes: int = DDP_FIRST_BUCKET_BYTES) -> Dict[str, Any]:
    """What DDP adds on each rank, from the profile's gradient bytes: the
    buckets (ddp_buckets) in allocated bytes, each rounded up to the profile's
    rounding_bytes; 0 with gradient_as_bucket_view. The gradients are the same in
    every setting (they do not depend on batch or autocast), so the largest is taken."""
    rounding = int(profile.get("rounding_bytes", 512))
    best: Dict[str, Any] = {"buckets": [], "bucket_bytes": 0, "gradient_bytes": 0}
    for setting in profile["settings"]:
        buckets = ddp_buckets(setting, bucket_cap_bytes, first_bucket_bytes)
        allocated = sum(_round_up(b["bytes"], rounding) for b in buckets)
        if allocated >= best["bucket_bytes"]:
            best = {"buckets": buckets, "bucket_bytes": allocated,
                    "gradient_bytes": sum(b["bytes"] for b in buckets)}
    return {
        "gradient_as_bucket_view": bool(gradient_as_bucket_view),
        "bucket_cap_bytes": bucket_cap_bytes,
        "first_bucket_bytes": first_bucket_bytes,
        "gradient_bytes": best["gradient_bytes"],
        "buckets": [dict(b, allocated_bytes=_round_up(b["bytes"], rounding)) for b in best["buckets"]],
        # The per-rank bytes added to the one-process model (allocated bytes).
        "added_bytes": 0 if gradient_as_bucket_view else best["bucket_bytes"],
    }


def _shift_window(w: Any, by: int) -> Any:
    if isinstance(w, dict):
        return {k: (v + by if k in ("start", "peak", "end") and isinstance(v, int) else v) for k, v in w.items()}
    return w


def _shift_run(run: Dict[str, Any], by: int) -> Dict[str, Any]:
    out = dict(run)
    for key in ("fixed_bytes", "peak_allocated_bytes", "peak_reserved_bytes", "peak_requested_bytes"):
        if isinstance(out.get(key), int):
            out[key] += by
    for key in ("loss", "loss_backward", "optimizer"):
        if key in out:
            out[key] = _shift_window(out[key], by)
    if isinstance(out.get("layers"), list):
        out["layers"] = [dict(layer, forward=_shift_window(layer.get("forward"), by),
                              backward=_shift_window(layer.get("backward"), by))
                         if isinstance(layer, dict) else layer for layer in out["layers"]]
    return out


def shift_profile(profile: Dict[str, Any], by: int) -> Dict[str, Any]:
    """The profile with `by` allocated bytes alive for the whole step (a copy;
    timelines are dropped: the planner does not read them)."""
    data = dict(profile)
    settings = []
    for s in profile["settings"]:
        s = {k: v for k, v in s.items() if k != "timeline"}
        shifted = _shift_run(s, by)
        for key in RUNS:
            if isinstance(s.get(key), dict):
                shifted[key] = _shift_run(s[key], by)
        settings.append(shifted)
    data["settings"] = settings
    if isinstance(profile.get("checkpoint_checks"), list):
        data["checkpoint_checks"] = [
            dict(c, **{k: c[k] + by for k in ("peak_allocated_bytes", "peak_reserved_bytes") if isinstance(c.get(k), int)})
            for c in profile["checkpoint_checks"]]
    return data


# ------------------------------------------------------------------ FSDP2


def _shard(nbytes: int, world_size: int, rounding: int) -> int:
    """One rank's allocated bytes of `nbytes` sharded by fully_shard: the padded
    chunk (ceil(dim0 / N) rows), taken at the layer's byte granularity as
    ceil(nbytes / N), rounded to the allocator's block."""
    return _round_up(-(-nbytes // world_size), rounding) if nbytes > 0 else 0


FSDP_PARAM_DTYPES = {"fp32": 4, "bf16": 2}  # MixedPrecisionPolicy(param_dtype=...): bytes per element


def _dtype_factor(param_dtype: Optional[str]) -> float:
    if param_dtype in (None, "fp32"):
        return 1.0
    if param_dtype not in FSDP_PARAM_DTYPES:
        raise MemfitError(f"memfit plan: --fsdp-param-dtype {param_dtype!r}: expected one of "
                          f"{', '.join(FSDP_PARAM_DTYPES)}")
    return FSDP_PARAM_DTYPES[param_dtype] / 4


def fsdp_units(setting: Dict[str, Any], world_size: int, rounding: int,
               param_dtype: Optional[str] = None) -> List[Dict[str, Any]]:
    """The fully_shard units of one setting: each planner layer, then the root
    (the parameters outside every layer). Per unit, requested bytes of the
    profile (parameter, gradient, optimizer_state; fp32) and per-rank allocated bytes
    of its shards (fp32: the sharded parameters stay in their dtype) and of its
    unsharded (all-gathered, N x padded shard) params and gradients, in param_dtype
    (MixedPrecisionPolicy; reduce_dtype None: gradients are reduced in param_dtype,
    _fsdp_collectives.foreach_reduce). With a param_dtype other than fp32 also the
    all-gather input (the shard cast to param_dtype) and the reduce-scatter output in
    param_dtype (cast to the fp32 shard after the reduce)."""
    f = _dtype_factor(param_dtype)
    units = []
    totals = setting.get("totals", {})
    rest = {k: int(totals.get(t, 0)) - sum(int(layer.get(k, 0)) for layer in setting["layers"])
            for k, t in (("parameter_bytes", "parameter"), ("gradient_bytes", "gradient"),
                         ("optimizer_state_bytes", "optimizer_state"))}
    for layer in list(setting["layers"]) + [dict(rest, name="(root)")]:
        p, g, o = (max(0, int(layer.get(k, 0))) for k in ("parameter_bytes", "gradient_bytes", "optimizer_state_bytes"))
        sp, sg, so = (_shard(x, world_size, rounding) for x in (p, g, o))
        lp, lg = (_shard(int(x * f), world_size, rounding) for x in (p, g))  # shards in the low dtype
        unit = {"name": layer["name"], "parameter_bytes": p, "gradient_bytes": g, "optimizer_state_bytes": o,
                "sharded_parameter_bytes": sp, "sharded_gradient_bytes": sg, "sharded_optimizer_state_bytes": so,
                # all-gather output / unsharded params (N padded shards) and reduce-scatter input, in param_dtype
                "unsharded_parameter_bytes": _round_up(lp * world_size, rounding) if p else 0,
                "reduce_scatter_input_bytes": _round_up(lg * world_size, rounding) if g else 0}
        if f != 1.0:
            unit.update(unsharded_gradient_bytes=int(g * f), all_gather_input_bytes=lp if p else 0,
                        reduce_scatter_output_bytes=lg if g else 0)
        units.append(unit)
    return units


def _fsdp_run(run: Dict[str, Any], units: List[Dict[str, Any]], world_size: int,
              collective_temporaries: bool = True) -> Dict[str, Any]:
    """One run (a setting or its checkpointed run) as one FSDP2 rank sees it
    (planner/DISTRIBUTED.md, "FSDP2"). A unit without parameters has no FSDP
    parameter group: it all-gathers, prefetches and reduces nothing, so "the
    previous unit" below is the previous unit *with parameters* (p), "the next" the
    next one with parameters (q). AG(u): the all-gather output (N padded shards);
    RS(u): the reduce-scatter input. Terms, added to the profile's window values:
    - always: -freed (parameters and optimizer state less their shards), + AG(root)
      from the forward to the end of backward;
    - forward of unit l: the all-gather output of p(l) is held until l's copy-out;
      l's own is held (with its unsharded parameters) through l's compute and until the
      next copy-out (the last one: until the root's post-forward). Moments: l's
      all-gather (start + AG(p) + AG(l) + the collective's temporary), l's compute
      (peak + 2 AG(l)), end + AG(l) (through units without parameters after it);
    - backward of unit l (reverse order): gradients of the units after it are sharded;
      held: RS(q) (until l's post-backward) and AG(l) (prefetched by q). Moments: l's
      copy-out (start + 2 AG(l) + RS(q)), l's prefetch of p (start + AG(l) + RS(q) +
      AG(p) + the collective's temporary), compute (peak + AG(l) + AG(p) + RS(q)),
      post-backward (AG(l) and RS(q) freed): the copy-in (end + AG(p) + RS(l)), then the
      reduce-scatter with l's unsharded gradients freed and its output (the sharded
      gradients) allocated (end + AG(p) + RS(l) - G(l) + shard(G(l)) + the collective's
      temporary); end + AG(p) + RS(l) - G(l) + shard(G(l)); the last backward window (the
      first unit) ends with the last RS input and the root's all-gather freed;
    - optimizer: all gradients sharded; its temporaries (peak - start) scale by 1/N.
    collective_temporaries: gloo's (CPU) collectives allocate a flat temporary of the
    all-gather's output (freed before the call returns) and of the reduce-scatter's
    input (a clone made by the caller that outlives the call: the asynchronous work on
    gloo's worker thread holds it, so it may still be live in the backward of the units
    without parameters that follow: covered there; at the next unit's copy-out, seen once,
    and, with param_dtype, at the cast of the reduce output: covered by the headroom's reserve,
    gloo_late_free_reserve). ProcessGroupGloo, measured
    (DISTRIBUTED.md); NCCL's collectives allocate no such tensors."""
    layers = units[:-1]
    root = units[-1]
    freed = sum(u["parameter_bytes"] + u["optimizer_state_bytes"] - u["sharded_parameter_bytes"]
                - u["sharded_optimizer_state_bytes"] for u in units)
    grad_saved = [u["gradient_bytes"] - u["sharded_gradient_bytes"] for u in units]
    # mixed precision (param_dtype): the profile's fp32 gradients of a unit are param_dtype ones
    # (low_saved less) until its post-backward; the all-gather input is a cast copy of the shard;
    # the reduce-scatter output is in param_dtype, then cast to the fp32 shard
    low_saved = [u["gradient_bytes"] - u.get("unsharded_gradient_bytes", u["gradient_bytes"]) for u in units]
    ag_in = [u.get("all_gather_input_bytes", 0) for u in units]
    rs_out = [u.get("reduce_scatter_output_bytes", u["sharded_gradient_bytes"]) for u in units]
    mixed = any(u.get("unsharded_gradient_bytes") is not None for u in units)
    ag = [u["unsharded_parameter_bytes"] for u in layers]
    rs = [u["reduce_scatter_input_bytes"] for u in layers]
    root_ag = root["unsharded_parameter_bytes"]
    n = len(layers)
    with_params = [i for i in range(n) if ag[i] > 0]

    def prev_unit(i: int) -> Optional[int]:  # p(i): the last unit with parameters before i
        before = [k for k in with_params if k < i]
        return before[-1] if before else None

    def next_unit(i: int) -> Optional[int]:  # q(i): the first unit with parameters after i
        after = [k for k in with_params if k > i]
        return after[0] if after else None

    def at(values: List[int], k: Optional[int]) -> int:
        return values[k] if k is not None else 0

    def temp(nbytes: int) -> int:
        return nbytes if collective_temporaries else 0

    def win(w: Any, start: int, peak: int, end: int, moments: List[int] = ()) -> Any:
        """The window shifted by start/peak/end; moments: absolute values the peak must cover."""
        if not isinstance(w, dict):
            return w
        out = dict(w, start=w["start"] + start, peak=w["peak"] + peak, end=w["end"] + end)
        out["peak"] = max([out["peak"]] + list(moments))
        return out

    out = dict(run)
    out["fixed_bytes"] = run["fixed_bytes"] - freed
    base = -freed + root_ag
    new_layers = []
    for i, layer in enumerate(run.get("layers", [])):
        layer = dict(layer)
        f, b_w = layer.get("forward"), layer.get("backward")
        p, q = prev_unit(i), next_unit(i)
        held_p = at(ag, p)
        if ag[i] > 0:
            fs = base + held_p
            fend = base + (ag[i] if i < n - 1 else 0)
            moments = [f["start"] + fs + ag[i] + temp(ag[i]) + ag_in[i]] if isinstance(f, dict) else []
            layer["forward"] = win(f, fs, base + 2 * ag[i], fend, moments)
        else:  # no all-gather: the previous unit's output is still held (the root's post-forward frees it)
            held = held_p if i < n - 1 else 0
            layer["forward"] = win(f, base + held_p, base + held_p, base + held)
        after = sum(grad_saved[k] for k in range(i + 1, n))  # units whose backward is done
        b = base - after
        rs_q = at(rs, q)
        if ag[i] > 0:
            # start: l's unsharded params (prefetched by q; the last unit unshards in its own
            # pre-backward, inside the window) and q's reduce-scatter input
            bs = b + (ag[i] if q is not None else 0) + rs_q
            moments = []
            if isinstance(b_w, dict):
                s0, e0 = b_w["start"], b_w["end"]
                g, sg = units[i]["gradient_bytes"], units[i]["sharded_gradient_bytes"]
                moments = [s0 + b + 2 * ag[i] + rs_q,
                           s0 + b + ag[i] + rs_q + held_p + temp(held_p) + at(ag_in, p),
                           e0 + b + held_p + rs[i] - low_saved[i],
                           e0 + b + held_p + rs[i] - g + rs_out[i] + temp(rs[i])]
                if q is None:  # the last unit all-gathers in its own pre-backward
                    moments.append(s0 + b + ag[i] + temp(ag[i]) + ag_in[i])
                if mixed:  # the cast of the reduce output to the fp32 shard (gloo's clone, if still live, is the reserve's)
                    moments.append(e0 + b + held_p + rs[i] - g + rs_out[i] + sg)
            bend = b - grad_saved[i] + held_p + rs[i]
            layer["backward"] = win(b_w, bs, b + ag[i] + held_p + rs_q - low_saved[i], bend, moments)
        else:
            # held: q's reduce-scatter input and the all-gather output q prefetched (of p)
            # (before the first unit with parameters: its RS input, kept until the end of backward)
            # gloo: q's reduce-scatter clone outlives the call (held by the asynchronous work
            # on gloo's worker thread), so it can still be live here (measured)
            held = rs_q + held_p
            layer["backward"] = win(b_w, b + held, b + held + temp(rs_q), b + held)
        if i == 0 and isinstance(layer.get("backward"), dict):
            # the last backward window: the end of backward frees the last reduce-scatter input
            # and the root's unsharded parameters (_fsdp_state.py, the root's final callback)
            layer["backward"]["end"] = b_w["end"] + b - grad_saved[i] - root_ag
        new_layers.append(layer)
    if new_layers:
        out["layers"] = new_layers
    first_start = -freed  # the first forward window starts at fixed_bytes; the root's unshard is in it
    if new_layers and isinstance(new_layers[0].get("forward"), dict):
        new_layers[0]["forward"]["start"] = run["layers"][0]["forward"]["start"] + first_start
    for key in ("loss", "loss_backward"):
        if isinstance(run.get(key), dict):
            out[key] = win(run[key], -freed + root_ag, -freed + root_ag, -freed + root_ag)
    if isinstance(run.get("optimizer"), dict):
        w = run["optimizer"]
        s = -freed - sum(grad_saved)
        tmp = w["peak"] - w["start"]
        out["optimizer"] = dict(w, start=w["start"] + s, end=w["end"] + s,
                                peak=w["start"] + s + -(-tmp // world_size))
    for w in [out.get(k) for k in ("loss", "loss_backward", "optimizer")] + \
            [x.get(k) for x in new_layers for k in ("forward", "backward")]:
        if isinstance(w, dict):
            w["peak"] = max(w["peak"], w["start"], w["end"])
    peaks = [out["fixed_bytes"]] + [w["peak"] for w in
             [out.get(k) for k in ("loss", "loss_backward", "optimizer")] +
             [x.get(k) for x in new_layers for k in ("forward", "backward")] if isinstance(w, dict)]
    new_peak = max(peaks)
    delta = new_peak - run.get("peak_allocated_bytes", new_peak)
    for key in ("peak_allocated_bytes", "peak_reserved_bytes", "peak_requested_bytes"):
        if isinstance(out.get(key), int):
            out[key] = out[key] + delta
    return out


def fsdp_backend(profile: Dict[str, Any]) -> str:
    """The process group's backend the ranks use for a profile's device: gloo on
    CPU (what verify --nproc runs), NCCL on CUDA."""
    return "gloo" if str(profile.get("device", "cpu")).startswith("cpu") else "nccl"


_RUN_VALUES = ("fixed_bytes", "peak_allocated_bytes", "peak_reserved_bytes", "peak_requested_bytes")
_LAYER_VALUES = ("output_allocated_bytes", "output_held_bytes")


def _run_paths(run: Dict[str, Any]) -> List[tuple]:
    """The integer values of a run (a setting or its checkpointed run) that follow the batch."""
    paths = [(k,) for k in _RUN_VALUES if isinstance(run.get(k), int)]
    for key in ("loss", "loss_backward", "optimizer"):
        if isinstance(run.get(key), dict):
            paths += [(key, v) for v in ("start", "peak", "end") if isinstance(run[key].get(v), int)]
    for i, layer in enumerate(run.get("layers") or []):
        for key in ("forward", "backward"):
            if isinstance(layer.get(key), dict):
                paths += [("layers", i, key, v) for v in ("start", "peak", "end") if isinstance(layer[key].get(v), int)]
        paths += [("layers", i, k) for k in _LAYER_VALUES if isinstance(layer.get(k), int)]
    return paths


def _get(run: Dict[str, Any], path: tuple) -> Any:
    for k in path:
        run = run[k]
    return run


def scale_batch_part(settings: List[Dict[str, Any]], factor: float) -> Optional[List[Dict[str, Any]]]:
    """The settings (one precision, two or more batch sizes) with the part of every value
    that grows with the batch scaled by `factor`: per value, the line through its
    (batch, value) points (least squares), value -> intercept + factor x (value -
    intercept). With MixedPrecisionPolicy(param_dtype=bf16) FSDP2 casts the inputs and
    computes in bf16, so activations, their gradients and the step's batch-sized
    temporaries are bf16 (factor 1/2); what does not follow the batch is unchanged.
    None where the batch sizes do not allow a line (fewer than two)."""
    batches = [int(s["batch_size"]) for s in settings]
    if len(set(batches)) < 2:
        return None
    mean_b = sum(batches) / len(batches)
    var = sum((b - mean_b) ** 2 for b in batches)
    out = [json.loads(json.dumps(s)) for s in settings]  # deep copies

    def scale(runs_in: List[Dict[str, Any]], runs_out: List[Dict[str, Any]]) -> None:
        common = set(_run_paths(runs_in[0]))
        for r in runs_in[1:]:
            common &= set(_run_paths(r))
        for path in common:
            values = [_get(r, path) for r in runs_in]
            mean_v = sum(values) / len(values)
            slope = sum((b - mean_b) * (v - mean_v) for b, v in zip(batches, values)) / var
            intercept = mean_v - slope * mean_b
            for r, v in zip(runs_out, values):
                parent = _get(r, path[:-1]) if len(path) > 1 else r
                parent[path[-1]] = int(round(intercept + factor * (v - intercept)))

    scale([{k: v for k, v in s.items() if k not in RUNS} for s in settings], out)
    for key in RUNS:
        if all(isinstance(s.get(key), dict) for s in settings):
            scale([s[key] for s in settings], [s[key] for s in out])
    for s in out:  # a window's peak is never below its start or end
        for run in [s] + [s[key] for key in RUNS if isinstance(s.get(key), dict)]:
            for w in [run.get(k) for k in ("loss", "loss_backward", "optimizer")] + \
                    [layer.get(k) for layer in run.get("layers") or [] for k in ("forward", "backward")]:
                if isinstance(w, dict) and all(isinstance(w.get(k), int) for k in ("start", "peak", "end")):
                    w["peak"] = max(w["peak"], w["start"], w["end"])
    return out


def fsdp_profile(profile: Dict[str, Any], world_size: int, param_dtype: Optional[str] = None) -> Dict[str, Any]:
    """The one-process profile as one rank of `world_size` FSDP2 ranks sees it
    (every planner layer and the root fully_shard-ed, FSDP2's defaults; param_dtype:
    MixedPrecisionPolicy's, modelled from the fp32 settings, their batch-sized part
    scaled to param_dtype: scale_batch_part)."""
    rounding = int(profile.get("rounding_bytes", 512))
    temporaries = fsdp_backend(profile) == "gloo"
    data = dict(profile)
    settings, deltas = [], {}
    source = profile["settings"]
    if param_dtype not in (None, "fp32"):
        fp32 = [{k: v for k, v in s.items() if k != "timeline"} for s in source if s.get("precision") == "fp32"]
        scaled = scale_batch_part(fp32, _dtype_factor(param_dtype))
        if scaled is None:
            raise MemfitError(f"memfit plan: --fsdp-param-dtype {param_dtype} needs fp32 settings of two or more "
                              "batch sizes in the profile (it scales the part that grows with the batch)")
        source = scaled
    for s in source:
        units = fsdp_units(s, world_size, rounding, param_dtype)
        s = {k: v for k, v in s.items() if k != "timeline"}
        t = _fsdp_run(s, units, world_size, temporaries)
        for key in RUNS:
            if isinstance(s.get(key), dict):
                t[key] = _fsdp_run(s[key], units, world_size, temporaries)
        deltas[(s["batch_size"], s["precision"])] = t["peak_allocated_bytes"] - s["peak_allocated_bytes"]
        settings.append(t)
    data["settings"] = settings
    if isinstance(profile.get("checkpoint_checks"), list):
        data["checkpoint_checks"] = [
            dict(c, **{k: c[k] + deltas.get((c["batch_size"], c["precision"]), 0)
                       for k in ("peak_allocated_bytes", "peak_reserved_bytes") if isinstance(c.get(k), int)})
            for c in profile["checkpoint_checks"] if (c["batch_size"], c["precision"]) in deltas]
    return data


def fsdp_summary(profile: Dict[str, Any], world_size: int, param_dtype: Optional[str] = None) -> Dict[str, Any]:
    rounding = int(profile.get("rounding_bytes", 512))
    units = fsdp_units(profile["settings"][0], world_size, rounding, param_dtype)
    backend = fsdp_backend(profile)
    mp = None if param_dtype in (None, "fp32") else {"param_dtype": param_dtype, "reduce_dtype": None,
                                                     "reduce_in": param_dtype}
    return {"units": units, "reshard_after_forward": True, "mixed_precision": mp, "backend": backend,
            # gloo's all-gather and reduce-scatter temporaries are in the terms (_fsdp_run)
            "collective_temporaries": backend == "gloo",
            "sharded_parameter_bytes": sum(u["sharded_parameter_bytes"] for u in units),
            "sharded_gradient_bytes": sum(u["sharded_gradient_bytes"] for u in units),
            "sharded_optimizer_state_bytes": sum(u["sharded_optimizer_state_bytes"] for u in units),
            "freed_bytes": sum(u["parameter_bytes"] + u["optimizer_state_bytes"] + u["gradient_bytes"]
                               - u["sharded_parameter_bytes"] - u["sharded_optimizer_state_bytes"]
                               - u["sharded_gradient_bytes"] for u in units)}


def per_rank_memory(profile: Dict[str, Any], strategy: str, world_size: int,
                    setting: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What one rank holds of the model's state (requested bytes) against one process:
    parameters, gradients, optimizer state (FSDP2: their shards; DDP: all of them) and
    buffers and other untagged bytes (the profile's "other": never sharded), plus what
    the strategy adds for communication. setting: the profile's setting (default: the
    first; these bytes do not depend on the batch)."""
    if strategy not in STRATEGIES:
        raise MemfitError(f"memfit: strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise MemfitError(f"memfit: the world size must be a positive integer, not {world_size!r}")
    s = setting if setting is not None else profile["settings"][0]
    totals = s.get("totals", {})
    full = {"parameter_bytes": int(totals.get("parameter", 0)), "gradient_bytes": int(totals.get("gradient", 0)),
            "optimizer_state_bytes": int(totals.get("optimizer_state", 0)),
            "buffer_bytes": int(totals.get("other", 0))}
    out: Dict[str, Any] = {"strategy": strategy, "world_size": world_size, "one_process": full,
                           "sharded": strategy == "fsdp"}
    if strategy == "fsdp":
        rounding = int(profile.get("rounding_bytes", 512))
        units = fsdp_units(s, world_size, rounding)
        out["per_rank"] = {"parameter_bytes": sum(u["sharded_parameter_bytes"] for u in units),
                           "gradient_bytes": sum(u["sharded_gradient_bytes"] for u in units),
                           "optimizer_state_bytes": sum(u["sharded_optimizer_state_bytes"] for u in units),
                           "buffer_bytes": full["buffer_bytes"]}
        big_ag = max(units, key=lambda u: u["unsharded_parameter_bytes"])
        big_rs = max(units, key=lambda u: u["reduce_scatter_input_bytes"])
        out["communication"] = {
            "largest_all_gather_bytes": big_ag["unsharded_parameter_bytes"], "largest_all_gather_unit": big_ag["name"],
            "largest_reduce_scatter_bytes": big_rs["reduce_scatter_input_bytes"],
            "largest_reduce_scatter_unit": big_rs["name"], "backend": fsdp_backend(profile)}
    else:
        out["per_rank"] = dict(full)
        ddp = ddp_bucket_bytes(profile)
        out["communication"] = {"ddp_bucket_bytes": ddp["added_bytes"], "ddp_buckets": len(ddp["buckets"])}
    return out


def gloo_late_free_reserve(profile: Dict[str, Any], world_size: int, param_dtype: Optional[str] = None) -> int:
    """The bytes fsdp plans keep free on top of the automatic headroom with gloo: the
    largest reduce-scatter input (the size of gloo's clone of it), which the worker
    thread can release after the next unit's copy-out; 0 with NCCL (no clone)."""
    if fsdp_backend(profile) != "gloo":
        return 0
    units = fsdp_units(profile["settings"][0], world_size, int(profile.get("rounding_bytes", 512)), param_dtype)
    return max((u["reduce_scatter_input_bytes"] for u in units), default=0)


def plan_distributed(profile: Any, budget: Union[str, int], strategy: str = "ddp", world_size: int = 2,
                     objective: str = "max-batch", global_batch: Optional[int] = None,
                     gradient_as_bucket_view: bool = False, bucket_cap_bytes: int = DDP_BUCKET_CAP_BYTES,
                     first_bucket_bytes: int = DDP_FIRST_BUCKET_BYTES, fsdp_param_dtype: Optional[str] = None,
                     **options: Any):
    """memfit.plan for one rank of `world_size` (budget: each rank's device).
    objective global-batch with global_batch=N: N samples per optimizer step
    across all ranks (N must be a multiple of world_size). The plan's batch_size
    is the per-rank batch; it adds strategy, world_size, per_rank_batch,
    global_batch (per-rank batch x ranks x accumulation steps), the learning-rate
    suggestion for that global batch and what the strategy adds ("ddp")."""
    from .documents import Profile, plan

    if strategy not in STRATEGIES:
        raise MemfitError(f"memfit plan: --strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise MemfitError(f"memfit plan: --world-size must be a positive integer, not {world_size!r}")
    if isinstance(profile, (str, Path)):
        profile = Profile.load(profile)
    data = profile.data if isinstance(profile, Profile) else profile
    per_rank_global = None
    if objective == "global-batch":
        if global_batch is None or global_batch % world_size:
            raise MemfitError(f"memfit plan: global-batch={global_batch} is not a multiple of --world-size "
                              f"{world_size}: each rank runs the same batch")
        per_rank_global = global_batch // world_size
    if fsdp_param_dtype not in (None, "fp32"):
        if strategy != "fsdp":
            raise MemfitError(f"memfit plan: --fsdp-param-dtype {fsdp_param_dtype} needs --strategy fsdp "
                              f"(not {strategy})")
        _dtype_factor(fsdp_param_dtype)
        fp32 = [s for s in data["settings"] if s.get("precision") == "fp32"]
        if not fp32:
            raise MemfitError(f"memfit plan: --fsdp-param-dtype {fsdp_param_dtype} is modelled from the profile's "
                              "fp32 settings, and it has none: profile with --precisions fp32")
        asked = options.get("precisions")
        if asked is not None and list(asked) != ["fp32"]:
            raise MemfitError(f"memfit plan: --fsdp-param-dtype {fsdp_param_dtype} plans the fp32 settings only "
                              f"(FSDP2 casts the parameters itself), not --precisions {','.join(asked)}")
        options = dict(options, precisions=["fp32"])
    if strategy == "fsdp":
        sharded = fsdp_profile(data, world_size, fsdp_param_dtype)
        result = plan(sharded, budget=budget, objective=objective, global_batch=per_rank_global, **options)
        reserve = gloo_late_free_reserve(data, world_size, fsdp_param_dtype)
        if reserve and options.get("headroom") in (None, "auto"):
            # gloo's reduce-scatter clone can be freed later than the terms hold it (measured once in
            # the next unit's copy-out): the automatic headroom keeps room for the largest one, so
            # the plan fits then too (the prediction stays the terms' peak). DISTRIBUTED.md, FSDP2.
            from ._lib import parse_size

            budget_bytes = parse_size(budget, "budget") if isinstance(budget, str) else int(budget)
            headroom = min(0.99, float(result.data["headroom"]) + reserve / budget_bytes)
            result = plan(sharded, budget=budget, objective=objective, global_batch=per_rank_global,
                          **dict(options, headroom=headroom))
            result.data["headroom_rule"] = (f"auto + {reserve} B for gloo's late-freed reduce-scatter clone "
                                            f"({100 * reserve / budget_bytes:.2f}%)")
            result.data["gloo_late_free_reserve_bytes"] = reserve
    else:
        ddp = ddp_bucket_bytes(data, gradient_as_bucket_view, bucket_cap_bytes, first_bucket_bytes)
        result = plan(shift_profile(data, ddp["added_bytes"]), budget=budget, objective=objective,
                      global_batch=per_rank_global, **options)
    d = result.data
    accumulation = int(d.get("grad_accumulation_steps", 1))
    d["strategy"] = strategy
    d["world_size"] = world_size
    d["per_rank_batch"] = d["batch_size"]
    d["global_batch"] = d["batch_size"] * world_size * accumulation
    if strategy == "fsdp":
        d["fsdp"] = fsdp_summary(data, world_size, fsdp_param_dtype)
    else:
        d["ddp"] = ddp
    d["per_rank_memory"] = per_rank_memory(data, strategy, world_size)
    if strategy == "fsdp" and d["fsdp"]["mixed_precision"]:
        d["per_rank_memory"]["mixed_precision"] = d["fsdp"]["mixed_precision"]
        big = max(d["fsdp"]["units"], key=lambda u: u["unsharded_parameter_bytes"])
        d["per_rank_memory"]["communication"].update(
            largest_all_gather_bytes=big["unsharded_parameter_bytes"], largest_all_gather_unit=big["name"],
            largest_reduce_scatter_bytes=max(u["reduce_scatter_input_bytes"] for u in d["fsdp"]["units"]),
            largest_reduce_scatter_unit=max(d["fsdp"]["units"], key=lambda u: u["reduce_scatter_input_bytes"])["name"])
    if strategy == "ddp":
        d["per_rank_memory"]["communication"] = {"ddp_bucket_bytes": ddp["added_bytes"],
                                                 "ddp_buckets": len(ddp["buckets"])}
    lr = d.get("lr_scale")
    if isinstance(lr, dict) and isinstance(lr.get("value"), (int, float)):
        # The linear rule relative to the largest profiled batch, now for the samples of all ranks.
        largest = max(s["batch_size"] for s in data["settings"])
        d["lr_scale"] = dict(lr, value=d["global_batch"] / largest, global_batch=d["global_batch"])
    return result


# ------------------------------------------------------------------ verify


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, job: str, plan_path: str, budget: int, steps: int,
               warmup_steps: int, out_dir: str, strategy: str, gradient_as_bucket_view: bool) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from .planning import verify

    def fsdp_wrap(model):
        from torch.distributed.fsdp import fully_shard

        plan_data = json.loads(Path(plan_path).read_text())
        names = [layer["name"] for layer in plan_data["layers"]]
        kwargs = {}
        mp = (plan_data.get("fsdp") or {}).get("mixed_precision")
        if mp:
            import torch
            from torch.distributed.fsdp import MixedPrecisionPolicy

            dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtypes[mp["param_dtype"]])
        modules = dict(model.named_modules())
        for name in names:
            fully_shard(modules[name], **kwargs)
        fully_shard(model, **kwargs)
        return model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = verify(job, plan_path, budget, device="cpu", steps=steps, warmup_steps=warmup_steps,
                        wrap=fsdp_wrap if strategy == "fsdp" else
                        (lambda m: DDP(m, gradient_as_bucket_view=gradient_as_bucket_view)))
        result["rank"] = rank
    except Exception as e:  # reported by the parent, rank by rank
        import traceback

        where = traceback.extract_tb(e.__traceback__)[-1]
        result = {"rank": rank, "oom": False, "error": f"{type(e).__name__}: {e}", "measured_peak_bytes": None,
                  "where": f"{where.filename}:{where.lineno}"}
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def verify_distributed(job: str, the_plan: Any, budget: Optional[int] = None, nproc: Optional[int] = None,
                       steps: int = 2, warmup_steps: int = 2,
                       progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Start `nproc` ranks (default: the plan's world_size; gloo on CPU), each
    with memfit as its CPU allocator and the budget as capacity, the model in
    DDP after memfit.apply, training warmup_steps + steps steps at the per-rank
    batch. The default 2 warm-up steps include the reducer's bucket rebuild at
    the second iteration. Returns the predicted peak and, per rank,
    {"rank", "measured_peak_bytes", "oom", "error", "error_percent"}."""
    import torch.multiprocessing as mp

    from .documents import Plan, predicted_allocated

    if not isinstance(job, str):
        raise MemfitError("memfit verify --nproc: the job must be FILE.py:FUNC or package.module:FUNC "
                          "(each rank loads it)")
    plan_path = str(the_plan)
    plan_obj = Plan.load(plan_path)
    d = plan_obj.data
    strategy = d.get("strategy", "ddp")
    if strategy not in STRATEGIES:
        raise MemfitError(f"memfit verify: the plan's strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    nproc = nproc or int(d.get("world_size", 1))
    if budget is None:
        budget = int(d["budget_bytes"])
    predicted = predicted_allocated(d)
    gabv = bool(d.get("ddp", {}).get("gradient_as_bucket_view", False))
    if progress:
        progress(f"verify: {nproc} ranks ({strategy}, gloo), batch {plan_obj.batch_size} per rank, "
                 f"{warmup_steps} warm-up + {steps} measured steps")
    with tempfile.TemporaryDirectory(prefix="memfit-ranks-") as out_dir:
        mp.start_processes(_rank_main, args=(nproc, _free_port(), job, plan_path, int(budget), steps, warmup_steps,
                                             out_dir, strategy, gabv),
                           nprocs=nproc, join=True, start_method="spawn")
        ranks = []
        for r in range(nproc):
            path = Path(out_dir, f"rank{r}.json")
            ranks.append(json.loads(path.read_text()) if path.exists()
                         else {"rank": r, "oom": False, "error": "no result", "measured_peak_bytes": None})
    per_rank = []
    for r in ranks:
        m = r.get("measured_peak_bytes")
        fits = m is not None and not r.get("oom") and not r.get("error")
        per_rank.append({"rank": r["rank"], "measured_peak_bytes": m, "oom": bool(r.get("oom")),
                         "error": r.get("error"), **({"where": r["where"]} if r.get("where") else {}),
                         "error_percent": 100.0 * (m - predicted) / predicted if fits and predicted else None,
                         "measured_peak_reserved_bytes": r.get("measured_peak_reserved_bytes"),
                         "step_seconds": r.get("step_seconds")})
    return {"strategy": strategy, "world_size": nproc, "per_rank_batch": plan_obj.batch_size,
            "global_batch": d.get("global_batch"), "budget_bytes": int(budget), "predicted_peak_bytes": predicted,
            "ddp_bucket_bytes": d.get("ddp", {}).get("added_bytes"),
            "fsdp_freed_bytes": d.get("fsdp", {}).get("freed_bytes"),
            "fsdp_mixed_precision": d.get("fsdp", {}).get("mixed_precision"), "steps": steps, "warmup_steps": warmup_steps,
            "oom": any(r["oom"] for r in per_rank), "ranks": per_rank}
