# test_install.py — memfit.install / memfit.track / torch.cuda stats routing on a
# CPU-only machine: CUDA install refused with MemfitError, bad options named,
# the CPU capacity enforced with torch.OutOfMemoryError carrying memfit's OOM
# report (in a fresh process), torch.cuda.memory_* answered from a memfit
# allocator, and memfit.track's tags on a plain training loop.
from __future__ import annotations

import gc
import json
import sys
import textwrap

import pytest

from conftest import describe, run_python

torch = pytest.importorskip("torch")

import memfit  # noqa: E402
from memfit import _lib  # noqa: E402
from memfit._lib import CATEGORIES, MemfitError  # noqa: E402

MiB = 1 << 20


# ------------------------------------------------------------------ errors


@pytest.mark.needs_lib
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_install_cuda_without_a_device_raises():
    with pytest.raises(MemfitError, match="built without CUDA"):
        memfit.install(device="cuda")
    with pytest.raises(MemfitError, match="built without CUDA"):
        memfit.install()  # cuda is the default
    assert memfit.current() is None or memfit.current().device == "cpu"


@pytest.mark.needs_lib
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_unknown_option_is_named(device):
    with pytest.raises(MemfitError, match=r"unknown option 'capacty'.*capacity"):
        memfit.install(device=device, capacty="1GiB")


@pytest.mark.needs_adapter
def test_bad_size_is_named():
    before = memfit.current()
    with pytest.raises(MemfitError, match=r"capacity.*12 parsecs.*parsecs"):
        memfit.install(device="cpu", capacity="12 parsecs")
    assert memfit.current() is before  # nothing was installed


@pytest.mark.needs_lib
def test_a_nul_or_a_fraction_of_a_byte_is_not_a_size():
    before = memfit.current()
    with pytest.raises(MemfitError, match="NUL"):
        memfit.install(device="cpu", capacity="1GiB\0junk")
    with pytest.raises(MemfitError, match="less than one byte"):
        memfit.install(device="cpu", capacity="0.1")
    with pytest.raises(MemfitError, match="NUL"):
        memfit.parse_size("12\0MiB")
    assert memfit.current() is before


@pytest.mark.needs_lib
def test_other_bad_arguments():
    with pytest.raises(MemfitError, match="'tpu'"):
        memfit.install(device="tpu")
    with pytest.raises(MemfitError, match="backend"):
        memfit.install(device="cpu", backend="host")
    with pytest.raises(MemfitError, match="cannot contain"):
        memfit.install(device="cpu", capacity="1GiB,check:true")
    with pytest.raises(MemfitError, match="parsecs"):
        memfit.parse_size("12 parsecs")
    with pytest.raises(MemfitError, match="negative"):
        memfit.parse_size(-1)
    assert memfit.parse_size("2GiB") == 2 << 30
    assert memfit.parse_size(512) == 512


# ------------------------------------------------------- capacity overflow

