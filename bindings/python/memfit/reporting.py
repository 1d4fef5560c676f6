"""Reports of a profile: a table by category and by layer, and a PNG timeline
of one training step (live bytes stacked by category, layers marked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

from ._lib import MemfitError, format_bytes
from .documents import Profile, predicted_allocated


def human(n: float) -> str:
    """Bytes for people, by the C library's one formatter (as memfit-plan and the OOM report print them)."""
    return format_bytes(n)


def pick_setting(profile: Profile, batch_size: Optional[int] = None, precision: Optional[str] = None) -> Dict[str, Any]:
    """The setting asked for, or the largest batch of the first precision."""
    settings = [s for s in profile.settings if precision is None or s["precision"] == precision]
    if batch_size is not None:
        settings = [s for s in settings if s["batch_size"] == batch_size]
    if not settings:
        have = ", ".join(f"{s['batch_size']}/{s['precision']}" for s in profile.settings)
        raise MemfitError(f"memfit: the profile has no setting batch={batch_size} precision={precision} (it has {have})")
    first_precision = settings[0]["precision"]
    return max((s for s in settings if s["precision"] == first_precision), key=lambda s: s["batch_size"])


def report(profile: Union[Profile, str, Path], batch_size: Optional[int] = None, precision: Optional[str] = None,
           top: int = 10) -> str:
    """A readable table: the step's peak, each category's peak and the layers holding the most."""
    if not isinstance(profile, Profile):
        profile = Profile.load(profile)
    d = profile.data
    s = pick_setting(profile, batch_size, precision)
    lines = [
        f"memfit profile: {d['job']} on {d['device']} ({d['device_name']}), torch {d['torch_version']}, "
        f"optimizer {d['optimizer']}",
        f"setting: batch {s['batch_size']}, {s['precision']}   "
        f"peak allocated {human(s['peak_allocated_bytes'])}, peak reserved {human(s['peak_reserved_bytes'])}, "
        f"fixed at step start {human(s['fixed_bytes'])}, step {s['step_seconds'] * 1e3:.1f} ms",
        "",
        "peak by category (requested bytes):",
    ]
    total = sum(s["totals"].values()) or 1
    for c, v in s["totals"].items():  # the profile's categories, in the allocator's order
        lines.append(f"  {c:<16} {human(v):>12}  {100 * v / total:5.1f}%")
    lines += ["", f"layers (top {top} by parameters + gradients + optimizer state + activations), execution order:"]
    header = f"  {'layer':<22}{'type':<14}{'params':>11}{'grads':>11}{'opt state':>11}{'activ.':>11}" \
             f"{'fwd tmp':>11}{'bwd tmp':>11}{'fwd ms':>8}{'bwd ms':>8}"
    lines.append(header)

    def held(layer: Dict[str, Any]) -> int:
        return sum(layer[k] for k in ("parameter_bytes", "gradient_bytes", "optimizer_state_bytes", "activation_bytes"))

    chosen = sorted(s["layers"], key=held, reverse=True)[:top]
    for layer in s["layers"]:
        if layer not in chosen:
            continue
        lines.append(
            f"  {layer['name'][:21]:<22}{layer['type'][:13]:<14}{human(layer['parameter_bytes']):>11}"
            f"{human(layer['gradient_bytes']):>11}{human(layer['optimizer_state_bytes']):>11}"
            f"{human(layer['activation_bytes']):>11}{human(layer['forward_temporary_peak_bytes']):>11}"
            f"{human(layer['backward_temporary_peak_bytes']):>11}{layer['forward_seconds'] * 1e3:8.2f}"
            f"{layer['backward_seconds'] * 1e3:8.2f}"
        )
    not_planned = d.get("units_not_planned") or []
    if not_planned:
        lines += ["", "units that are not layers (their work counts in the layers' windows it runs in):"]
        lines += [f"  {u['name']} ({u['type']}): {u['reason']}" for u in not_planned]
    return "\n".join(lines)


