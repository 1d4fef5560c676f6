# test_cli.py — `python3 -m memfit profile|report` in child processes: a job
# file written here profiles and validates; bad input exits 2 with one clear
# line (argparse's usage block aside) and no traceback; `report --plot` writes
# a PNG. The children of the first round run concurrently.
from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, adapter_problem, describe, error_lines, finish_python, start_python

pytest.importorskip("torch")
pytestmark = pytest.mark.needs_adapter  # profiling on CPU installs memfit as PyTorch's CPU allocator

from memfit.profiling import Profile  # noqa: E402

JOBS = Path(__file__).resolve().parent / "jobs"
# The tiny MLP job, plus names that are not jobs, for the error cases.
JOB_FILE = (JOBS / "tiny_mlp.py").read_text() + textwrap.dedent('''

    def other():
        return 42

    not_a_function = 3
''')


def _cases(d):
    """name: (argv, the texts the single error line must hold; None: success). Each
    failing case has its own --out, which must not appear."""
    job = str(d / "job.py")

    def profile(name, *args):
        return ["profile", *args, "--out", str(d / f"{name}.out.json")]

    return {
        "ok": (["profile", "--job", f"{job}:make", "--batch-sizes", "2,4", "--steps", "1",
                "--out", str(d / "profile.json")], None),
        "no-colon": (profile("no-colon", "--job", job), ["--job", "expected FILE.py:FUNC"]),
        "missing-file": (profile("missing-file", "--job", f"{d}/nowhere.py:make"), ["no such file", "nowhere.py"]),
        "missing-function": (profile("missing-function", "--job", f"{job}:nothere"), ["has no function 'nothere'"]),
        "not-callable": (profile("not-callable", "--job", f"{job}:not_a_function"), ["not_a_function", "callable"]),
        "not-a-job": (profile("not-a-job", "--job", f"{job}:other"), ["other() returned int", "memfit.Job"]),
        "missing-module": (profile("missing-module", "--job", "no_such_module_xyz:make"),
                           ["cannot import module 'no_such_module_xyz'"]),
        "bad-capacity": (profile("bad-capacity", "--job", f"{job}:make", "--capacity", "12 parsecs"),
                         ["--capacity", "12 parsecs", "unknown unit"]),
        "bad-batch-sizes": (profile("bad-batch-sizes", "--job", f"{job}:make", "--batch-sizes", "2,x"),
                            ["--batch-sizes", "'2,x'", "integers"]),
        "zero-batch-size": (profile("zero-batch-size", "--job", f"{job}:make", "--batch-sizes", "4,0"),
                            ["--batch-sizes", "'4,0'", "positive"]),
        "bad-precision": (profile("bad-precision", "--job", f"{job}:make", "--precisions", "fp8"),
                          ["--precisions", "fp8"]),
        "report-missing": (["report", str(d / "nowhere.json")], ["cannot read profile", "nowhere.json"]),
        "report-not-a-profile": (["report", str(d / "other.json")], ["is not a memfit profile"]),
        "out-dir-missing": (["profile", "--job", f"{job}:make", "--batch-sizes", "2", "--steps", "1",
                             "--out", str(d / "no" / "such" / "dir.json"), "--quiet"], ["dir.json"]),
        # Profiles and plans that are wrong in their values: the planner's parser names the path,
        # for report as for plan (report used to raise a TypeError, or accept what plan rejects).
        "report-batch-as-string": (["report", str(d / "batch_str.json")], ["settings[0].batch_size", "integer"]),
        "report-settings-not-a-list": (["report", str(d / "settings_str.json")], ["settings", "expected a list"]),
        "plan-settings-not-a-list": (["plan", "--job", f"{job}:make", "--profile", str(d / "settings_str.json"),
                                      "--budget", "1GiB"], ["settings", "expected a list"]),
        "report-no-layers": (["report", str(d / "no_layers.json")], ["layers", "empty"]),
        "report-plot-into-a-directory": (["report", str(d / "sample.json"), "--plot", str(d)], ["is a directory"]),
        "report-plot-missing-directory": (["report", str(d / "sample.json"), "--plot", str(d / "no" / "t.png")],
                                          ["no directory"]),
        "job-without-a-module": (profile("job-without-a-module", "--job", ":make"), ["no file or module before"]),
        "job-relative-module": (profile("job-relative-module", "--job", "..x:make"), ["cannot import module '..x'"]),
        "verify-negative-batch": (["verify", "--job", f"{job}:make", "--plan", str(d / "plan_neg.json"),
                                   "--budget", "1GiB"], ["batch_size must be a positive integer"]),
        "verify-negative-steps": (["verify", "--job", f"{job}:make", "--plan", str(d / "plan_neg.json"),
                                   "--budget", "1GiB", "--steps", "-1"], ["--steps", ">= 1"]),
        "verify-budget-below-the-plans": (["verify", "--job", f"{job}:make", "--plan", str(d / "plan_64m.json"),
                                           "--budget", "32MiB"], ["below the plan's 64.00 MiB"]),
        "plan-without-job-or-profile": (["plan", "--budget", "1GiB"], ["give --job", "or --profile"]),
        # 8 KiB: two host pages, less than the model's parameters, gradients and AdamW state
        "capacity-too-small": (profile("capacity-too-small", "--job", f"{job}:make", "--capacity", "8KiB", "--quiet"),
                               ["out of memory", "capacity 8.00 KiB"]),
    }


