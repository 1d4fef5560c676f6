"""test_memtracker.py — memfit against PyTorch's own memory tracker.

torch.distributed._tools.mem_tracker.MemTracker (torch 2.13) runs on CPU: it is
a TorchDispatchMode that follows tensor *storages* of any device (a
weakref per storage, `_WeakRefInfo`), not a CUDA allocator hook. The only
device-specific code is `_WeakRefInfo._calculate_mem_consumed`, which rounds a
storage up to 512 bytes on CUDA (`_PYTORCH_MIN_ALLOCATE`) and counts CPU storages
at their exact `nbytes`. So the two tools are compared on one training step of
the same model, on CPU, with memfit as PyTorch's CPU allocator:

* parameter, gradient and optimizer-state bytes agree exactly (memfit's
  *requested* bytes, which are unrounded, against MemTracker's CPU bytes);
* the step's peak agrees within 5%.

Where the two define categories differently (so only those three are compared
exactly):

* Rounding: memfit's `allocated` bytes are rounded to 512 B on every device;
  its `requested` bytes are what PyTorch asked for. MemTracker rounds CUDA
  storages to 512 B and leaves CPU storages exact.
* Activations / temporaries in the forward pass: MemTracker calls every tensor
  created outside backward and the optimizer step an `Activation`, including
  forward temporaries freed before backward and the loss. memfit tags forward
  allocations as `temporary` and turns those still alive when the model's
  forward returns into `activation`; the loss and anything computed outside the
  model's forward (the loss function) stays `other` under memfit.track (a
  profile tags the whole loss_fn as forward).
* Backward: MemTracker's `Temp` is everything created during backward except
  parameter gradients; memfit's is `temporary` with phase `backward`, and
  gradients become `gradient` when accumulated (post-accumulate-grad hook).
* Optimizer step: MemTracker counts *every* tensor created inside
  `optimizer.step()` as `Optstate`, transient ones included (they vanish from
  "current" but can appear in its peak snapshot); memfit tags transients as
  `temporary` (phase `optimizer`) and re-tags only the tensors found in
  `optimizer.state` as `optimizer_state`.
* Inputs: MemTracker has no input category (tensors passed to track_external
  are `Other`); memfit tags the root module's tensor arguments `input` and
  leaves the targets `other`.
* Buffers: MemTracker has `Buffer`; memfit has no buffer category (a buffer
  keeps the tag of its allocation).
* Coverage and peaks: MemTracker sees tensors that come out of dispatched ops
  and updates its peak after each op returns; allocations that never surface as
  an op output (kernel scratch space, intermediates inside a composite op) are
  invisible to it. memfit counts every allocation that reaches PyTorch's CPU
  allocator, at the moment it happens, so memfit's peak can only be higher.
"""
from __future__ import annotations

import gc
import inspect

import pytest

torch = pytest.importorskip("torch")
mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")

import memfit  # noqa: E402
from memfit._lib import CATEGORIES  # noqa: E402
from memfit.models import GPT  # noqa: E402

MemTracker = mem_tracker.MemTracker
CPU = torch.device("cpu")
SHAPE = dict(depth=2, width=64, heads=4, vocab=256, context=32)
BATCH = 4


def test_memtracker_counts_cpu_storages_exactly():
    """The documented device dependence: 512-byte rounding for CUDA storages only."""
    info = mem_tracker._WeakRefInfo
    source = inspect.getsource(info._calculate_mem_consumed)
    assert 'self.device.type == "cuda"' in source, source
    assert info(10, 4, CPU, mem_tracker._MemRefType.PARAM).mem_consumed == 40
    assert info(10, 4, torch.device("cuda", 0), mem_tracker._MemRefType.PARAM).mem_consumed == 512


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, SHAPE["vocab"], (BATCH, SHAPE["context"] + 1), generator=g)
    return idx[:, :-1].contiguous(), idx[:, 1:].contiguous()


def _loss(model, x, y):
    logits = model(x)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _requested(alloc):
    return {c: alloc.category_stats(c)["requested"]["current"] for c in CATEGORIES}


