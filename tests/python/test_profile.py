# test_profile.py — memfit.profile on CPU against the model's own numbers:
# parameter / gradient / AdamW-state bytes per layer and in total, activations
# linear in the batch size, every timeline mark's categories adding up to
# memfit's own allocated counter, contiguous windows whose largest peak is the
# setting's peak, and the JSON schema (valid profiles pass, broken ones are
# rejected naming the field). One profile (a small GPT, batches 2/4/8, fp32 and
# bf16) is measured once for the module.
from __future__ import annotations

import copy
import gc
import json

import pytest

torch = pytest.importorskip("torch")

import memfit  # noqa: E402
from memfit._lib import CATEGORIES, MemfitError  # noqa: E402
from memfit.models import gpt_job  # noqa: E402
from memfit.profiling import Profile  # noqa: E402

BATCHES = (2, 4, 8)
PRECISIONS = ("fp32", "bf16")
GPT = dict(depth=2, width=64, heads=4, vocab=256, context=32)
LAYERS = ["embed", "blocks.0", "blocks.1", "ln_f", "head"]  # ModuleList expanded, execution order
NONTRIVIAL_ACTIVATION = 1024  # bytes at the smallest batch


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@pytest.fixture(scope="module")
def measured(memfit_cpu):
    """The profile, the job's model and optimizer (captured from the job's
    factory), and each category's bytes alive in the process before the job."""
    alloc = memfit_cpu
    gc.collect()
    before = {c: alloc.category_stats(c)["requested"]["current"] for c in CATEGORIES}
    job = gpt_job(**GPT)
    made = []
    factory = job.optimizer

    def optimizer(params):
        made.append(factory(params))
        return made[-1]

    job.optimizer = optimizer
    prof = memfit.profile(job, device="cpu", batch_sizes=BATCHES, precisions=PRECISIONS, steps=2, warmup_steps=1,
                          timing_batches=())
    assert len(made) == 1, "memfit.profile should build the optimizer once"
    yield prof, job, made[0], before
    gc.collect()


