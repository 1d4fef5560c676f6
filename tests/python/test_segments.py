"""Checkpoint segments (memfit.segments, a plan's layers with the same "segment"):
the gradients, losses and BatchNorm statistics are those of the model without the
plan; a segment keeps only its first layer's inputs (measured under memfit's
allocator: pairs hold less than checkpointing each layer on a stack whose layers'
activations are small against their inputs); layers that are not chained, a
parent that skips a segment's layer, and malformed plans are MemfitErrors, and
none of them leaves the checkpoint's hooks on."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from memfit import MemfitError  # noqa: E402
from memfit.planning import Plan, apply, unapply  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "jobs"))


def _plan(names, segment_of, precision="fp32"):
    """Layer i in segment segment_of(i); None: checkpointed alone; False: kept."""
    layers = []
    for i, n in enumerate(names):
        seg = segment_of(i)
        layer = {"name": n, "checkpoint": seg is not False, "precision": precision}
        if seg is not None and seg is not False:
            layer["segment"] = seg
        layers.append(layer)
    return Plan({"batch_size": 1, "layers": layers})


def _stack(n: int, d: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(d, d), nn.ReLU()) for _ in range(n)])


def _grads(model: nn.Module):
    return [p.grad.clone() for p in model.parameters()]


def _no_hooks_left() -> bool:
    return torch._C._autograd._top_saved_tensors_default_hooks(False) is None


def test_pairs_of_a_stack_give_the_gradients_of_the_plain_model() -> None:
    planned, plain = _stack(6, 16), _stack(6, 16)
    apply(planned, _plan([str(i) for i in range(6)], lambda i: i // 2))
    x = torch.randn(5, 16)
    planned(x).square().sum().backward()
    plain(x).square().sum().backward()
    for a, b in zip(_grads(planned), _grads(plain)):
        assert torch.equal(a, b)
    assert _no_hooks_left()


def test_segments_of_gpt2_give_its_loss_and_gradients_with_dropout() -> None:
    pytest.importorskip("transformers")
    import real_models

    job = real_models.gpt2()
    planned, plain = job.model, copy.deepcopy(job.model)
    names = [f"transformer.h.{i}" for i in range(4)]
    apply(planned, _plan(names, lambda i: 0 if i < 3 else False))  # a segment of three, the last layer kept
    ids = job.make_batch(3)
    torch.manual_seed(1)
    got = job.loss_fn(planned, ids)
    got.backward()
    torch.manual_seed(1)
    want = job.loss_fn(plain, ids)
    want.backward()
    assert got.item() == want.item()
    for (name, p), (_, q) in zip(planned.named_parameters(), plain.named_parameters()):
        assert torch.equal(p.grad, q.grad), name
    with torch.no_grad():  # evaluation: no frame opened
        planned(input_ids=ids)
    assert _no_hooks_left()


def test_running_statistics_of_a_segment_are_updated_once() -> None:
    def model():
        torch.manual_seed(0)
        return nn.Sequential(*[nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
                               for _ in range(3)])
    planned, plain = model(), model()
    apply(planned, _plan(["0", "1", "2"], lambda i: 7))
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        x = torch.randn(2, 4, 6, 6, generator=g)
        planned(x).mean().backward()
        plain(x).mean().backward()
    for (name, a), (_, b) in zip(planned.named_buffers(), plain.named_buffers()):
        assert torch.equal(a, b), name
    assert planned[0][1].num_batches_tracked.item() == 2


class _Two(nn.Module):
    """Two Linear layers `a` and `b`; the subclasses' forwards call them in their own ways."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)


class _Aux(_Two):
    """Computes a term of its own from the first block's output between the two blocks' calls."""

    def forward(self, x):
        h = self.a(x)
        aux = (h * h).mean()  # saved by autograd outside the segment: its recomputation does not repeat it
        return self.b(h).sum() + aux


def test_what_the_parent_computes_between_a_segments_layers_stays_outside_it() -> None:
    planned, plain = _Aux(), _Aux()
    apply(planned, _plan(["a", "b"], lambda i: 0))
    x = torch.randn(3, 8)
    planned(x).backward()
    plain(x).backward()
    for a, b in zip(_grads(planned), _grads(plain)):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)


