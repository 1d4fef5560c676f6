# test_chinchilla.py — `memfit chinchilla`: the compute-optimal N and D under
# C = 6 N D for the Besiroglu et al. (2024) refit of Hoffmann et al. (2022)'s
# Approach 3, at the Chinchilla budget; the --usd route; bad input exits 2. No torch.
from __future__ import annotations

import json

import pytest

from conftest import describe, error_lines, run_python

from memfit import chinchilla

# Chinchilla itself: 70B parameters on 1.4T tokens.
C_CHINCHILLA = 6 * 70e9 * 1.4e12  # 5.88e23 FLOPs


def test_the_chinchilla_budget():
    r = chinchilla.optimal(C_CHINCHILLA)
    # Hoffmann et al. 2022 put the optimum at about this compute (Gopher's, 5.76e23) at
    # 67B (Approach 1), 63B (Approach 2) and 40B (Approach 3) parameters. The bounds take
    # that spread with room on each side: below Approach 3's 40B by a quarter, above
    # Approach 1's 67B by two thirds (the refit lands near 70B: 73B here).
    assert 30e9 <= r["params"] <= 110e9, r
    assert 0.8e12 <= r["tokens"] <= 2.5e12, r  # Approach 1-2's 1.4-1.5T, Approach 3's larger D
    assert 6 * r["params"] * r["tokens"] == pytest.approx(C_CHINCHILLA, rel=1e-9)
    assert r["tokens_per_param"] == pytest.approx(r["tokens"] / r["params"])
    assert 15 <= r["tokens_per_param"] <= 30  # the replication's finding: about 20
    assert r["constants"] == {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
    assert r["loss"] == pytest.approx(chinchilla.loss(r["params"], r["tokens"]))


@pytest.mark.parametrize("fit", sorted(chinchilla.FITS))
def test_the_optimum_is_a_minimum_on_the_budget(fit):
    r = chinchilla.optimal(1e21, fit)
    for k in (0.8, 0.95, 1.05, 1.25):  # other splits of the same compute lose
        n = r["params"] * k
        assert chinchilla.loss(n, 1e21 / (6 * n), fit) > r["loss"]
    # N grows as C^(beta / (alpha + beta)).
    f = chinchilla.FITS[fit]
    bigger = chinchilla.optimal(1e22, fit)
    assert bigger["params"] / r["params"] == pytest.approx(10 ** (f["beta"] / (f["alpha"] + f["beta"])), rel=1e-12)


def test_cli_json_and_the_usd_route():
    result = run_python(["-m", "memfit", "chinchilla", "--flops", "5.88e23", "--json"])
    assert result.returncode == 0, describe(result)
    r = json.loads(result.stdout)
    for key in ("params", "tokens", "tokens_per_param", "loss", "fit", "constants"):
        assert key in r, key
    assert r["params"] == pytest.approx(chinchilla.optimal(5.88e23)["params"], rel=1e-12)

    from memfit import cli

    # 1e6 USD at 2 USD per GPU-hour = 5e5 GPU-hours, at 989 TFLOP/s and 40% MFU.
    out = _main(cli, ["chinchilla", "--usd", "1e6", "--price", "2", "--gpu-tflops", "989", "--mfu", "0.4", "--json"])
    assert out[0] == 0
    r = json.loads(out[1])
    assert r["flops"] == pytest.approx(1e6 / 2 * 3600 * 989e12 * 0.4, rel=1e-12)
    assert 6 * r["params"] * r["tokens"] == pytest.approx(r["flops"], rel=1e-9)
    assert r["budget"]["gpu_hours"] == 5e5


def _main(cli, argv):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv,wanted", [
    (["--flops=-5.88e23"], "--flops '-5.88e23': expected a finite number > 0"),
    (["--flops", "0"], "> 0"),
    (["--flops", "inf"], "finite"),
    ([], "give --flops"),
    (["--usd", "100", "--price", "2"], "missing --gpu-tflops"),
    (["--usd", "100", "--price", "2", "--gpu-tflops", "989", "--mfu", "1.5"], "--mfu"),
    (["--flops", "1e21", "--usd", "5"], "not both"),
])
def test_bad_input_exits_2_with_one_line(argv, wanted):
    from memfit import cli

    rc, _, err = _main(cli, ["chinchilla", *argv])
    assert rc == 2
    lines = error_lines(err)
    assert len(lines) == 1 and wanted in lines[0], lines


def test_negative_flops_through_the_module():
    result = run_python(["-m", "memfit", "chinchilla", "--flops=-1e23"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, describe(result)
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "'-1e23'" in lines[0] and "> 0" in lines[0], describe(result)