def test_memfit_agrees_with_memtracker_on_one_step(memfit_cpu):
    alloc = memfit_cpu
    gc.collect()
    before = _requested(alloc)
    torch.manual_seed(0)
    model = GPT(**SHAPE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tracker = memfit.track(model, opt)
    try:
        x, y = _batch(0)
        _loss(model, x, y).backward()  # warm-up: AdamW creates its state in the first step
        opt.step()
        opt.zero_grad(set_to_none=True)
        gc.collect()

        mt = MemTracker()
        mt.track_external(model, opt, x, y)
        mt_start = mt.get_tracker_snapshot("current")[CPU]["Total"]
        other = alloc.stats()["requested_bytes"]["current"] - mt_start  # the rest of the process
        alloc.reset_peaks()
        with mt:
            _loss(model, x, y).backward()
            opt.step()
        peak_requested = alloc.stats()["requested_bytes"]["peak"] - other
        peak_allocated = alloc.stats()["allocated_bytes"]["peak"] - other

        now = {c: v - before[c] for c, v in _requested(alloc).items()}
        theirs = mt.get_tracker_snapshot("current")[CPU]
        params = list(model.parameters())
        param_bytes = sum(p.numel() * p.element_size() for p in params)
        steps = sum(s.numel() * s.element_size() for s in (opt.state[p]["step"] for p in params))

        # The model's own numbers first, so a disagreement says who is wrong.
        assert theirs["Parameter"] == param_bytes
        assert now["parameter"] == theirs["Parameter"]
        assert now["gradient"] == theirs["Gradient"] == param_bytes
        assert now["optimizer_state"] == theirs["Optstate"] == 2 * param_bytes + steps
        assert theirs["Buffer"] == 0  # GPT has no buffers, so nothing is left out of the comparison
        # The batch: MemTracker's `Other` (track_external); memfit's `input` (the model's argument) and `other`.
        assert theirs["Other"] == x.numel() * x.element_size() + y.numel() * y.element_size()
        assert now["input"] == x.numel() * x.element_size()
        # Everything MemTracker holds at the end is also alive in memfit.
        assert sum(now.values()) >= theirs["Total"]

        mt_peak = mt.get_tracker_snapshot("peak")[CPU]["Total"]
        assert mt_peak > theirs["Total"]  # activations and temporaries came and went
        assert peak_requested >= mt_peak  # memfit sees at least every storage MemTracker sees
        assert abs(peak_requested - mt_peak) <= 0.05 * mt_peak, (peak_requested, mt_peak)
        assert abs(peak_allocated - mt_peak) <= 0.05 * mt_peak, (peak_allocated, mt_peak)
    finally:
        tracker.remove()


def test_profile_totals_agree_with_memtracker(memfit_cpu):
    """memfit.profile's per-layer parameter/gradient/optimizer-state bytes against
    MemTracker's totals, after one more tracked step on the profiled model."""
    from memfit.job import Job

    torch.manual_seed(0)
    made = []

    def optimizer(params):
        made.append(torch.optim.AdamW(params, lr=1e-3))
        return made[-1]

    job = Job(model=GPT(**SHAPE), make_batch=lambda b: _batch(b), loss_fn=lambda m, b: _loss(m, *b),
              optimizer=optimizer)
    prof = memfit.profile(job, device="cpu", batch_sizes=(BATCH,), steps=1, warmup_steps=1, timing_batches=())
    layers = prof.settings[0]["layers"]
    model, opt = job.model, made[0]
    x, y = _batch(BATCH)
    opt.zero_grad(set_to_none=True)
    mt = MemTracker()
    mt.track_external(model, opt, x, y)
    with mt:
        _loss(model, x, y).backward()
        opt.step()
    theirs = mt.get_tracker_snapshot("current")[CPU]
    assert sum(layer["parameter_bytes"] for layer in layers) == theirs["Parameter"]
    assert sum(layer["gradient_bytes"] for layer in layers) == theirs["Gradient"]
    assert sum(layer["optimizer_state_bytes"] for layer in layers) == theirs["Optstate"]