@pytest.fixture(scope="module")
def expected(measured):
    """Per layer: parameter bytes, gradient bytes and AdamW state bytes computed
    from the model's tensors and the optimizer's state (not from memfit)."""
    prof, job, opt, _ = measured
    model = job.model
    seen = set()
    out = {}
    for name in LAYERS:
        params = [p for p in model.get_submodule(name).parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        steps = [opt.state[p]["step"] for p in params]
        for p in params:
            state = opt.state[p]
            assert set(state) == {"step", "exp_avg", "exp_avg_sq"}, sorted(state)
            assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape
            assert isinstance(state["step"], torch.Tensor)
            assert p.grad is not None and p.grad.shape == p.shape
        out[name] = {
            "parameter": sum(nbytes(p) for p in params),
            "gradient": sum(nbytes(p.grad) for p in params),
            "step": sum(nbytes(s) for s in steps),
            "n_step_tensors": len(steps),
        }
    assert len(seen) == len(list(model.parameters())), "every parameter belongs to one layer"
    return out


def settings(prof):
    return [prof.setting(b, p) for p in PRECISIONS for b in BATCHES]


def test_layers_are_the_blocks_in_execution_order(measured):
    prof = measured[0]
    for s in settings(prof):
        assert [layer["name"] for layer in s["layers"]] == LAYERS
        assert [layer["type"] for layer in s["layers"]] == ["Embedding", "Block", "Block", "LayerNorm", "Linear"]
    assert prof.data["optimizer"] == "AdamW" and prof.data["device"] == "cpu"


def test_parameter_bytes_per_layer_and_total(measured, expected):
    prof, job, _, before = measured
    total = sum(nbytes(p) for p in job.model.parameters())
    assert total == sum(e["parameter"] for e in expected.values())
    for s in settings(prof):
        for layer in s["layers"]:
            assert layer["parameter_bytes"] == expected[layer["name"]]["parameter"], layer["name"]
        assert sum(layer["parameter_bytes"] for layer in s["layers"]) == total
        # `totals` is the category's peak over the process's memory: the job's plus what was alive before it.
        assert s["totals"]["parameter"] == before["parameter"] + total


def test_gradient_bytes_equal_parameter_bytes(measured, expected):
    prof, job, _, before = measured
    total = sum(nbytes(p) for p in job.model.parameters())
    for s in settings(prof):
        for layer in s["layers"]:
            e = expected[layer["name"]]
            assert e["gradient"] == e["parameter"]
            assert layer["gradient_bytes"] == layer["parameter_bytes"] == e["parameter"], layer["name"]
        assert s["totals"]["gradient"] == before["gradient"] + total


def test_adamw_state_is_two_moments_plus_step_counters(measured, expected):
    prof, job, opt, before = measured
    params = list(job.model.parameters())
    # AdamW keeps one `step` tensor per parameter (a 0-dim tensor on CPU, not capturable/fused).
    steps = [opt.state[p]["step"] for p in params]
    assert len(steps) == len(params) == sum(e["n_step_tensors"] for e in expected.values())
    step_bytes = sum(nbytes(s) for s in steps)
    assert step_bytes == len(params) * steps[0].element_size() > 0
    total = sum(nbytes(p) for p in params)
    for s in settings(prof):
        for layer in s["layers"]:
            e = expected[layer["name"]]
            assert layer["optimizer_state_bytes"] == 2 * e["parameter"] + e["step"], layer["name"]
        assert sum(layer["optimizer_state_bytes"] for layer in s["layers"]) == 2 * total + step_bytes
        assert s["totals"]["optimizer_state"] == before["optimizer_state"] + 2 * total + step_bytes


def test_input_and_output_bytes(measured):
    prof, job, _, before = measured
    width, ctx, vocab = GPT["width"], GPT["context"], GPT["vocab"]
    for s in settings(prof):
        b = s["batch_size"]
        batch = job.make_batch(b)
        assert s["input_bytes"] == before["input"] + sum(nbytes(t) for t in batch)
        out = {layer["name"]: layer["output_bytes"] for layer in s["layers"]}
        autocast_bytes = 2 if s["precision"] == "bf16" else 4
        assert out["embed"] == out["blocks.0"] == out["blocks.1"] == out["ln_f"] == b * ctx * width * 4
        assert out["head"] == b * ctx * vocab * autocast_bytes  # the Linear's output is in the autocast dtype


@pytest.mark.parametrize("precision", PRECISIONS)
def test_activations_grow_linearly_with_batch(measured, precision):
    prof = measured[0]
    acts = {b: {layer["name"]: layer["activation_bytes"] for layer in prof.setting(b, precision)["layers"]}
            for b in BATCHES}
    b0, b1, b2 = BATCHES
    checked = []
    for name in LAYERS:
        a0, a1, a2 = acts[b0][name], acts[b1][name], acts[b2][name]
        if a0 < NONTRIVIAL_ACTIVATION:
            continue
        assert a0 < a1 < a2, (name, a0, a1, a2)
        line = a1 + (a1 - a0) * (b2 - b1) / (b1 - b0)  # the straight line through the first two sizes
        assert abs(a2 - line) <= 0.05 * line, f"{name}: {a2} at batch {b2}, the line through {b0}/{b1} gives {line}"
        checked.append(name)
    # fp32: ln_f's output is what head saves; bf16: head saves its own bf16 copy of it instead.
    assert {"embed", "blocks.0", "blocks.1"} <= set(checked) and len(checked) == 4, checked


def test_every_mark_categories_add_up_to_memfit_allocated(measured):
    prof = measured[0]
    for s in settings(prof):
        timeline = s["timeline"]
        marks = timeline["marks"]
        # step start, a forward mark per layer, forward end, loss end, a backward mark per layer, backward end, step end
        assert len(marks) >= 5 + 2 * len(LAYERS) - 1, len(marks)
        for m in marks:
            assert set(m["category_bytes"]) == set(CATEGORIES)
            assert sum(m["category_bytes"].values()) == m["memfit_allocated_bytes"], m
            assert m["allocated_bytes"] == m["memfit_allocated_bytes"], m  # the replay agrees with the C counter
        n = len(timeline["t_seconds"])
        assert n > len(marks)
        assert all(len(timeline["allocated_bytes"][c]) == n for c in CATEGORIES)
        assert timeline["t_seconds"] == sorted(timeline["t_seconds"])
        assert marks[0]["memfit_allocated_bytes"] == s["fixed_bytes"]


def test_windows_are_contiguous_and_peak_is_the_largest(measured):
    prof = measured[0]
    for s in settings(prof):
        layers = s["layers"]
        windows = ([(f"forward {x['name']}", x["forward"]) for x in layers]
                   + [("loss", s["loss"]), ("loss_backward", s["loss_backward"])]
                   + [(f"backward {x['name']}", x["backward"]) for x in reversed(layers)]
                   + [("optimizer", s["optimizer"])])
        assert windows[0][1]["start"] == s["fixed_bytes"]
        for (name_a, a), (name_b, b) in zip(windows, windows[1:]):
            assert a["end"] == b["start"], f"{name_a} ends at {a['end']}, {name_b} starts at {b['start']}"
        for name, w in windows:
            assert w["peak"] >= max(w["start"], w["end"]), (name, w)
        assert max(w["peak"] for _, w in windows) == s["peak_allocated_bytes"]
        assert s["peak_reserved_bytes"] >= s["peak_allocated_bytes"]
        assert s["peak_allocated_bytes"] >= s["peak_requested_bytes"]


def test_profile_validates_and_round_trips(measured, tmp_path):
    prof = measured[0]
    prof.validate()
    path = tmp_path / "profile.json"
    prof.save(path)
    loaded = Profile.load(path)
    loaded.validate()
    assert loaded.data == json.loads(prof.to_json())
    no_timeline = Profile(json.loads(prof.to_json(timeline=False)))
    no_timeline.validate()  # the timeline is optional


def _broken(prof, edit):
    data = copy.deepcopy(prof.data)
    edit(data)
    return Profile(data)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("rounding_bytes"), "rounding_bytes"),
    (lambda d: d["settings"][0].pop("peak_allocated_bytes"), "peak_allocated_bytes"),
    (lambda d: d["settings"][1]["layers"][2].pop("activation_bytes"), "activation_bytes"),
    (lambda d: d["settings"][0]["totals"].pop("temporary"), "temporary"),
    (lambda d: d["settings"][0]["layers"][0]["forward"].pop("peak"), "peak"),
    (lambda d: d["settings"][0].__setitem__("batch_size", "2"), "batch_size"),
    (lambda d: d["settings"][0]["layers"][1].__setitem__("parameter_bytes", 1.5), "parameter_bytes"),
    (lambda d: d["settings"][0]["loss"].__setitem__("end", None), "loss"),
    (lambda d: d.__setitem__("steps", "3"), "steps"),
    (lambda d: d["settings"][0].__setitem__("precision", "fp8"), "precision"),
], ids=["missing-top", "missing-setting", "missing-layer", "missing-category", "missing-window-key",
        "wrong-type-batch", "wrong-type-layer", "wrong-type-window", "wrong-type-top", "bad-enum"])
