"""What `memfit plan` adds about spending the compute (planner/COMPUTE.md), in
Python around the C planner's plan JSON: the critical batch from a measured
gradient noise scale (`plan --noise-scale`, under the plan's "noise_scale" key),
the cost of a run (`plan --train-samples/--price/--gpus`, under "cost") and
whether the data loader keeps up with the planned step (a profile with "loader",
under "loader"). No torch here."""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional

from ._lib import MemfitError

FAR_ABOVE = 2.0  # a planned batch more than this many times the critical batch is flagged


def load_noise_scale(text: str) -> Dict[str, Any]:
    """`--noise-scale B`: a positive number, or the JSON file `noise-scale --json` wrote."""
    try:
        value: Any = float(text)
        stderr = None
        source = "given"
    except ValueError:
        try:
            with open(text) as f:
                data = json.load(f)
        except OSError as e:
            raise MemfitError(f"memfit plan: --noise-scale {text!r}: neither a number nor a readable file "
                              f"({e.strerror})") from None
        except ValueError as e:
            raise MemfitError(f"memfit plan: --noise-scale {text!r}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or "b_simple" not in data:
            raise MemfitError(f"memfit plan: --noise-scale {text!r}: no b_simple (write it with "
                              "python3 -m memfit noise-scale --json)")
        value, stderr, source = data["b_simple"], data.get("b_simple_stderr"), text
        if value is None:
            raise MemfitError(f"memfit plan: --noise-scale {text!r}: b_simple was not measured "
                              f"({data.get('note') or 'no value'})")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise MemfitError(f"memfit plan: --noise-scale {text!r}: B_simple must be a positive finite number")
    return {"b_simple": float(value), "b_simple_stderr": stderr, "from": source}


def add_noise_scale(plan: Dict[str, Any], noise: Dict[str, Any]) -> Dict[str, Any]:
    """plan["noise_scale"]: the critical batch (~ B_simple, McCandlish et al. 2018)
    beside the plan's batch per optimizer step (global_batch), whether that is far
    (> 2x) above it, and the planner's linear learning-rate scale capped at the
    critical batch."""
    critical = noise["b_simple"]
    batch = int(plan.get("global_batch") or plan["batch_size"])
    ratio = batch / critical
    out: Dict[str, Any] = {
        "b_simple": critical,
        "b_simple_stderr": noise.get("b_simple_stderr"),
        "from": noise.get("from"),
        "critical_batch": critical,
        "planned_batch": batch,
        "planned_over_critical": ratio,
        "far_above_critical": ratio > FAR_ABOVE,
        "suggested_global_batch": None,
        "lr_scale_capped": None,
    }
    if ratio > FAR_ABOVE:
        out["suggested_global_batch"] = max(1, int(round(critical)))
    lr = plan.get("lr_scale")
    if isinstance(lr, dict) and isinstance(lr.get("value"), (int, float)) and lr["value"] > 0:
        profiled = batch / lr["value"]  # the planner's value: global_batch / largest profiled batch
        cap = critical / profiled
        out["lr_scale_capped"] = {"value": min(lr["value"], cap), "cap": cap,
                                  "rule": "linear, capped at the critical batch", "suggestion": True}
    plan["noise_scale"] = out
    return out


def add_plan_at_critical(plan: Dict[str, Any], at_critical: Dict[str, Any]) -> Dict[str, Any]:
    """plan["noise_scale"]["plan_at_critical_batch"]: the plan for the same budget
    with the critical batch per optimizer step (objective global-batch), beside
    the largest batch: what it recomputes and how many steps per second it runs."""
    step = at_critical.get("predicted_step_seconds")
    accumulation = int(at_critical.get("grad_accumulation_steps") or 1)
    out = {
        "batch_size": at_critical["batch_size"],
        "grad_accumulation_steps": accumulation,
        "global_batch": at_critical.get("global_batch"),
        "recompute_overhead_percent": at_critical.get("recompute_overhead_percent"),
        "throughput_samples_per_second": at_critical.get("throughput_samples_per_second"),
        "optimizer_steps_per_second": 1 / (step * accumulation) if isinstance(step, (int, float)) and step > 0 else None,
        "checkpointed_layers": sum(1 for layer in at_critical.get("layers", []) if layer.get("checkpoint")),
    }
    largest_step = plan.get("predicted_step_seconds")
    out["largest_optimizer_steps_per_second"] = (
        1 / (largest_step * int(plan.get("grad_accumulation_steps") or 1))
        if isinstance(largest_step, (int, float)) and largest_step > 0 else None)
    plan["noise_scale"]["plan_at_critical_batch"] = out
    return out


def add_cost(plan: Dict[str, Any], train_samples: int, price: Optional[float] = None, gpus: int = 1,
             tokens_per_sample: Optional[int] = None) -> Dict[str, Any]:
    """plan["cost"] of training on `train_samples` samples at the plan's predicted
    throughput on each of `gpus` devices (ideal data-parallel scaling: the devices'
    throughputs add, no communication counted): seconds = samples / (gpus *
    throughput), usd = seconds / 3600 * price * gpus."""
    if isinstance(train_samples, bool) or not isinstance(train_samples, int) or train_samples < 1:
        raise MemfitError(f"memfit plan: --train-samples must be a positive integer, not {train_samples!r}")
    if price is not None and (not math.isfinite(price) or price < 0):
        raise MemfitError(f"memfit plan: --price must be a finite number >= 0 (USD per GPU-hour), not {price!r}")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise MemfitError(f"memfit plan: --gpus must be a positive integer, not {gpus!r}")
    per_device = plan.get("throughput_samples_per_second")
    out: Dict[str, Any] = {"samples": train_samples, "gpus": gpus, "price_usd_per_gpu_hour": price,
                           "samples_per_second_per_gpu": per_device, "samples_per_second": None,
                           "seconds": None, "hours": None, "gpu_hours": None, "usd": None,
                           "rule": "seconds = samples / (gpus * throughput); usd = gpu_hours * price"}
    if tokens_per_sample is not None:
        if isinstance(tokens_per_sample, bool) or not isinstance(tokens_per_sample, int) or tokens_per_sample < 1:
            raise MemfitError(f"memfit plan: --tokens-per-sample must be a positive integer, not {tokens_per_sample!r}")
        out["tokens_per_sample"] = tokens_per_sample
        out["tokens"] = train_samples * tokens_per_sample
    if isinstance(per_device, (int, float)) and per_device > 0:
        out["samples_per_second"] = per_device * gpus
        out["seconds"] = train_samples / out["samples_per_second"]
        out["hours"] = out["seconds"] / 3600.0
        out["gpu_hours"] = out["hours"] * gpus
        if price is not None:
            out["usd"] = out["gpu_hours"] * price
        if tokens_per_sample is not None:
            out["tokens_per_second"] = out["samples_per_second"] * tokens_per_sample
    else:
        out["note"] = "throughput not predicted (the profile's step times give a step of 0 s): no time or cost"
    plan["cost"] = out
    return out


def add_loader_check(plan: Any, profile: Any) -> Optional[Dict[str, Any]]:
    """plan["loader"]: whether the planned step would wait for data. `plan` and
    `profile` are memfit.Plan / memfit.Profile or their dicts; nothing is added
    (None returned) when the profile has no "loader" (Job(loader=...) measured by
    memfit.profile). With the loader's samples/s L (measured at the profile's
    largest batch) and the plan's predicted throughput S (batch_size /
    predicted_step_seconds), the step waits when L < S; then, loading overlapped
    with the step (DataLoader workers), wait_fraction = 1 - L / S of the wall
    time is spent waiting and each step waits batch_size / L - step seconds."""
    plan_data = getattr(plan, "data", plan)
    prof_data = getattr(profile, "data", profile)
    if not isinstance(plan_data, dict) or not isinstance(prof_data, dict):
        raise MemfitError("memfit.add_loader_check: give a plan and a profile (memfit.Plan / memfit.Profile or dicts)")
    measured = prof_data.get("loader")
    if measured is None:
        return None
    rate = measured.get("samples_per_second") if isinstance(measured, dict) else None
    if not isinstance(measured, dict) or not (rate is None or (isinstance(rate, (int, float))
                                                              and not isinstance(rate, bool)
                                                              and math.isfinite(rate) and rate > 0)):
        raise MemfitError("memfit: the profile's loader must be an object whose samples_per_second is a positive "
                          f"number or null, not {measured!r}")
    batch = int(plan_data["batch_size"])
    step_rate = plan_data.get("throughput_samples_per_second")
    step_seconds = plan_data.get("predicted_step_seconds")
    out: Dict[str, Any] = {"samples_per_second": rate, "measured_batch_size": measured.get("batch_size"),
                           "num_workers": measured.get("num_workers"), "pin_memory": measured.get("pin_memory"),
                           "planned_batch": batch, "step_samples_per_second": step_rate, "waits": None,
                           "wait_fraction": None, "wait_seconds_per_step": None,
                           "effective_samples_per_second": None,
                           "rule": "waits when the loader's samples/s < the step's; wait_fraction = 1 - loader / step "
                                   "(loading overlapped with the step)"}
    if rate is None:
        out["note"] = "the loader's rate was not measured (no time passed over its timed batches): not compared"
    elif not isinstance(step_rate, (int, float)) or isinstance(step_rate, bool) or not step_rate > 0:
        out["note"] = "throughput not predicted (the profile's step times give a step of 0 s): not compared"
    else:
        waits = rate < step_rate
        out["waits"] = waits
        out["wait_fraction"] = 1.0 - rate / step_rate if waits else 0.0
        out["effective_samples_per_second"] = min(rate, step_rate)
        seconds = step_seconds if isinstance(step_seconds, (int, float)) else batch / step_rate
        out["wait_seconds_per_step"] = batch / rate - seconds if waits else 0.0
    plan_data["loader"] = out
    return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.3g} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} days"


