# test_cost.py — `memfit plan --train-samples N [--tokens-per-sample T] --price P
# [--gpus K]`: the plan's "cost" follows from its own predicted throughput exactly
# (seconds = N / (K * throughput), usd = seconds / 3600 * K * P), on the sample
# profile (no model run); bad inputs exit 2 with one line.
from __future__ import annotations

import json

import pytest

from conftest import REPO, describe, error_lines, run_python

pytestmark = pytest.mark.needs_lib
SAMPLE_PROFILE = REPO / "planner" / "examples" / "sample_profile.json"
PLAN = ["plan", "--profile", str(SAMPLE_PROFILE), "--budget", "40GiB", "-q"]


def _plan(capsys, *extra):
    from memfit import cli

    assert cli.main([*PLAN, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("gpus", [1, 8])
def test_cost_follows_from_the_plans_throughput(capsys, gpus):
    plan = _plan(capsys, "--train-samples", "1000000", "--tokens-per-sample", "2048", "--price", "2.5",
                 "--gpus", str(gpus))
    per_gpu = plan["throughput_samples_per_second"]
    assert per_gpu == pytest.approx(plan["batch_size"] / plan["predicted_step_seconds"], rel=1e-12)
    cost = plan["cost"]
    assert cost["samples"] == 1000000 and cost["tokens"] == 1000000 * 2048 and cost["gpus"] == gpus
    assert cost["samples_per_second"] == per_gpu * gpus
    assert cost["seconds"] == 1000000 / (per_gpu * gpus)
    assert cost["gpu_hours"] == pytest.approx(cost["seconds"] / 3600 * gpus, rel=1e-15)
    assert cost["usd"] == pytest.approx(cost["seconds"] / 3600 * gpus * 2.5, rel=1e-15)
    # Ideal data-parallel scaling: more GPUs take less time for the same money.
    assert cost["usd"] == pytest.approx(1000000 / per_gpu / 3600 * 2.5, rel=1e-12)


def test_cost_in_the_table_and_without_a_price(capsys):
    from memfit import cli

    assert cli.main([*PLAN, "--train-samples", "1000000", "--price", "2.5"]) == 0
    table = capsys.readouterr().out
    plan = _plan(capsys, "--train-samples", "1000000", "--price", "2.5")
    assert f"cost of 1000000 samples: {plan['cost']['seconds'] / 3600:.3g} h" in table, table
    assert f"= {plan['cost']['usd']:.2f} USD" in table, table
    plan = _plan(capsys, "--train-samples", "5000")
    assert plan["cost"]["usd"] is None and plan["cost"]["seconds"] == pytest.approx(
        5000 / plan["throughput_samples_per_second"])
    assert "tokens" not in plan["cost"]
    assert "cost" not in _plan(capsys)  # only when asked


BAD = {
    "negative-price": (["--train-samples", "100", "--price", "-1"], ["--price", "'-1'", ">= 0"]),
    "nan-price": (["--train-samples", "100", "--price", "nan"], ["--price", "'nan'"]),
    "zero-samples": (["--train-samples", "0", "--price", "2"], ["--train-samples", "'0'", ">= 1"]),
    "zero-gpus": (["--train-samples", "10", "--gpus", "0"], ["--gpus", "'0'", ">= 1"]),
    "zero-tokens": (["--train-samples", "10", "--tokens-per-sample", "0"], ["--tokens-per-sample", ">= 1"]),
    "price-without-samples": (["--price", "2"], ["--price needs --train-samples"]),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_exits_2_with_one_line(name, capsys):
    from memfit import cli

    argv, wanted = BAD[name]
    try:
        rc = cli.main([*PLAN, *argv])
    except SystemExit as e:  # argparse
        rc = e.code
    assert rc == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    for text in wanted:
        assert text in lines[0], (text, lines[0])


def test_bad_input_through_the_module():
    """The exit code through `python3 -m memfit`, as a user sees it."""
    result = run_python(["-m", "memfit", *PLAN, "--train-samples", "0"])
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr and len(error_lines(result.stderr)) == 1, describe(result)
