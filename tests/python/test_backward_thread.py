# test_backward_thread.py — memfit's tags reach backward when autograd runs it
# on another thread (on CUDA it runs on a device thread of its own). On CPU
# autograd runs backward on the calling thread, so the test calls backward from
# a second thread: the forward hooks' per-thread tags and the tracker's
# backward tag must still land on the right allocations, and nothing may stay
# tagged after backward ends, on either thread.
from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")
import memfit  # noqa: E402
from memfit import _lib  # noqa: E402

pytestmark = pytest.mark.needs_adapter


def test_backward_on_another_thread_is_tagged(memfit_cpu):
    alloc = memfit.current()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    tracker = memfit.track(model)
    try:
        alloc.trace_start()
        x = torch.randn(32, 64)
        loss = model(x).square().mean()
        errors = []

        def backward():
            try:
                loss.backward()
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        t = threading.Thread(target=backward)
        t.start()
        t.join()
        assert not errors, errors
        alloc.trace_stop()
        events = alloc.trace_events()
    finally:
        tracker.remove()
    backward_phase = _lib.PHASE["backward"]
    layers = {memfit.allocator.layer_name(e.layer) for e in events
              if e.kind == 0 and e.phase == backward_phase}
    assert layers & {"0", "2"}, f"no backward allocation carried a layer's backward tag: {layers}"
    # Backward's end cleared the shared tag: later allocations, on any thread, are untagged.
    assert _lib.lib().mf_tag_depth() == 0
    current = _lib.lib().mf_tag_current()
    assert (current.layer, current.phase) == (0, _lib.PHASE["none"])
    seen = []
    other = threading.Thread(target=lambda: seen.append(_lib.lib().mf_tag_current()))
    other.start()
    other.join()
    assert (seen[0].layer, seen[0].phase) == (0, _lib.PHASE["none"])
