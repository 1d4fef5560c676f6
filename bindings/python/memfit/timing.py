# timing.py — the profile's "timing" ladder: step times measured without the
# tracer, every layer as it is, at the profiled batch sizes and at doublings of
# the largest (and between points whose memory errors disagree), which the planner
# calibrates its per-layer times to and checks its memory model on (PROFILE.md,
# "timing"; PLAN.md, "Step times", "The ladder check").
"""Untraced step times for the planner's time model.

The traced runs time every layer, but the tracer costs time of its own, and two
small batches extrapolate poorly: on a CPU a GPT-2 step at batch 2 and 4 is
mostly fixed cost, and a line through them was 3.3x the measured step at batch
97 (benchmarks/results/hf-2026-12-02.md). So the profile also times whole steps
untraced on a ladder of batch sizes that reaches where the step's cost grows
with the batch, and the planner scales its per-layer times to those steps.
The same steps' peaks are the planner's ladder check (PLAN.md), so where two
points' errors against the memory model disagree the default ladder also
measures between them (refinements).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

from ._lib import MemfitError, is_out_of_memory

LADDER_FACTOR = 32          # the automatic ladder ends at 32x the largest profiled batch,
LADDER_STEP_SECONDS = 0.25  # or after the first batch whose step takes this long (its cost then grows with the batch),
LADDER_MEMORY_SHARE = 0.5   # or before a batch whose step would need more than this share of the device's memory
LADDER_ERROR_RISE = 1e-3    # but a slow step does not end it while the peak's excess over the profiled line still
                            # rises by more than this share of the peak (the ladder check's points: PLAN.md)
REFINE_ERROR = 5e-3         # two neighbouring points whose errors (relative to the model's peak) differ by more
REFINE_SPACING = 8          # than this get a point between them, unless they are 1/8 of the smaller batch apart
REFINE_POINTS = 8           # or less; at most this many such points per precision and mode (refinements)


def ladder(sizes: Sequence[int], requested: Optional[Sequence[int]], max_batch: Optional[int] = None) -> List[int]:
    """The batch sizes to time: `requested` as given (sorted, each once), or by
    default the profiled sizes and then doublings of the largest up to
    LADDER_FACTOR times it and `max_batch` (the largest batch the job can make;
    measure_ladder may stop earlier)."""
    if requested is not None:
        batches = list(requested)
        if any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in batches):
            raise MemfitError(f"memfit.profile: timing_batches must be positive integers, got {requested!r}")
        return sorted(set(batches))
    out = sorted(set(sizes))
    largest = out[-1]
    b = largest * 2
    while b <= largest * LADDER_FACTOR and (max_batch is None or b <= max_batch):
        out.append(b)
        b *= 2
    return out


def mode_batches(plain: Sequence[Dict[str, object]]) -> List[int]:
    """Where the every-layer-checkpointed (and selective) step is timed: every
    batch of the plain ladder (`plain`, its entries). The planner interpolates
    their ratio to the plain step between them (PLAN.md, "Step times"), and
    their peaks are the ladder check's, whose error between two points is held
    at the larger of theirs: a kernel's temporary changes shape between batches
    (PLAN.md, "The ladder check"), so each mode is measured at the ladder's
    doublings, not only at its ends (the smaller batches cost little beside
    the largest)."""
    return sorted({int(e["batch_size"]) for e in plain})  # type: ignore[arg-type]


def mode_extension(plain: Sequence[Dict[str, object]], planned: Sequence[int], automatic: bool,
                   largest_profiled: int, max_batch: Optional[int] = None) -> List[int]:
    """Batches past the plain ladder at which to time the every-layer-checkpointed
    (and selective) step: where the automatic plain ladder (`planned`, its batches;
    `plain`, what it measured) ended early on memory (an out-of-memory or its
    memory share, not a slow step), checkpointed plans reach batches the plain step
    cannot, and their time there is measured rather than held at the last ratio:
    doublings of the plain ladder's last batch up to LADDER_FACTOR times the largest
    profiled batch and `max_batch` (measure_ladder stops them by the same rules).
    Nothing for an explicit ladder, a complete one or one ended by a slow step."""
    if not automatic or not plain:
        return []
    last = plain[-1]
    b_last = int(last["batch_size"])  # type: ignore[arg-type]
    if b_last >= max(planned) or float(last["step_seconds"]) >= LADDER_STEP_SECONDS:  # type: ignore[arg-type]
        return []
    out, b = [], b_last * 2
    while b <= largest_profiled * LADDER_FACTOR and (max_batch is None or b <= max_batch):
        out.append(b)
        b *= 2
    return out


def refinements(points: Sequence[Sequence[int]]) -> List[int]:
    """Where the default ladder also measures one precision and mode, from its
    points so far as (batch, measured peak, model peak): the batch halfway
    between two neighbouring points whose errors relative to the model's peak
    (measured - model) differ by more than REFINE_ERROR, unless they are at
    most max(1, 1/REFINE_SPACING of the smaller batch) apart. The ladder check
    holds the larger of two neighbours' relative errors between them, which
    assumes the error does not rise above both; where it changes between two
    points a kernel's temporary changed shape, and there it did: an HF ViT's
    every-layer-checkpointed bf16 step was +0.64% at 32, -3.78% at 64 and
    +1.85% at 40 (PLAN.md, "The ladder check")."""
    pts = sorted((int(b), int(m), int(p)) for b, m, p in points)
    out = []
    for (b0, m0, p0), (b1, m1, p1) in zip(pts, pts[1:]):
        if b1 - b0 <= max(1, b0 // REFINE_SPACING) or p0 <= 0 or p1 <= 0:
            continue
        if abs((m1 - p1) / p1 - (m0 - p0) / p0) > REFINE_ERROR:
            out.append((b0 + b1) // 2)
    return out


def profiled_line(points: Sequence[Sequence[int]]) -> Optional[Callable[[int], float]]:
    """The line through the measured peaks (batch, bytes) at the two largest
    profiled batches, or None with fewer than two. The planner's model
    reproduces those peaks and is convex in the batch (a maximum of sums of
    lines), so beyond them it is at or above this line: a measured peak's
    excess over the line bounds the model's under-prediction there."""
    by_batch = dict(sorted((int(b), int(v)) for b, v in points))
    if len(by_batch) < 2:
        return None
    (b0, v0), (b1, v1) = sorted(by_batch.items())[-2:]
    slope = (v1 - v0) / (b1 - b0)
    return lambda b: v1 + slope * (b - b1)


