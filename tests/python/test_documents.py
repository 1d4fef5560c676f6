# test_documents.py — the profile and plan documents need no torch: `memfit report`,
# `memfit plan --profile` and memfit.Profile / memfit.plan / memfit.Plan run in a
# process where importing torch fails (a machine that plans from profiles measured
# elsewhere, a CI job that only reads them).
from __future__ import annotations

import json
import textwrap

from conftest import REPO, describe, python_env, run_python

SAMPLE = REPO / "planner" / "examples" / "sample_profile.json"

# Any `import torch` in the child raises, so a module that needs it fails loudly.
_NO_TORCH = textwrap.dedent("""
    import sys, importlib.abc
    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is not installed here (blocked by the test)")
            return None
    sys.meta_path.insert(0, NoTorch())
""")


def _run(code: str, tmp_path):
    return run_python(["-c", _NO_TORCH + textwrap.dedent(code)], env=python_env(), cwd=tmp_path)


def test_report_and_plan_from_a_profile_without_torch(tmp_path):
    code = f"""
        from memfit.cli import main
        rc1 = main(["report", {str(SAMPLE)!r}])
        rc2 = main(["plan", "--profile", {str(SAMPLE)!r}, "--budget", "16GiB", "--json", "--quiet",
                    "--out", "plan.json"])
        print("RC", rc1, rc2, "torch" in sys.modules)
    """
    result = _run(code, tmp_path)
    assert result.returncode == 0, describe(result)
    assert "RC 0 0 False" in result.stdout, describe(result)
    assert "peak by category" in result.stdout, describe(result)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["format"] == "memfit-plan" and plan["batch_size"] >= 1


def test_the_python_api_for_documents_without_torch(tmp_path):
    code = f"""
        import memfit
        profile = memfit.Profile.load({str(SAMPLE)!r})
        plan = memfit.plan(profile, "16GiB")
        plan.save("p.json")
        again = memfit.Plan.load("p.json")
        print("BATCH", plan.batch_size, again.batch_size, "predicted peak" in again.table(), "torch" in sys.modules)
    """
    result = _run(code, tmp_path)
    assert result.returncode == 0, describe(result)
    line = next(x for x in result.stdout.splitlines() if x.startswith("BATCH"))
    _, batch, again, has_table, torch_loaded = line.split()
    assert int(batch) >= 1 and batch == again and has_table == "True" and torch_loaded == "False", describe(result)


def test_what_needs_torch_still_says_so(tmp_path):
    # apply/verify need torch: importing them fails with torch's ImportError, not a memfit bug.
    result = _run("import memfit\ntry:\n    memfit.apply\nexcept ImportError as e:\n    print('NEEDS', e)\n", tmp_path)
    assert result.returncode == 0 and "NEEDS torch is not installed here" in result.stdout, describe(result)
