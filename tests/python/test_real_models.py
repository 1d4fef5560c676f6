"""Models as people write them, from the transformers library (built from config,
nothing downloaded; Mixtral with its config's use_cache left on), and a U-Net, a
ViT and a ResNet in plain torch: the units memfit finds in them, and plans that
run. Each model is profiled, planned for a budget that needs checkpointing,
verified at the planned batch (no OOM, peak within 5% of the prediction, and not
above it beyond rounding) and at 1.05x that batch with the same plan (out of
memory: the plan is not loose), each command in its own process as a user runs
them. The jobs are in jobs/real_models.py."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from conftest import run_memfit

pytest.importorskip("transformers")

JOBS = Path(__file__).resolve().parent / "jobs" / "real_models.py"
sys.path.insert(0, str(JOBS.parent))

import real_models  # noqa: E402

from memfit._lib import MemfitError  # noqa: E402
from memfit.blocks import describe, find_units  # noqa: E402


def units(name: str, blocks=None):
    return [path for path, _ in find_units(getattr(real_models, name)().model, blocks)]


@pytest.mark.parametrize("name,blocks", [
    ("gpt2", [f"transformer.h.{i}" for i in range(4)]),
    ("llama", [f"model.layers.{i}" for i in range(4)]),
    ("mixtral", [f"model.layers.{i}" for i in range(4)]),
    ("neox", [f"gpt_neox.layers.{i}" for i in range(4)]),
    ("bert", [f"bert.encoder.layer.{i}" for i in range(4)]),
    ("t5", [f"encoder.block.{i}" for i in range(3)] + [f"decoder.block.{i}" for i in range(3)]),
    ("unet", [f"down.{i}" for i in range(3)] + [f"up.{i}" for i in range(3)]),
    ("vit", [f"blocks.{i}" for i in range(6)]),
    ("resnet", [f"layer{s}.{i}" for s in (1, 2, 3) for i in (0, 1)]),
])
def test_repeated_blocks_are_units_wherever_they_sit(name: str, blocks) -> None:
    found = units(name)
    assert set(blocks) <= set(found), describe(find_units(getattr(real_models, name)().model))
    # The rest is grouped around them: nothing inside a block is a unit, and no
    # unit contains a block.
    for u in found:
        for b in blocks:
            assert not u.startswith(b + ".") and not b.startswith(u + "."), (u, b)
    assert len(found) == len(set(found))


def test_the_rest_of_a_causal_lm_is_its_own_units() -> None:
    assert units("gpt2") == ["transformer.wte", "transformer.wpe", "transformer.drop",
                             *[f"transformer.h.{i}" for i in range(4)], "transformer.ln_f", "lm_head"]
    assert units("llama")[0] == "model.embed_tokens" and units("llama")[-1] == "lm_head"


def test_blocks_can_be_given_as_a_pattern_or_paths() -> None:
    finer = units("gpt2", r"transformer\.h\.\d+\.mlp")
    assert "transformer.h.2.mlp" in finer and "transformer.h.2.attn" in finer
    assert "transformer.h.2" not in finer
    assert units("gpt2", ["transformer.h.0"])[:4] == ["transformer.wte", "transformer.wpe", "transformer.drop",
                                                      "transformer.h.0"]
    with pytest.raises(MemfitError, match="matches no module"):
        units("gpt2", r"decoder\.\d+")
    with pytest.raises(MemfitError, match="not a regular expression"):
        units("gpt2", "transformer.h.(")
    with pytest.raises(MemfitError, match="blocks must be"):
        units("gpt2", 7)


def _verify(job: str, plan_path: Path, budget: str) -> dict:
    done = run_memfit("verify", "--job", job, "--plan", str(plan_path), "--budget", budget, "--json",
                      "--steps", "1", "--warmup-steps", "1")
    assert done.returncode in (0, 1), done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == (1 if result["oom"] else 0)  # verify's exit status says whether it ran out
    return result


# (job, budget, precisions). Budgets need checkpointing to beat the
# no-checkpoint batch and keep a step at the planned batch within seconds.
CASES = [
    ("gpt2", "14MiB", "fp32"),
    ("llama", "12MiB", "fp32"),
    ("bert", "12MiB", "fp32"),
    ("t5", "14MiB", "fp32"),
    ("neox", "12MiB", "fp32"),  # emb_dropout returns its input: the planner rejected its profile
    ("unet", "12MiB", "fp32"),
    ("gpt2", "14MiB", "fp32,bf16"),
    ("bert", "12MiB", "fp32,bf16"),
    ("unet", "12MiB", "fp32,bf16"),
    ("vit", "40MiB", "fp32,bf16"),
    ("resnet", "40MiB", "fp32"),
    ("mixtral", "40MiB", "fp32,bf16"),  # its config keeps use_cache on: memfit.recompute
]


@pytest.mark.parametrize("name,budget,precisions", CASES, ids=[f"{c[0]}-{c[2].replace(',', '-')}" for c in CASES])
def test_plan_runs_within_budget_and_is_tight(tmp_path: Path, name: str, budget: str, precisions: str) -> None:
    from test_plan_e2e import pin_times

    job = f"{JOBS}:{name}"
    profile_path, plan_path = tmp_path / "profile.json", tmp_path / "plan.json"
    # The timing ladder reaches past the planned batches: its peaks are the ladder
    # check's (planner/PLAN.md), which bf16 plans need (BERT and U-Net ran out of
    # memory without it), at doublings as the default ladder's, since between two points the
    # check holds the larger error (with points at 16 and 64 only, GPT-2 in bf16 at 14 MiB was
    # planned at batch 40 and measured 1.84% above its prediction); its times are pinned below.
    done = run_memfit("profile", "--job", job, "--batch-sizes", "2,4", "--precisions", precisions, "--steps", "2",
                      "--warmup-steps", "1", "--timing-batches", "16,32,64", "--out", str(profile_path), "--quiet")
    assert done.returncode == 0, done.stderr
    profile = json.loads(profile_path.read_text())
    for setting in profile["settings"]:
        assert "checkpointed" in setting
    pin_times(profile_path)  # what is checked is memory; noisy times would change the plan from run to run
    done = run_memfit("plan", "--profile", str(profile_path), "--budget", budget, "--out", str(plan_path))
    assert done.returncode == 0, done.stderr
    plan = json.loads(plan_path.read_text())
    assert any(layer["checkpoint"] for layer in plan["layers"]), "the budget should need checkpointing"
    assert plan["batch_size"] > plan["baselines"]["no_checkpoint"]["batch_size"]
    # The model reproduces both profiled runs of every setting.
    for check in plan["self_check"]:
        assert check["error"] < 0.005, check

    result = _verify(job, plan_path, budget)
    assert result["oom"] is False, result
    measured, predicted = result["measured_peak_bytes"], result["predicted_peak_bytes"]
    assert abs(measured - predicted) <= 0.05 * predicted, (measured, predicted)
    # Above its prediction only by rounding: the headroom is not the model's margin. (Mixtral
    # with the cache its config keeps on: +1.03%, the loss window freeing a cache that the
    # checkpointed layers never filled: memfit.recompute.)
    assert measured <= predicted * 1.002, (measured, predicted)
    assert result["measured_peak_reserved_bytes"] <= plan["budget_bytes"]

    # Tight: the same plan at 1.05x its batch does not fit. With bf16 the model
    # over-predicts GPT-2 at 14 MiB: batch 40, by 4.35% (2026-12-03), the same with
    # every layer in bf16, so not the casts between precisions: the line through the
    # every-layer-checkpointed bf16 runs at 2 and 4 is 788,480 bytes (3.8%) above the
    # measured step at 64 (its ladder check), and the planner credits no
    # over-prediction (planner/PLAN.md, "The ladder check"); so 1.10x there.
    factor = 1.10 if "," in precisions else 1.05
    bigger = dict(plan, batch_size=math.ceil(plan["batch_size"] * factor))
    bigger_path = tmp_path / "bigger.json"
    bigger_path.write_text(json.dumps(bigger))
    assert _verify(job, bigger_path, budget)["oom"] is True, \
        f"the same plan at {factor}x its batch fits: the plan is loose"


def test_a_module_run_twice_per_step_is_not_a_layer(tmp_path: Path) -> None:
    """T5's stacks apply one dropout module after the embedding and again after
    the final norm: it is listed as not planned, with the reason."""
    out = tmp_path / "t5.json"
    done = run_memfit("profile", "--job", f"{JOBS}:t5", "--batch-sizes", "1,2", "--steps", "1", "--warmup-steps", "1",
                      "--timing-batches", "none", "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    profile = json.loads(out.read_text())
    not_planned = {u["name"]: u["reason"] for u in profile["units_not_planned"]}
    assert not_planned.get("encoder.dropout") == "its forward runs 2 times per step", not_planned
    assert "encoder.dropout" not in [layer["name"] for layer in profile["settings"][0]["layers"]]
    shown = run_memfit("report", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "encoder.dropout (Dropout): its forward runs 2 times per step" in shown.stdout