# Exit codes other than 2: a job that does not fit its capacity is "nothing fits" (3).
EXIT_CODES = {"capacity-too-small": 3}

# Each its own `python3 -m memfit` (the exit code through __main__); the argparse
# ones exit before importing torch. The others share one child that calls
# memfit.cli.main(argv) in turn (an uncaught exception counts as exit code 1
# with its traceback, as the interpreter would): importing torch a dozen times
# would cost most of this file's run time. capacity-too-small needs a fresh
# allocator (a lowered capacity still lets cached segments serve).
OWN_PROCESS = ("ok", "no-colon", "bad-capacity", "bad-batch-sizes", "zero-batch-size", "bad-precision",
               "capacity-too-small")

_DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys, traceback
    from memfit import cli
    results = {}
    for name, argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = cli.main(argv)
            except SystemExit as e:
                rc = e.code
            except BaseException:
                rc = 1
                traceback.print_exc()
        results[name] = [rc, err.getvalue()]
    print("RESULT " + json.dumps(results))
""")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "job.py").write_text(JOB_FILE)
    (d / "other.json").write_text(json.dumps({"format": "something-else", "version": 1}))
    sample = json.loads(SAMPLE_PROFILE.read_text())
    (d / "sample.json").write_text(json.dumps(sample))
    bad = json.loads(json.dumps(sample))
    bad["settings"][0]["batch_size"] = "2"
    (d / "batch_str.json").write_text(json.dumps(bad))
    (d / "settings_str.json").write_text(json.dumps(dict(sample, settings="x")))
    empty = json.loads(json.dumps(sample))
    for s in empty["settings"]:
        s["layers"] = []
    (d / "no_layers.json").write_text(json.dumps(empty))
    (d / "plan_neg.json").write_text(json.dumps({"format": "memfit-plan", "version": 1, "batch_size": -3,
                                                 "layers": []}))
    (d / "plan_64m.json").write_text(json.dumps({"format": "memfit-plan", "version": 1, "batch_size": 2,
                                                 "budget_bytes": 64 << 20, "layers": []}))
    return d


@pytest.fixture(scope="module")
def runs(workdir):
    if adapter_problem():
        pytest.skip(adapter_problem())
    cases = _cases(workdir)
    shared = [[name, argv] for name, (argv, _) in cases.items() if name not in OWN_PROCESS]
    procs = {name: start_python(["-m", "memfit", *cases[name][0]], cwd=workdir) for name in OWN_PROCESS}
    driver = finish_python(start_python(["-c", _DRIVER, json.dumps(shared)], cwd=workdir), timeout=180)
    out = {name: finish_python(proc, timeout=180) for name, proc in procs.items()}
    lines = [x for x in driver.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, describe(driver)
    for name, (rc, err) in json.loads(lines[-1][len("RESULT "):]).items():
        out[name] = subprocess.CompletedProcess(["memfit.cli.main", name], rc, "", err)
    return out


def test_profile_with_a_job_file(runs, workdir):
    result = runs["ok"]
    assert result.returncode == 0, describe(result)
    assert f"profile written to {workdir / 'profile.json'}" in result.stdout
    assert "fc1" in result.stdout and "peak by category" in result.stdout  # the report
    prof = Profile.load(workdir / "profile.json")
    prof.validate()
    assert prof.data["job"] == f"{workdir / 'job.py'}:make"
    assert prof.data["optimizer"] == "AdamW" and prof.data["steps"] == 1
    assert [s["batch_size"] for s in prof.settings] == [2, 4]
    for s in prof.settings:
        assert [layer["name"] for layer in s["layers"]] == ["fc1", "act", "fc2"]
        assert [layer["parameter_bytes"] for layer in s["layers"]] == [(16 * 32 + 32) * 4, 0, (32 * 4 + 4) * 4]
        assert s["input_bytes"] >= s["batch_size"] * 16 * 4


ERROR_CASES = [n for n in _cases(Path("/nowhere")) if n != "ok"]
SAMPLE_PROFILE = REPO / "planner" / "examples" / "sample_profile.json"


@pytest.mark.parametrize("name", ERROR_CASES)
def test_bad_input_exits_2_with_one_line(runs, workdir, name):
    result = runs[name]
    wanted = _cases(workdir)[name][1]
    assert result.returncode == EXIT_CODES.get(name, 2), describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    lines = error_lines(result.stderr)
    assert len(lines) == 1, describe(result)
    for text in wanted:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert not (workdir / f"{name}.out.json").exists()


def test_report_writes_a_png(runs, workdir):
    assert runs["ok"].returncode == 0, describe(runs["ok"])
    png = workdir / "timeline.png"
    plot = finish_python(start_python(["-m", "memfit", "report", str(workdir / "profile.json"), "--plot", str(png)]))
    assert plot.returncode == 0, describe(plot)
    assert f"timeline written to {png}" in plot.stdout
    assert "setting: batch 4, fp32" in plot.stdout  # the largest batch by default
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_report_of_a_missing_setting(runs, workdir, capsys):
    assert runs["ok"].returncode == 0, describe(runs["ok"])
    from memfit import cli

    assert cli.main(["report", str(workdir / "profile.json"), "--batch-size", "99"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "batch=99" in lines[0] and "2/fp32, 4/fp32" in lines[0], lines


def test_job_file_with_a_dataclass_loads(tmp_path):
    from memfit.job import Job, load_job

    path = tmp_path / "dc_job.py"
    path.write_text(textwrap.dedent('''
        from __future__ import annotations
        from dataclasses import dataclass
        import torch, memfit

        @dataclass
        class Config:
            width: int = 8

        def make():
            cfg = Config()
            return memfit.Job(model=torch.nn.Sequential(torch.nn.Linear(cfg.width, 2)),
                              make_batch=lambda b: (torch.randn(b, cfg.width), torch.randint(0, 2, (b,))),
                              loss_fn=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
                              optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))
    '''))
    assert isinstance(load_job(f"{path}:make"), Job)


def test_progress_goes_to_stderr_and_q_silences_it(workdir):
    job = f"{workdir / 'job.py'}:make"
    args = ["-m", "memfit", "profile", "--job", job, "--batch-sizes", "1,2", "--steps", "1", "--warmup-steps", "1"]
    loud = finish_python(start_python(args + ["--out", str(workdir / "loud.json")]))
    assert loud.returncode == 0, describe(loud)
    lines = loud.stderr.strip().splitlines()
    assert lines[0].startswith("memfit: profiling ") and "3 units: fc1 (Linear), act (ReLU), fc2 (Linear)" in lines[0]
    # 2 settings, each also checkpointed and selectively checkpointed, and a checkpoint check per
    # batch size: 8 runs, numbered; then the untraced timing ladder, from the profiled sizes up.
    assert [line.split("]")[0] for line in lines[1:9]] == [f"memfit: [{k}/8" for k in range(1, 9)], lines
    assert "every layer checkpointed" in lines[2] and "every layer selectively checkpointed" in lines[3]
    assert "checkpoint check at batch 1" in lines[7]
    # The ladder's own points come first, sorted; then any it adds between them (memfit.timing.refinements).
    ladder = next((i for i, line in enumerate(lines) if "error changes between points" in line), len(lines))
    plain = [line for line in lines[9:ladder] if line.startswith("memfit: timing fp32: batch ")]
    timed = [int(line.split("batch ")[1].split(":")[0]) for line in plain]
    assert timed[:2] == [1, 2] and all(line.startswith("memfit: timing fp32") for line in lines[9:]), lines
    assert any("every layer checkpointed: batch" in line for line in lines[9:]), lines
    assert any("every layer selectively checkpointed: batch" in line for line in lines[9:]), lines
    assert timed == sorted(timed) and len(timed) >= 2, lines
    # --no-selective: the selective runs are not measured.
    lean = finish_python(start_python(args + ["--out", str(workdir / "lean.json"), "--no-selective"]))
    assert lean.returncode == 0, describe(lean)
    assert [line.split("]")[0] for line in lean.stderr.strip().splitlines()[1:7]] == \
        [f"memfit: [{k}/6" for k in range(1, 7)], lean.stderr
    assert all("selective" not in s for s in json.loads((workdir / "lean.json").read_text())["settings"])
    quiet = finish_python(start_python(args + ["--out", str(workdir / "quiet.json"), "-q"]))
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == "", describe(quiet)


def test_plan_precisions_is_one_flag(tmp_path):
    """`--precisions` names the precisions in every command: with --profile it
    restricts the plan's (default: the profile's); the older --plan-precisions
    still works."""
    from memfit import cli

    def planned(*extra):
        out = tmp_path / "p.json"
        assert cli.main(["plan", "--profile", str(SAMPLE_PROFILE), "--budget", "40GiB", "--out", str(out), "-q",
                         *extra]) == 0
        return json.loads(out.read_text())["precisions"]

    assert planned() == ["fp32", "bf16"]
    assert planned("--precisions", "bf16") == ["bf16"]
    assert planned("--plan-precisions", "fp32") == ["fp32"]
