# test_trial_finders.py — the batch-size finders that work by trial and error
# under memfit's CPU allocator with a capacity: memfit's OOM is what
# Accelerate's should_reduce_batch_size and Lightning's is_oom_error look for
# (a RuntimeError with one argument saying " out of memory." and, on CPU,
# "DefaultCPUAllocator: can't allocate memory"; on CUDA "CUDA out of memory."),
# and memfit releases its cache before an OOM is raised (with segments, also
# what the failed trial frees afterwards), so that Accelerate's
# find_executable_batch_size, trying smaller batches in the same process,
# stops at the largest batch that fits a fresh process. memfit is installed
# per process: every scenario runs in a child.
from __future__ import annotations

import importlib.util
import json
import subprocess
import textwrap
from pathlib import Path
from typing import Dict

import pytest

from conftest import BUILD, describe, finish_python, start_python

pytest.importorskip("torch")
pytest.importorskip("accelerate")

pytestmark = pytest.mark.needs_adapter

CAPACITY = "24MiB"
START = 8192  # far too large: the finder goes down in steps of 0.9

_CHILD = textwrap.dedent("""
    import json, sys
    import torch
    import memfit

    mode, capacity, vmm, arg = sys.argv[1:5]
    torch.set_num_threads(1)
    alloc = memfit.install(device="cpu", capacity=capacity, vmm=vmm)

    def train(batch_size):
        # As Accelerate's finder wants it: what depends on the trial is made in
        # it (an OOM inside optimizer.step would leave a shared optimizer's
        # state half made).
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 512),
                                    torch.nn.GELU(), torch.nn.Linear(512, 10))
        optimizer = torch.optim.AdamW(model.parameters())
        for _ in range(2):  # the second step also holds the optimizer's state
            x, y = torch.randn(batch_size, 256), torch.randint(0, 10, (batch_size,))
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return batch_size

    def stats():
        s = alloc.stats()
        return {"allocated": s["allocated_bytes"]["current"], "reserved": s["reserved_bytes"]["current"],
                "ooms": s["ooms"]}

    out = {}
    if mode == "accelerate":
        import accelerate.utils.memory as memory
        from accelerate.utils import find_executable_batch_size
        tried, seen = [], []
        should_reduce_batch_size = memory.should_reduce_batch_size

        def recorded(e):  # what the finder asks about each exception, and its answer
            answer = should_reduce_batch_size(e)
            seen.append({"type": type(e).__name__, "runtime_error": isinstance(e, RuntimeError),
                         "args": len(e.args), "message": str(e), "oom_report": alloc.oom_report(),
                         "is_out_of_memory": memfit.is_out_of_memory(e), "should_reduce_batch_size": answer})
            return answer

        memory.should_reduce_batch_size = recorded  # the finder looks it up at each exception

        @find_executable_batch_size(starting_batch_size=int(arg))
        def finder(batch_size):
            tried.append({"batch": batch_size, **stats()})
            return train(batch_size)

        out = {"found": finder(), "tried": tried, "seen": seen}
    elif mode == "fresh":
        try:
            train(int(arg))
            out = {"fits": True}
        except torch.OutOfMemoryError:
            out = {"fits": False}
    elif mode == "lightning":
        # What Lightning's batch-size finder (Tuner.scale_batch_size) calls on an exception.
        import lightning.pytorch.tuner.batch_size_scaling as scaling
        try:
            train(int(arg))
            raise SystemExit(f"batch {arg} fits {capacity}: no OOM to look at")
        except torch.OutOfMemoryError as e:
            out = {"cpu": scaling.is_oom_error(e)}
        scaling.garbage_collection_cuda()  # what it does next: must not raise on a CPU-only PyTorch
        if len(sys.argv) > 5:  # the CUDA plugin's message, as PyTorch raises it with and without the thrower
            message = open(sys.argv[5]).read()
            out["cuda"] = [scaling.is_oom_error(torch.OutOfMemoryError(message)),
                           scaling.is_oom_error(RuntimeError(message))]
    out["stats"] = stats()
    print("RESULT " + json.dumps(out))
""")


def _args(mode: str, arg: object, vmm: str = "auto", *more: str) -> list:
    return ["-c", _CHILD, mode, CAPACITY, vmm, str(arg), *more]


def _result(result) -> dict:
    lines = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    assert result.returncode == 0 and lines, describe(result)
    return json.loads(lines[-1][len("RESULT "):])