def per_rank_lines(memory: Dict[str, Any], per_rank_batch: Optional[int] = None,
                   global_batch: Optional[int] = None, accumulation: int = 1) -> list:
    """The per-rank section of a report: what one rank of a DDP or FSDP2 run holds of
    the model's state against one process (memfit.distributed.per_rank_memory's dict)."""
    n = memory["world_size"]
    strategy = memory["strategy"]
    sharded = memory.get("sharded", strategy == "fsdp")
    head = f"per rank: {strategy} ({'FSDP2, fully_shard' if strategy == 'fsdp' else 'DistributedDataParallel'}), " \
           f"{n} ranks"
    if per_rank_batch is not None:
        head += f", batch {per_rank_batch} per rank"
        if global_batch is not None:
            head += (f" x {accumulation} accumulation steps" if accumulation > 1 else "") + \
                    f" x {n} ranks = global batch {global_batch}"
    lines = [head, f"  {'':<18}{'one process':>14}{'per rank':>14}  "]
    one, rank = memory["one_process"], memory["per_rank"]
    for key, label in (("parameter_bytes", "parameters"), ("gradient_bytes", "gradients"),
                       ("optimizer_state_bytes", "optimizer state"), ("buffer_bytes", "buffers, other")):
        how = ("sharded 1/%d" % n if sharded and key != "buffer_bytes" else "full (replicated)")
        lines.append(f"  {label:<18}{human(one[key]):>14}{human(rank[key]):>14}  {how}")
    total_one, total_rank = sum(one.values()), sum(rank.values())
    lines.append(f"  {'model state':<18}{human(total_one):>14}{human(total_rank):>14}")
    comm = memory.get("communication") or {}
    if strategy == "fsdp" and comm:
        lines.append(f"  all-gather, largest unit: {human(comm['largest_all_gather_bytes'])} "
                     f"({comm['largest_all_gather_unit']}); reduce-scatter input, largest: "
                     f"{human(comm['largest_reduce_scatter_bytes'])} ({comm['largest_reduce_scatter_unit']}); "
                     f"backend {comm.get('backend', '?')}")
    elif comm:
        lines.append(f"  DDP gradient buckets: {human(comm['ddp_bucket_bytes'])} in {comm['ddp_buckets']} "
                     f"(on top of the gradients, for the whole run)")
    mp = memory.get("mixed_precision")
    if mp:
        lines.append(f"  mixed precision: param_dtype {mp.get('param_dtype')}, reduce_dtype "
                     f"{mp.get('reduce_dtype') or mp.get('param_dtype')}")
    return lines


def plan_report(data: Dict[str, Any]) -> str:
    """A plan's report: its batch, predicted peak and budget and, for a plan of several
    ranks (strategy, world_size), what one rank holds (its per_rank_memory)."""
    lines = [f"memfit plan: {data.get('job', '?')}, batch {data['batch_size']}, predicted peak "
             f"{human(predicted_allocated(data))} of budget "
             f"{human(data['budget_bytes'])}"]
    strategy = data.get("strategy")
    if strategy is None:
        lines.append("one process (no strategy)")
        return "\n".join(lines)
    memory = data.get("per_rank_memory")
    if not isinstance(memory, dict):
        raise MemfitError(f"memfit report: the plan has strategy {strategy!r} but no per_rank_memory "
                          "(planned by an older memfit): plan it again")
    for key in ("world_size", "one_process", "per_rank", "strategy"):
        if key not in memory:
            raise MemfitError(f"memfit report: the plan's per_rank_memory has no {key!r}")
    lines += per_rank_lines(memory, data.get("per_rank_batch", data["batch_size"]), data.get("global_batch"),
                            int(data.get("grad_accumulation_steps", 1)))
    return "\n".join(lines)


def plot(profile: Union[Profile, str, Path], path: Union[str, Path], batch_size: Optional[int] = None,
         precision: Optional[str] = None) -> Path:
    """Write a PNG: live allocated bytes stacked by category across one step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MemfitError("memfit: --plot needs matplotlib (pip install matplotlib)") from e
    if not isinstance(profile, Profile):
        profile = Profile.load(profile)
    s = pick_setting(profile, batch_size, precision)
    timeline = s.get("timeline")
    if not timeline:
        raise MemfitError("memfit: this profile was saved without its timeline; profile again to plot")
    names = [layer["name"] for layer in s["layers"]]
    t_ms = [t * 1e3 for t in timeline["t_seconds"]]
    mib = 1024 * 1024
    by_category = timeline["allocated_bytes"]  # the profile's categories, in the allocator's order
    series = [[v / mib for v in by_category[c]] for c in by_category]
    fig, ax = plt.subplots(figsize=(12, 5.5), dpi=110)
    ax.stackplot(t_ms, series, labels=list(by_category), step="post", alpha=0.9)
    top = max(sum(col) for col in zip(*series)) if series and series[0] else 1
    for m in timeline["marks"]:
        label = m.get("label")
        if not label:
            continue
        x = m["t_seconds"] * 1e3
        ax.axvline(x, color="black", linewidth=0.4, alpha=0.35)
        ax.text(x, top * 1.01, label, rotation=90, fontsize=6, va="bottom", ha="center")
    ax.set_xlabel("time in the step (ms)")
    ax.set_ylabel("allocated (MiB)")
    ax.set_title(f"memfit: {profile.data['job']}, batch {s['batch_size']} {s['precision']} on "
                 f"{profile.data['device']}: live memory by category ({len(names)} layers)", fontsize=10, pad=60)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_ylim(0, top * 1.0 + 1e-9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