def test_broken_profile_is_rejected_naming_the_field(measured, edit, field):
    with pytest.raises(MemfitError, match=field):
        _broken(measured[0], edit).validate()


def test_broken_timeline_mark_is_rejected(measured):
    def edit(d):
        d["settings"][0]["timeline"]["marks"][0]["memfit_allocated_bytes"] = "lots"

    with pytest.raises(MemfitError, match="memfit_allocated_bytes"):
        _broken(measured[0], edit).validate()


def test_bad_arguments_are_rejected(memfit_cpu):
    job = gpt_job(**GPT)
    with pytest.raises(MemfitError, match="batch_sizes"):
        memfit.profile(job, batch_sizes=(0,))
    with pytest.raises(MemfitError, match="precision 'fp8'"):
        memfit.profile(job, precisions=("fp8",))
    with pytest.raises(MemfitError, match="device"):
        memfit.profile(job, device="tpu")
    with pytest.raises(MemfitError, match="warmup_steps"):
        memfit.profile(job, warmup_steps=0)


def test_the_callers_model_comes_back_as_it_was():
    # Profiling runs optimizer steps in training mode: the weights, the buffers and
    # the mode the caller's model had are put back after (nothing lost), and the
    # copies kept meanwhile are not in the profile's memory.
    import torch

    job = gpt_job(depth=2, width=64, vocab=128, context=16)
    torch.nn.init.normal_(job.model.head.weight)  # weights AdamW would move
    job.model.eval()
    before = {k: v.clone() for k, v in job.model.state_dict().items()}
    trained_in = []
    job.model.register_forward_pre_hook(lambda module, args: trained_in.append(module.training))
    prof = memfit.profile(job, batch_sizes=(2,), steps=1, warmup_steps=1, timing_batches=())
    after = job.model.state_dict()
    assert trained_in and all(trained_in), "the profile's steps did not run in training mode"
    assert not job.model.training, "the model's eval mode was not put back"
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"profiling changed the caller's model: {changed[:5]}"
    assert prof.settings[0]["fixed_bytes"] > 0


def test_a_unit_that_returns_its_input_keeps_the_backward_windows_in_order(memfit_cpu):
    # Dropout(p=0) in training and nn.Identity return the tensor they were given
    # (GPT-NeoX's emb_dropout does), so their output's gradient hooks fire
    # together with the unit's before them, in forward order. The backward work
    # belongs to the earlier unit and the windows must chain in reverse forward
    # order; before, the planner rejected such a profile ("backward.start ... is
    # not where the previous window ended").
    import torch.nn as nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Dropout(0.0), nn.Identity(), nn.ReLU(), nn.Linear(64, 8))
    job = memfit.Job(model=model, make_batch=lambda b: torch.randn(b, 16),
                     loss_fn=lambda m, x: m(x).square().mean(),
                     optimizer=lambda p: torch.optim.SGD(p, lr=0.1), blocks=["0", "1", "2", "3", "4"])
    prof = memfit.profile(job, device="cpu", batch_sizes=(2, 4), steps=1, warmup_steps=1, timing_batches=())
    for s in prof.settings:
        layers = s["layers"]
        assert [x["name"] for x in layers] == ["0", "1", "2", "3", "4"]
        chain = [s["loss_backward"]] + [x["backward"] for x in reversed(layers)]
        for a, b in zip(chain, chain[1:]):
            assert a["end"] == b["start"], s["layers"]
        for passthrough in layers[1:3]:
            w = passthrough["backward"]
            assert w["start"] == w["peak"] == w["end"], passthrough
        # The first Linear's weight gradient is made in its own window.
        first = layers[0]["backward"]
        assert first["peak"] - first["start"] >= 16 * 64 * 4, first
    assert memfit.plan(prof, "64MiB").batch_size >= 4