_OVERFLOW = textwrap.dedent("""
    import json, torch, memfit
    alloc = memfit.install(device="cpu", capacity="64MiB")
    out = {"capacity": alloc.capacity()}
    keep = torch.ones(8 << 20, dtype=torch.uint8)  # 8 MiB alive across the failure
    try:
        torch.empty(100 << 20, dtype=torch.uint8)
        out["raised"] = None
    except torch.OutOfMemoryError as e:
        out["raised"], out["message"] = "OutOfMemoryError", str(e)
    except Exception as e:
        out["raised"], out["message"] = type(e).__name__, str(e)
    out["oom_report"] = alloc.oom_report()
    out["ooms"] = alloc.stats()["ooms"]
    a = torch.full((512, 512), 2.0)
    out["matmul"] = (a @ a)[3, 5].item()  # 512 * 4
    big = torch.ones(40 << 20, dtype=torch.uint8)  # 40 MiB: still fits next to `keep`
    out["big_min_max"] = [big.min().item(), big.max().item()]  # no dtype promotion: no 8x copy
    out["big_owned"] = alloc.block_info(big.untyped_storage().data_ptr()) is not None
    out["keep_min_max"] = [keep.min().item(), keep.max().item()]
    del big, a
    out["allocated_after"] = alloc.allocated()
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.needs_adapter
def test_capacity_overflow_raises_torch_oom_and_the_process_goes_on():
    result = run_python(["-c", _OVERFLOW])
    assert result.returncode == 0, describe(result)
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, describe(result)
    out = json.loads(line[-1][len("RESULT "):])
    assert out["capacity"] == 64 * MiB
    assert out["raised"] == "OutOfMemoryError", out.get("message")
    msg = out["message"]
    report = out["oom_report"].strip()
    assert report and report in msg, msg  # memfit's own OOM report, whole
    assert "memfit: out of memory on device 0: tried to allocate 100.00 MiB" in msg
    assert "capacity 64.00 MiB" in msg
    assert out["ooms"] == 1
    assert out["matmul"] == 2048.0
    assert out["big_min_max"] == [1, 1] and out["big_owned"]
    assert out["keep_min_max"] == [1, 1]
    assert 8 * MiB <= out["allocated_after"] < 9 * MiB  # `keep` (and small leftovers) only


_CPU_CONF = textwrap.dedent("""
    import json, memfit, torch
    a = memfit.install("cpu", capacity="64MiB")
    b = memfit.install("cpu", capacity="64MiB", vmm="on")
    x = torch.ones(1000)
    print("RESULT " + json.dumps({"env": a.granule(), "explicit": b.granule(), "sum": float(x.sum())}))
""")


@pytest.mark.needs_adapter
def test_cpu_install_reads_memfit_conf_before_its_own_options():
    from conftest import python_env

    env = python_env()
    env["MEMFIT_CONF"] = "vmm:off"
    result = run_python(["-c", _CPU_CONF], env=env)
    assert result.returncode == 0, describe(result)
    out = json.loads([x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    assert out["env"] == 0  # MEMFIT_CONF's vmm:off: segments
    assert out["explicit"] > 0  # the caller's vmm:on wins over MEMFIT_CONF
    assert out["sum"] == 1000.0


# ---------------------------------------------------- torch.cuda stats routing


@pytest.mark.needs_lib
def test_cuda_stats_are_routed_to_memfit():
    from memfit.torch_stats import route_cuda_stats, unroute_cuda_stats

    alloc = memfit.Allocator.create("backend:virtual,capacity:1GiB")
    lib = _lib.lib()
    original = torch.cuda.memory.memory_stats_as_nested_dict
    ptrs = []
    route_cuda_stats(alloc)
    try:
        assert torch.cuda.memory_allocated(0) == 0
        ptrs.append(lib.mf_malloc(alloc.handle, 0, 3 * MiB, 0))
        ptrs.append(lib.mf_malloc(alloc.handle, 0, 1000, 0))
        assert all(ptrs)
        s = alloc.stats()
        allocated, reserved = s["allocated_bytes"]["current"], s["reserved_bytes"]["current"]
        assert allocated >= 3 * MiB + 1000 and reserved >= allocated
        assert torch.cuda.memory_allocated(0) == allocated
        assert torch.cuda.memory_allocated() == allocated  # the current device (0 without CUDA)
        assert torch.cuda.max_memory_allocated(0) == allocated
        assert torch.cuda.memory_reserved(0) == reserved
        assert torch.cuda.max_memory_reserved(0) == s["reserved_bytes"]["peak"]
        stats = torch.cuda.memory_stats(0)
        assert stats["allocated_bytes.all.current"] == allocated
        assert stats["requested_bytes.all.current"] == 3 * MiB + 1000
        assert stats["allocation.all.current"] == 2

        assert lib.mf_free(alloc.handle, ptrs.pop(0)) == 0
        small = alloc.stats()["allocated_bytes"]["current"]
        assert small < MiB
        assert torch.cuda.memory_allocated(0) == small
        assert torch.cuda.max_memory_allocated(0) == allocated  # the peak stays...
        torch.cuda.reset_peak_memory_stats(0)
        assert torch.cuda.max_memory_allocated(0) == small  # ...until reset
        assert torch.cuda.max_memory_reserved(0) == alloc.stats()["reserved_bytes"]["current"]
        assert torch.cuda.memory_stats(0)["allocated_bytes.all.peak"] == small
        assert "memfit" in torch.cuda.memory_summary(0)
    finally:
        for p in ptrs:
            lib.mf_free(alloc.handle, p)
        unroute_cuda_stats()
    assert torch.cuda.memory.memory_stats_as_nested_dict is original
    assert torch.cuda.memory_stats_as_nested_dict is original


@pytest.mark.needs_lib
def test_reset_peak_memory_stats_is_per_device():
    from memfit.torch_stats import route_cuda_stats, unroute_cuda_stats

    alloc = memfit.Allocator.create("backend:virtual,devices:2,capacity:1GiB")
    lib = _lib.lib()
    route_cuda_stats(alloc)
    try:
        p0, p1 = lib.mf_malloc(alloc.handle, 0, 3 * MiB, 0), lib.mf_malloc(alloc.handle, 1, 5 * MiB, 0)
        assert p0 and p1
        peak0, peak1 = torch.cuda.memory_allocated(0), torch.cuda.memory_allocated(1)
        assert peak0 >= 3 * MiB and peak1 >= 5 * MiB
        lib.mf_free(alloc.handle, p0)
        lib.mf_free(alloc.handle, p1)
        torch.cuda.reset_peak_memory_stats(1)
        assert torch.cuda.max_memory_allocated(1) == 0
        assert torch.cuda.max_memory_allocated(0) == peak0  # device 0 was not reset
    finally:
        unroute_cuda_stats()


# ------------------------------------------------------------- memfit.track


class _TrackedNet(torch.nn.Module):
    # Unique module names: layer names are interned process-wide.
    def __init__(self):
        super().__init__()
        self.trk_enc = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
        self.trk_head = torch.nn.Linear(64, 8)

    def forward(self, x):
        return self.trk_head(self.trk_enc(x))


def test_track_tags_a_plain_training_loop(memfit_cpu):
    alloc = memfit_cpu
    gc.collect()
    before = {c: alloc.category_stats(c)["requested"]["current"] for c in CATEGORIES}
    torch.manual_seed(0)
    model = _TrackedNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with memfit.track(model, opt):
        for _ in range(2):
            x, y = torch.randn(16, 32), torch.randint(0, 8, (16,))
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        now = {c: alloc.category_stats(c)["requested"]["current"] - before[c] for c in CATEGORIES}
        params = list(model.parameters())
        param_bytes = sum(p.numel() * p.element_size() for p in params)
        step_bytes = sum(opt.state[p]["step"].numel() * opt.state[p]["step"].element_size() for p in params)
        assert now["parameter"] == param_bytes
        assert now["gradient"] == sum(p.grad.numel() * p.grad.element_size() for p in params) == param_bytes
        assert now["optimizer_state"] == 2 * param_bytes + step_bytes
        assert now["input"] == x.numel() * x.element_size()  # the model's input; the targets are not its input

        owners = {"trk_enc.0": model.trk_enc[0], "trk_enc.2": model.trk_enc[2], "trk_head": model.trk_head}
        for layer, module in owners.items():
            p_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
            assert alloc.tag_stats("parameter", layer)["requested"]["current"] == p_bytes, layer
            assert alloc.tag_stats("gradient", layer)["requested"]["current"] == p_bytes, layer
            assert alloc.tag_stats("optimizer_state", layer)["requested"]["current"] > 2 * p_bytes, layer
            info = alloc.block_info(module.weight.untyped_storage().data_ptr())
            assert info["category"] == "parameter" and info["layer"] == layer, info
            info = alloc.block_info(module.weight.grad.untyped_storage().data_ptr())
            assert info["category"] == "gradient" and info["layer"] == layer and info["phase"] == "backward", info
            info = alloc.block_info(opt.state[module.weight]["exp_avg"].untyped_storage().data_ptr())
            assert info["category"] == "optimizer_state" and info["layer"] == layer, info
        names = {row["name"] for row in alloc.layer_table()}
        assert {"trk_enc.0", "trk_enc.1", "trk_enc.2", "trk_head"} <= names
        # The ReLU keeps no parameters but did allocate in its forward (its output).
        assert alloc.tag_stats("parameter", "trk_enc.1")["requested"]["current"] == 0
        assert alloc.tag_stats("temporary", "trk_enc.1")["requested"]["total"] > 0
    del model, opt, loss, x, y, params, owners, module, info
    gc.collect()  # everything the loop made is gone from memfit's counts
    assert alloc.category_stats("parameter")["requested"]["current"] == before["parameter"]
    assert alloc.category_stats("optimizer_state")["requested"]["current"] == before["optimizer_state"]


def test_track_without_install_is_refused(memfit_cpu):
    model = torch.nn.Linear(2, 2)
    tracker = memfit.track(model)  # installed: fine
    tracker.remove()
    install_module = sys.modules["memfit.install"]  # `memfit.install` is the function

    saved = install_module._current
    install_module._current = None  # as if memfit were not installed
    try:
        with pytest.raises(MemfitError, match="not installed"):
            memfit.track(model)
    finally:
        install_module._current = saved