def test_a_segment_keeps_only_its_first_layers_inputs(memfit_cpu) -> None:
    # Each block keeps its input (Linear) and its output (ReLU): checkpointing it alone keeps its
    # input; pairs keep every other input, at the price of one more block recomputed at once.
    n, d, batch = 16, 128, 512
    x_bytes = batch * d * 4
    names = [str(i) for i in range(n)]
    peaks = {}
    for label, segment_of in (("each", lambda i: None), ("pairs", lambda i: i // 2),
                              ("sqrt", lambda i: i // int(math.sqrt(n)))):
        model = _stack(n, d)
        apply(model, _plan(names, segment_of))
        x = torch.randn(batch, d, requires_grad=True)
        memfit_cpu.reset_peaks()
        base = memfit_cpu.stats()["allocated_bytes"]["current"]
        model(x).sum().backward()
        peaks[label] = memfit_cpu.stats()["allocated_bytes"]["peak"] - base
        del model, x
    # Pairs drop n/2 of the n inputs each-layer checkpointing keeps, and hold about one block's
    # activations (2 inputs' worth) more in backward; segments of 4 drop 3/4 of them and hold three
    # blocks more (measured: 17.6, 10.7 and 9.1 inputs' worth).
    assert peaks["pairs"] <= peaks["each"] - (n // 2 - 3) * x_bytes, peaks
    assert peaks["sqrt"] <= peaks["pairs"] - x_bytes, peaks


class _Skip(_Two):
    def forward(self, x):
        return self.b(self.a(x) + x)  # b is given a sum, not a's output


class _Skipping(_Two):
    def forward(self, x):
        return self.a(x)  # never calls b


def test_layers_that_are_not_chained_are_an_error_that_leaves_no_hooks() -> None:
    model = _Skip()
    apply(model, _plan(["a", "b"], lambda i: 0))
    with pytest.raises(MemfitError, match=r"'b' is not chained to 'a'"):
        model(torch.randn(2, 8))
    assert _no_hooks_left()
    unapply(model)
    model(torch.randn(2, 8)).sum().backward()  # the model is usable again


def test_a_parent_that_skips_a_segments_layer_is_an_error_that_leaves_no_hooks() -> None:
    model = _Skipping()
    apply(model, _plan(["a", "b"], lambda i: 0))
    with pytest.raises(MemfitError, match=r"returned before layer 'b' ran"):
        model(torch.randn(2, 8))
    assert _no_hooks_left()


class _Failing(nn.Module):
    def forward(self, x):
        raise torch.OutOfMemoryError("out of memory (simulated)")


def test_an_error_inside_a_segment_reaches_the_caller_as_it_is() -> None:
    model = nn.Sequential(nn.Linear(8, 8), _Failing())
    apply(model, _plan(["0", "1"], lambda i: 0))
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        model(torch.randn(2, 8))
    assert _no_hooks_left()


@pytest.mark.parametrize("layers, match", [
    ([{"name": "0", "checkpoint": True, "precision": "fp32", "segment": 0},
      {"name": "1", "checkpoint": False, "precision": "fp32", "segment": 0}], "not checkpointed as a whole"),
    ([{"name": "0", "checkpoint": True, "selective": True, "precision": "fp32", "segment": 0},
      {"name": "1", "checkpoint": True, "precision": "fp32", "segment": 0}], "not checkpointed as a whole"),
    ([{"name": "0", "checkpoint": True, "precision": "fp32", "segment": 0},
      {"name": "1", "checkpoint": True, "precision": "fp32"}], "segment 0 has one layer"),
    ([{"name": "0", "checkpoint": True, "precision": "fp32", "segment": 0},
      {"name": "1", "checkpoint": True, "precision": "fp32", "segment": 1},
      {"name": "2", "checkpoint": True, "precision": "fp32", "segment": 0}], "not consecutive"),
    ([{"name": "0", "checkpoint": True, "precision": "fp32", "segment": "x"},
      {"name": "1", "checkpoint": True, "precision": "fp32", "segment": "x"}], "segment must be an integer"),
])
def test_malformed_segments_are_errors_naming_them(layers, match) -> None:
    model = _stack(3, 4)
    with pytest.raises(MemfitError, match=match):
        apply(model, Plan({"batch_size": 1, "layers": layers}))
