"""What a checkpointed layer's recomputation must not change (memfit.recompute):
BatchNorm's running statistics stay as one forward left them (after a plan is
applied, training steps give the same buffers and gradients as the model without
it, plainly and selectively checkpointed, in fp32 and bf16), and a transformers
key/value cache is neither kept by the model's config nor handed to a checkpointed
layer."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from memfit.planning import Plan, apply  # noqa: E402
from memfit.recompute import context_fn  # noqa: E402


def _block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.InstanceNorm2d(cout, track_running_stats=True))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(_block(3, 8), _block(8, 8), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))


def _train(model: nn.Module, steps: int = 2) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        model(torch.randn(4, 3, 8, 8, generator=g)).square().mean().backward()


def _buffers(model: nn.Module):
    return {k: v.clone() for k, v in model.named_buffers()}


@pytest.mark.parametrize("selective", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_running_statistics_and_gradients_are_those_of_the_model_without_the_plan(selective: bool,
                                                                                   precision: str) -> None:
    planned, reference = _model(), _model()
    layers = [{"name": name, "checkpoint": name in ("0", "1"), "selective": selective and name in ("0", "1"),
               "precision": precision} for name in ("0", "1", "3")]
    apply(planned, Plan({"batch_size": 4, "layers": layers}))
    if precision == "bf16":  # the reference runs the same casts, without checkpointing
        apply(reference, Plan({"batch_size": 4, "layers": [dict(layer, checkpoint=False, selective=False)
                                                            for layer in layers]}))
    _train(planned)
    _train(reference)
    got, want = _buffers(planned), _buffers(reference)
    assert got["0.1.num_batches_tracked"].item() == 2  # one count per step, not two
    for name in want:
        assert torch.equal(got[name], want[name]), name
    for (name, p), (_, q) in zip(planned.named_parameters(), reference.named_parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_without_the_guard_the_recomputation_counts_each_batch_twice() -> None:
    """What the guard is for: torch.utils.checkpoint alone updates the statistics again."""
    model = _model()
    inner = model[0]
    model[0] = type("Checkpointed", (nn.Module,), {
        "forward": lambda self, x: torch.utils.checkpoint.checkpoint(inner, x, use_reentrant=False)})()
    model[0].add_module("inner", inner)
    _train(model)
    assert inner[1].num_batches_tracked.item() == 4


def test_a_layer_without_running_statistics_keeps_checkpoints_default_contexts() -> None:
    inner = object()
    assert context_fn(nn.Linear(2, 2)) is None
    assert context_fn(nn.BatchNorm1d(2, track_running_stats=False)) is None
    assert context_fn(nn.Sequential(nn.Linear(2, 2)), inner) is inner
    assert context_fn(nn.BatchNorm1d(2)) is not None


@pytest.mark.parametrize("selective", [False, True])
def test_a_checkpointed_transformers_layer_runs_without_the_key_value_cache(selective: bool) -> None:
    """GPT-2 from config keeps use_cache=True: apply turns it off, and a cache the
    caller asks for anyway (handed to each block positionally), which the
    recomputation would append to again, is not given to a checkpointed block;
    selectively checkpointed, backward stopped with "not found in storage"."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                  bos_token_id=63, eos_token_id=63)
    assert cfg.use_cache
    planned = transformers.GPT2LMHeadModel(cfg)
    reference = copy.deepcopy(planned)
    layers = [{"name": f"transformer.h.{i}", "checkpoint": True, "selective": selective, "precision": "fp32"}
              for i in range(2)]
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="config.use_cache was on; it is now off"):
        apply(planned, Plan({"batch_size": 2, "layers": layers}))
    assert not planned.config.use_cache
    # A caller may still ask for the cache: the checkpointed blocks run without it.
    with pytest.warns(UserWarning, match="checkpointed GPT2Block was given a key/value cache"):
        for model in (planned, reference):
            torch.manual_seed(1)  # the same dropout masks
            model.train()
            model(input_ids=ids, labels=ids, use_cache=True).loss.backward()
    for (name, p), (_, q) in zip(planned.named_parameters(), reference.named_parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_profile_measures_the_model_without_its_cache_and_gives_the_config_back(memfit_cpu) -> None:
    """The kept layers would fill the cache and the loss window free it, a free the
    model took for plans whose checkpointed layers never filled it (a Mixtral plan
    ran out of memory): profile runs with use_cache off, as apply does."""
    transformers = pytest.importorskip("transformers")
    import memfit

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                  bos_token_id=63, eos_token_id=63)
    model = transformers.GPT2LMHeadModel(cfg)
    seen = []
    job = memfit.Job(model=model, make_batch=lambda b: torch.randint(0, 64, (b, 16)),
                     loss_fn=lambda m, ids: seen.append(m.config.use_cache) or m(input_ids=ids, labels=ids).loss,
                     optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    lines = []
    memfit.profile(job, batch_sizes=(1, 2), steps=1, warmup_steps=1, timing_batches=(), progress=lines.append)
    assert seen and not any(seen)
    assert model.config.use_cache is True
    assert any("use_cache is off while profiling" in line for line in lines)