def _cuda_plugin_message(path: Path) -> bool:
    """Write the OOM message of memfit's CUDA plugin as PyTorch gets it
    (c10::OutOfMemoryError through libmemfit_torch.so's thrower) to `path`, from
    the ctest program that provokes one over the virtual backend; False where
    that program is not built."""
    program = BUILD / "bindings" / "torch" / "memfit_oom_type_check"
    if not program.exists():
        return False
    done = subprocess.run([str(program), str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return True


POLICIES = ("auto", "off")  # page-mapped pools (the default), segments
LIGHTNING = importlib.util.find_spec("lightning") is not None


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Dict[str, dict]:
    """Every child, run at once where they are independent (2 cores): the finder
    under each policy and Lightning's check, then a fresh process at the batch
    each finder tried just before its answer."""
    message = tmp_path_factory.mktemp("trial_finders") / "cuda-oom.txt"
    have_message = _cuda_plugin_message(message)
    procs = {f"accelerate-{vmm}": start_python(_args("accelerate", START, vmm)) for vmm in POLICIES}
    if LIGHTNING:
        procs["lightning"] = start_python(_args("lightning", START, "auto", *([str(message)] if have_message else [])))
    out = {name: finish_python(proc, timeout=180) for name, proc in procs.items()}  # each test reads its own
    fresh = {}
    for vmm in POLICIES:
        done = out[f"accelerate-{vmm}"]
        if done.returncode == 0:
            tried = _result(done)["tried"]
            if len(tried) >= 2:
                fresh[vmm] = start_python(_args("fresh", tried[-2]["batch"], vmm))
    out["fresh"] = {key: finish_python(proc, timeout=180) for key, proc in fresh.items()}
    out["cuda_message"] = message.read_text() if have_message else None
    return out


def test_a_training_step_past_the_capacity_raises_what_accelerate_reduces_the_batch_for(runs):
    out = _result(runs["accelerate-auto"])
    seen = out["seen"]
    assert seen, out
    for e in seen:  # every OOM the finder met, the first at batch START
        assert e["type"] == "OutOfMemoryError" and e["runtime_error"] and e["args"] == 1, e
        assert e["should_reduce_batch_size"], e["message"]
        assert e["is_out_of_memory"]
        assert e["oom_report"].strip() in e["message"]  # memfit's whole report follows the first line
    first = seen[0]["message"].splitlines()[0]
    # Informative, and in the words the finders look for.
    assert first.startswith("memfit: CPU out of memory. Tried to allocate "), first
    assert f"did not fit memfit's capacity of {CAPACITY[:-3]}.00 MiB" in first, first
    assert "DefaultCPUAllocator: can't allocate memory" in first, first
    headline = next(line for line in seen[0]["message"].splitlines() if "tried to allocate" in line)
    assert headline.startswith("memfit: out of memory on device 0: tried to allocate"), headline  # what the CLI shows


def test_the_cuda_plugins_oom_is_what_accelerate_reduces_the_batch_for(runs):
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    import memfit

    message = runs["cuda_message"]
    if message is None:
        pytest.skip("memfit_oom_type_check is not built (it is built with libmemfit_torch.so)")
    assert message.startswith("CUDA out of memory. memfit: out of memory on device 0: tried to allocate"), message
    for e in (torch.OutOfMemoryError(message), RuntimeError(message)):  # with and without the thrower
        assert should_reduce_batch_size(e), message
        assert memfit.is_out_of_memory(e)


@pytest.mark.parametrize("vmm", POLICIES)
def test_accelerates_finder_reaches_the_largest_batch_a_fresh_process_fits(runs, vmm):
    out = _result(runs[f"accelerate-{vmm}"])
    tried, found = out["tried"], out["found"]
    assert len(tried) >= 2 and tried[0]["batch"] == START and tried[-1]["batch"] == found, out
    assert out["stats"]["ooms"] == len(tried) - 1  # every trial but the last ran out of memory
    # The answer ran after the OOMs, and the batch tried just before it does not
    # fit a fresh process either: what the OOMs left behind did not make the
    # finder stop lower. (Before memfit released its cache on an OOM, with
    # segments the finder stopped one step lower.)
    larger = tried[-2]["batch"]
    assert larger > found
    assert not _result(runs["fresh"][vmm])["fits"], f"batch {larger} fits a fresh process; the finder gave {found}"


@pytest.mark.skipif(not LIGHTNING, reason="lightning is not installed")
def test_lightnings_batch_size_finder_recognizes_memfits_oom(runs):
    out = _result(runs["lightning"])
    assert out["cpu"], out
    if runs["cuda_message"] is not None:
        assert out["cuda"] == [True, True], out
