"""The allocator's window counters: every memory window of a profile (each
layer's forward and backward, the loss, loss-backward and optimizer) takes its
peak from the marks' rises that the allocator counts (allocator/README.md,
"Window counters"), and on real models each equals a replay of the trace's
events between its marks, which is how profiles computed it before: the
profiles are unchanged to the byte."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import memfit  # noqa: E402
from memfit import _lib, profiling  # noqa: E402
from memfit.models import cnn_job, gpt_job  # noqa: E402


def _replayed_peak(events, a, b) -> int:
    value = peak = a["allocated"]
    for e in events[a["index"] + 1: b["index"]]:
        if e.kind == _lib.TRACE_ALLOC:
            value += e.size
            peak = max(peak, value)
        elif e.kind == _lib.TRACE_FREE:
            value -= e.size
    return peak


@pytest.mark.parametrize("make", [gpt_job, cnn_job], ids=["gpt", "cnn"])
def test_every_window_peak_is_the_replayed_one(monkeypatch, make) -> None:
    seen = {"windows": 0, "risen": 0}
    original = profiling._analyse

    def checked(events, *args, **kwargs):
        out = original(events, *args, **kwargs)
        marks = out["ctx"]["marks"]
        for step in out["steps"]:
            pairs = list(step["forward"].values()) + list(step["backward"].values())
            for a, b in pairs:
                assert profiling._peak_between(marks, a, b) == _replayed_peak(events, a, b)
                seen["windows"] += 1
                seen["risen"] += profiling._peak_between(marks, a, b) > max(a["allocated"], b["allocated"])
        return out

    monkeypatch.setattr(profiling, "_analyse", checked)
    prof = memfit.profile(make(), batch_sizes=(2, 4), steps=1, warmup_steps=1, timing_batches=())
    assert seen["windows"] > 10 * len(prof.settings)
    assert seen["risen"] > 0  # some window peaks above both ends: the counters are what decide them
