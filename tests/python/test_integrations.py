"""memfit.integrations: the Hugging Face Trainer (fit_trainer + MemfitCallback)
and Lightning (MemfitBatchSizeFinder) fitted to a budget on CPU.

Each training scenario runs in its own process (memfit becomes the process's
CPU allocator, with the budget as its capacity): the fit profiles two small
batches, sets a batch above them with some blocks checkpointed, leaves the
model's values, gradients, modes, hooks and the RNG as they were and nothing
but the model's state in memfit, and the framework then trains 2 steps at the
plan's batch without running out of memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import describe, run_python

from memfit._lib import MemfitError

CHECKS = r'''
import json, sys
import torch
import memfit

torch.set_num_threads(1)  # tiny models: two threads only contend on a busy machine


def state_checks(model, before, was_training, rng, budget):
    """What the fit left behind, as the test asserts it."""
    alloc = memfit.current()
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}.values()
    return {
        "unchanged": sorted(k for k, v in model.state_dict().items() if not torch.equal(before[k], v)) == [],
        "grads": sum(p.grad is not None for p in model.parameters()),
        "modes_kept": [m.training for m in model.modules()] == was_training,
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     + len(m._backward_pre_hooks) for m in model.modules()),
        "grad_hooks": sum(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in model.parameters()),
        "rng_kept": torch.equal(rng, torch.get_rng_state()),
        "in_memfit": all(alloc.block_info(t.untyped_storage().data_ptr()) is not None for t in tensors),
        "allocated": alloc.allocated(),
        "state_bytes": sum(t.untyped_storage().nbytes() for t in tensors),
        "capacity": alloc.capacity(),
        "budget": budget,
    }
'''

HF_CHILD = CHECKS + r'''
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from memfit.integrations.transformers import MemfitCallback, fit_trainer

out_dir, budget = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
VOCAB, SEQ = 512, 32
config = GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=VOCAB - 1,
                    eos_token_id=VOCAB - 1, use_cache=False, attn_implementation="sdpa")
model = GPT2LMHeadModel(config)
ids = torch.randint(0, VOCAB, (256, SEQ), generator=torch.Generator().manual_seed(0)).tolist()
dataset = [{"input_ids": x, "labels": x} for x in ids]
sizes = []


def collate(features):
    sizes.append(len(features))
    return {k: torch.tensor([f[k] for f in features]) for k in features[0]}


args = TrainingArguments(output_dir=out_dir, max_steps=2, report_to=[], use_cpu=True, save_strategy="no",
                         per_device_train_batch_size=1, logging_strategy="no", disable_tqdm=True, seed=0)
callback = MemfitCallback(budget=budget, batch_sizes=(2, 4), steps=1, warmup_steps=1, enforce=True)
trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[callback])
before = {k: v.clone() for k, v in model.state_dict().items()}
was_training = [m.training for m in model.modules()]
rng = torch.get_rng_state()
plan = fit_trainer(trainer)  # the callback's budget and settings
result = state_checks(model, before, was_training, rng, callback.budget_bytes)
result.update(
    plan_batch=plan.batch_size, profiled=[s["batch_size"] for s in callback.profile.settings],
    checkpointed=[layer["name"] for layer in plan.layers if layer["checkpoint"]],
    wrapped=sorted(n for n, m in model.named_modules() if hasattr(m, "_memfit_forward")),
    per_device=args.per_device_train_batch_size, train_batch=trainer._train_batch_size,
    same_plan=callback.plan is plan,
)
sizes.clear()
trainer.train()
result.update(global_step=trainer.state.global_step, train_sizes=sizes, measured=callback.measured)
print(json.dumps(result))
'''

LIGHTNING_CHILD = CHECKS + r'''
import torch.nn as nn
import torch.nn.functional as F
import lightning.pytorch as pl
from torch.utils.data import DataLoader, TensorDataset
from memfit.integrations.lightning import MemfitBatchSizeFinder

budget = sys.argv[2]
D, T, CLASSES = 64, 32, 16


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(D), nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

    def forward(self, x):
        return x + self.down(F.gelu(self.up(self.norm(x))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(D, D)
        self.blocks = nn.ModuleList(Block() for _ in range(4))
        self.head = nn.Linear(D, CLASSES)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = Net()
        self.batch_size = 2
        g = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(512, T, D, generator=g), torch.randint(0, CLASSES, (512, T), generator=g))

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x).reshape(-1, CLASSES), y.reshape(-1))
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class Probe(pl.Callback):
    """Runs after the finder: what the fit left, and the batches trained on."""

    def __init__(self):
        self.result, self.sizes = {}, []

    def setup(self, trainer, module, stage=None):
        self.before = {k: v.clone() for k, v in module.state_dict().items()}

    def on_fit_start(self, trainer, module):
        self.was_training = [m.training for m in module.modules()]  # as the fit loop left them
        self.result = state_checks(module, self.before, self.was_training, self.rng, finder.budget_bytes)
        self.result.update(batch_size=module.batch_size)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.sizes.append(int(batch[0].shape[0]))


torch.manual_seed(0)
module = Module()
finder = MemfitBatchSizeFinder(budget=budget, batch_sizes=(2, 4), steps=1, warmup_steps=1, enforce=True)
probe = Probe()


class RngProbe(pl.Callback):  # before the finder: the RNG state it must keep
    def on_fit_start(self, trainer, module):
        probe.rng = torch.get_rng_state()
        probe.modes = [m.training for m in module.modules()]


trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=[RngProbe(), finder, probe])
trainer.fit(module)
result = dict(probe.result)
plan = finder.plan
result.update(
    modes_kept=probe.modes == probe.was_training,
    plan_batch=plan.batch_size, optimal=finder.optimal_batch_size,
    profiled=[s["batch_size"] for s in finder.profile.settings],
    checkpointed=[layer["name"] for layer in plan.layers if layer["checkpoint"]],
    wrapped=sorted(n for n, m in module.named_modules() if hasattr(m, "_memfit_forward")),
    global_step=trainer.global_step, train_sizes=probe.sizes, measured=finder.measured,
)
print(json.dumps(result))
'''


def _run(tmp_path: Path, script: str, budget: str) -> dict:
    path = tmp_path / "child.py"
    path.write_text(script)
    done = run_python([str(path), str(tmp_path / "out"), budget], timeout=300)
    assert done.returncode == 0, describe(done)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_fitted(r: dict) -> None:
    # The plan: a batch above the profiled ones, reached by checkpointing blocks.
    assert r["profiled"] == [2, 4]
    assert r["plan_batch"] > 4, r
    assert r["checkpointed"], r
    assert set(r["checkpointed"]) <= set(r["wrapped"]), r
    # Left as it was: values, gradients, modes, hooks, RNG; in memfit, only the model's state.
    assert r["unchanged"] and r["grads"] == 0 and r["modes_kept"], r
    assert r["hooks"] == 0 and r["grad_hooks"] == 0, r
    assert r["rng_kept"], r
    assert r["in_memfit"], r
    assert r["state_bytes"] <= r["allocated"] <= r["state_bytes"] * 1.05 + 256 * 1024, r
    assert r["capacity"] == r["budget"], r
    # Trained at the plan's batch, within the budget.
    assert r["global_step"] == 2, r
    assert len(r["train_sizes"]) >= 2 and set(r["train_sizes"]) == {r["plan_batch"]}, r
    assert r["measured"]["peak_reserved_bytes"] <= r["budget"], r


@pytest.mark.needs_adapter
def test_hf_trainer_is_fitted_to_the_budget(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    r = _run(tmp_path, HF_CHILD, "14MiB")
    _assert_fitted(r)
    assert r["per_device"] == r["plan_batch"] == r["train_batch"] and r["same_plan"], r
    assert any(name.startswith("transformer.h.") for name in r["checkpointed"]), r


@pytest.mark.needs_adapter
def test_lightning_finder_sets_the_batch_size(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    r = _run(tmp_path, LIGHTNING_CHILD, "6MiB")
    _assert_fitted(r)
    assert r["batch_size"] == r["optimal"] == r["plan_batch"], r
    assert any(name.startswith("net.blocks.") for name in r["checkpointed"]), r  # relative to the LightningModule


@pytest.mark.needs_lib
def test_a_bad_budget_is_named() -> None:
    pytest.importorskip("transformers")
    from memfit.integrations.transformers import MemfitCallback, fit_trainer

    with pytest.raises(MemfitError, match="budget '12 parsecs'"):
        MemfitCallback(budget="12 parsecs")
    with pytest.raises(MemfitError, match="budget '12 parsecs'"):
        fit_trainer(object(), budget="12 parsecs")  # refused before the trainer is looked at
    with pytest.raises(MemfitError, match="more than 0 bytes"):
        MemfitCallback(budget=0)
    with pytest.raises(MemfitError, match="global_batch"):
        MemfitCallback(budget="1GiB", objective="global-batch")
    pytest.importorskip("lightning")
    from memfit.integrations.lightning import MemfitBatchSizeFinder

    with pytest.raises(MemfitError, match="budget '12 parsecs'"):
        MemfitBatchSizeFinder(budget="12 parsecs")
    with pytest.raises(MemfitError, match="fp16"):
        MemfitBatchSizeFinder(budget="1GiB", precisions=("fp32", "fp16"))


def test_importable_without_the_frameworks() -> None:
    """Importing either module imports neither framework nor torch; using one
    whose framework is missing says what to install."""
    code = (
        "import sys\n"
        "for name in ('transformers', 'lightning', 'lightning.pytorch', 'pytorch_lightning'):\n"
        "    sys.modules[name] = None  # an import of it fails\n"
        "import memfit.integrations.transformers as t, memfit.integrations.lightning as l\n"
        "from memfit import MemfitError\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
        "for module, name in ((t, 'MemfitCallback'), (l, 'MemfitBatchSizeFinder')):\n"
        "    try:\n"
        "        getattr(module, name)\n"
        "    except MemfitError as e:\n"
        "        print(e)\n"
    )
    done = run_python(["-c", code], timeout=60)
    assert done.returncode == 0, describe(done)
    assert "torch imported: False" in done.stdout
    assert "pip install transformers" in done.stdout and "pip install lightning" in done.stdout, done.stdout