def _still_rising(out: List[Dict[str, object]], line: Optional[Callable[[int], float]], largest: int) -> bool:
    """Whether the ladder check (PLAN.md) still needs a larger batch: none past
    the profiled ones yet, or the last step's peak exceeds the profiled line by
    more than the step before it did, by more than LADDER_ERROR_RISE of the
    peak (a term the small batches did not show is still growing). Never
    without a line."""
    if line is None:
        return False
    if int(out[-1]["batch_size"]) <= largest:  # type: ignore[arg-type]
        return True
    excess = [int(e["peak_allocated_bytes"]) - line(int(e["batch_size"])) for e in out[-2:]]  # type: ignore[arg-type]
    return excess[1] - excess[0] > LADDER_ERROR_RISE * int(out[-1]["peak_allocated_bytes"])  # type: ignore[arg-type]


def measure_ladder(batches: Sequence[int], automatic: bool, largest_profiled: int, capacity: int,
                   time_steps: Callable[[int], Dict[str, float]], say: Callable[[str], None],
                   release: Callable[[], None], precision: str, mode: str = "plain",
                   line: Optional[Callable[[int], float]] = None) -> List[Dict[str, object]]:
    """Times each batch with time_steps(batch) -> {"step_seconds", "peak_bytes"}
    and returns the profile's timing entries. A batch that runs out of memory
    ends the ladder (release() gives the cache back first); so, on the
    automatic ladder beyond the profiled sizes, does a step of
    LADDER_STEP_SECONDS or more (unless it is the largest profiled batch or
    its peak's excess over `line`, profiled_line's, still rises: _still_rising), or a next batch whose step
    would need more than LADDER_MEMORY_SHARE of `capacity` (twice this one's
    peak)."""
    out: List[Dict[str, object]] = []
    what = "" if mode == "plain" else f", every layer {'selectively ' if mode == 'selective' else ''}checkpointed"
    for b in batches:
        try:
            measured = time_steps(b)
        except Exception as e:  # noqa: BLE001 — only an out-of-memory ends the ladder
            if not is_out_of_memory(e):
                raise
            release()
            say(f"timing {precision}{what}: batch {b} does not fit the device; the ladder ends at "
                f"{out[-1]['batch_size'] if out else 'no batch'}")
            break
        seconds = measured["step_seconds"]
        entry = {"precision": precision, "batch_size": b, "step_seconds": seconds,
                 "peak_allocated_bytes": int(measured["peak_bytes"])}  # the ladder check's (PLAN.md)
        if mode != "plain":
            entry["mode"] = mode
        out.append(entry)
        say(f"timing {precision}{what}: batch {b}: {seconds * 1e3:.1f} ms per step (untraced)")
        if not automatic or b < largest_profiled:
            continue
        if seconds >= LADDER_STEP_SECONDS and not _still_rising(out, line, largest_profiled):
            break
        if capacity > 0 and 2 * measured["peak_bytes"] > LADDER_MEMORY_SHARE * capacity:
            break
    return out