def table_lines(plan: Dict[str, Any]) -> List[str]:
    """The lines the plan table prints for its noise_scale and cost keys."""
    lines: List[str] = []
    ns = plan.get("noise_scale")
    if isinstance(ns, dict):
        se = ns.get("b_simple_stderr")
        lines.append(f"  critical batch ~ {ns['critical_batch']:.4g}"
                     + (f" (+- {se:.2g})" if isinstance(se, (int, float)) else "")
                     + f" (B_simple, from {ns['from']}); the plan's batch per step {ns['planned_batch']} is "
                     f"{ns['planned_over_critical']:.2g}x it")
        if ns["far_above_critical"]:
            lines.append(f"  the planned batch is far above the critical batch: past it, more samples per step buy "
                         f"little progress per step; plan at the critical batch with --objective "
                         f"global-batch={ns['suggested_global_batch']}")
            alt = ns.get("plan_at_critical_batch")
            if isinstance(alt, dict) and "note" in alt:
                lines.append(f"  (no plan at the critical batch: {alt['note']})")
            elif isinstance(alt, dict):
                rate = alt["optimizer_steps_per_second"]
                largest = alt["largest_optimizer_steps_per_second"]
                lines.append(f"  at the critical batch: batch {alt['batch_size']}"
                             + (f" x {alt['grad_accumulation_steps']}" if alt["grad_accumulation_steps"] > 1 else "")
                             + f", {alt['checkpointed_layers']} layers checkpointed, recompute "
                             f"{alt['recompute_overhead_percent']:.1f}%"
                             + (f", {rate:.3g} optimizer steps/s against {largest:.3g} at the largest batch"
                                if rate and largest else ""))
    cost = plan.get("cost")
    if isinstance(cost, dict):
        what = f"{cost['samples']} samples" + (f" ({cost['tokens']} tokens)" if "tokens" in cost else "")
        if cost["seconds"] is None:
            lines.append(f"  cost of {what}: {cost.get('note')}")
        else:
            lines.append(f"  cost of {what}: {_duration(cost['seconds'])} at {cost['samples_per_second']:.4g} samples/s"
                         + (f" on {cost['gpus']} GPUs (ideal scaling)" if cost["gpus"] > 1 else "")
                         + (f", {cost['gpu_hours']:.4g} GPU-hours x {cost['price_usd_per_gpu_hour']:g} USD = "
                            f"{cost['usd']:.2f} USD" if cost["usd"] is not None else ""))
    loader = plan.get("loader")
    if isinstance(loader, dict):
        measured_at = loader.get("measured_batch_size")
        at = f" (measured at batch {measured_at})" if measured_at is not None else ""
        if loader["waits"] is None:
            lines.append(f"  data loader: {loader.get('note')}")
        elif loader["waits"]:
            lines.append(f"  the step at batch {loader['planned_batch']} would wait for data: the loader delivers "
                         f"{loader['samples_per_second']:.4g} samples/s{at}, the step takes "
                         f"{loader['step_samples_per_second']:.4g} samples/s; about {100 * loader['wait_fraction']:.0f}% "
                         f"of the time waiting ({_duration(loader['wait_seconds_per_step'])} per step)")
            lines.append("  speed the loader up (more workers, pinned memory, cheaper decoding) before spending "
                         "memory on a larger batch: the run goes at the loader's rate")
        else:
            lines.append(f"  the data loader keeps up: {loader['samples_per_second']:.4g} samples/s{at}, the step "
                         f"takes {loader['step_samples_per_second']:.4g} samples/s")
    return lines
