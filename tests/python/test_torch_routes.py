# test_torch_routes.py — memfit.torch_stats.route_cuda_stats on a CPU-only machine:
# a memfit allocator on the virtual backend stands in for the CUDA plugin's, the
# driver's mem_get_info is injected, allocations go through the C API (ctypes),
# and every routed function of torch.cuda and torch.accelerator is checked
# against memfit's own stats; unroute_cuda_stats gives PyTorch its functions back.
# In a child process, the CUDA plugin's own allocator: reading stats creates nothing.
from __future__ import annotations

import json
import sys
import types

import pytest

from conftest import describe, python_env, run_python

torch = pytest.importorskip("torch")

import memfit  # noqa: E402
from memfit import _lib, torch_stats  # noqa: E402
from memfit.torch_stats import route_cuda_stats, unroute_cuda_stats  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
STATS = ("allocation", "segment", "active", "inactive_split", "allocated_bytes", "reserved_bytes", "active_bytes",
         "inactive_split_bytes", "requested_bytes")
FIELDS = ("current", "peak", "allocated", "freed")
ROUTED_CUDA = ("memory_stats_as_nested_dict", "reset_peak_memory_stats", "reset_accumulated_memory_stats",
               "memory_summary", "mem_get_info", "get_per_process_memory_fraction")
ROUTED_ACCELERATOR = ("memory_stats", "memory_allocated", "max_memory_allocated", "memory_reserved",
                      "max_memory_reserved", "reset_peak_memory_stats", "reset_accumulated_memory_stats",
                      "get_memory_info")

pytestmark = pytest.mark.needs_lib


class FakeDriver:
    """cudaMemGetInfo's answer for each device, settable by the test."""

    def __init__(self, free: int, total: int) -> None:
        self.free, self.total = free, total
        self.calls = []

    def __call__(self, device):
        self.calls.append(device)
        return self.free, self.total


class Blocks:
    """Allocations through memfit's C API, freed at the end of the test."""

    def __init__(self, alloc: memfit.Allocator) -> None:
        self.alloc, self.lib, self.live = alloc, _lib.lib(), []

    def malloc(self, size: int, device: int = 0) -> int:
        ptr = self.lib.mf_malloc(self.alloc.handle, device, size, 0)
        if ptr:
            self.live.append(ptr)
        return ptr

    def free(self, ptr: int) -> None:
        self.live.remove(ptr)
        assert self.lib.mf_free(self.alloc.handle, ptr) == 0

    def free_all(self) -> None:
        for ptr in list(self.live):
            self.free(ptr)


@pytest.fixture
def routed():
    """route(conf, free, total) -> (alloc, driver, blocks); unrouted and freed afterwards."""
    made = []

    def route(conf: str = "backend:virtual,capacity:1GiB", free: int = 10 * GiB, total: int = 80 * GiB):
        alloc = memfit.Allocator.create(conf, "cuda")
        driver = FakeDriver(free, total)
        route_cuda_stats(alloc, driver=driver, accelerator=True)
        blocks = Blocks(alloc)
        made.append(blocks)
        return alloc, driver, blocks

    yield route
    for blocks in made:
        blocks.free_all()
    unroute_cuda_stats()


def test_memory_stats_has_pytorchs_keys_and_memfits_numbers(routed):
    alloc, _, blocks = routed()
    big, small = blocks.malloc(3 * MiB), blocks.malloc(1000)
    assert big and small
    s = alloc.stats()
    stats = torch.cuda.memory_stats(0)
    for stat in STATS:
        for pool in ("all", "large_pool", "small_pool"):
            for field in FIELDS:
                assert f"{stat}.{pool}.{field}" in stats, f"{stat}.{pool}.{field}"
    for key in ("num_alloc_retries", "num_ooms", "max_split_size", "num_sync_all_streams", "num_device_alloc",
                "num_device_free", *(f"oversize_{kind}.{f}" for kind in ("allocations", "segments") for f in FIELDS)):
        assert key in stats, key
    assert stats["allocated_bytes.all.current"] == s["allocated_bytes"]["current"] >= 3 * MiB + 1000
    assert stats["allocated_bytes.all.peak"] == s["allocated_bytes"]["peak"]
    assert stats["active_bytes.all.current"] == s["allocated_bytes"]["current"]
    assert stats["reserved_bytes.all.current"] == s["reserved_bytes"]["current"]
    assert stats["requested_bytes.all.current"] == 3 * MiB + 1000
    assert stats["allocation.all.current"] == stats["active.all.current"] == 2
    assert stats["segment.all.current"] == s["segments"]["current"]
    assert stats["num_device_alloc"] == s["segment_maps"] + s["granule_maps"] > 0
    assert stats["max_split_size"] == -1  # unlimited, as PyTorch reports SIZE_MAX
    # What memfit does not count reads 0 (torch_stats.UNCOUNTED), as under cudaMallocAsync.
    assert stats["allocated_bytes.large_pool.current"] == stats["allocated_bytes.small_pool.current"] == 0
    assert stats["inactive_split_bytes.all.current"] == 0
    assert stats["oversize_allocations.current"] == stats["oversize_segments.current"] == 0

    blocks.free(big)
    stats = torch.cuda.memory_stats(0)
    assert stats["requested_bytes.all.current"] == 1000
    assert stats["requested_bytes.all.allocated"] == 3 * MiB + 1000
    assert stats["requested_bytes.all.freed"] == 3 * MiB
    assert stats["allocation.all.allocated"] == 2 and stats["allocation.all.freed"] == 1
    assert torch.cuda.memory_allocated(0) == alloc.stats()["allocated_bytes"]["current"] < MiB


def test_max_split_size_is_memfits_option(routed):
    routed("backend:virtual,capacity:1GiB,max_split_size:64MiB")
    assert torch.cuda.memory_stats(0)["max_split_size"] == 64 * MiB


def test_num_ooms_and_num_alloc_retries(routed):
    # Segments (vmm:off): 30 small blocks fill 15 cached 2 MiB segments; a 50 MiB
    # request under a 64 MiB capacity then needs the OOM ladder to release them.
    alloc, _, blocks = routed("backend:virtual,capacity:64MiB,vmm:off")
    smalls = [blocks.malloc(MiB) for _ in range(30)]
    assert all(smalls)
    for p in smalls:
        blocks.free(p)
    assert blocks.malloc(50 * MiB)
    assert not blocks.malloc(100 * MiB)  # past the capacity: an OOM
    s = alloc.stats()
    stats = torch.cuda.memory_stats(0)
    assert stats["num_alloc_retries"] == s["ladder_releases"] >= 1
    assert stats["num_ooms"] == s["ooms"] == 1
    assert stats["num_device_free"] == s["segment_unmaps"] + s["granule_unmaps"] >= 15


def test_reset_accumulated_memory_stats(routed):
    alloc, _, blocks = routed("backend:virtual,capacity:64MiB")
    keep = blocks.malloc(4 * MiB)
    gone = blocks.malloc(2 * MiB)
    assert keep and gone and not blocks.malloc(GiB)
    blocks.free(gone)
    before = torch.cuda.memory_stats(0)
    assert before["num_ooms"] == 1 and before["allocation.all.allocated"] == 2
    torch.cuda.reset_accumulated_memory_stats(0)
    after = torch.cuda.memory_stats(0)
    assert after["num_ooms"] == 0
    assert after["allocation.all.allocated"] == after["allocation.all.freed"] == 0
    assert after["requested_bytes.all.allocated"] == after["requested_bytes.all.freed"] == 0
    assert after["requested_bytes.all.current"] == 4 * MiB  # current and peak are not accumulated stats
    assert after["requested_bytes.all.peak"] == before["requested_bytes.all.peak"]
    blocks.free(keep)
    now = torch.cuda.memory_stats(0)
    assert now["requested_bytes.all.allocated"] == 0 and now["requested_bytes.all.freed"] == 4 * MiB
    assert now["allocation.all.freed"] == 1
    assert blocks.malloc(MiB)
    assert torch.cuda.memory_stats(0)["allocation.all.allocated"] == 1


def test_mem_get_info_is_what_memfit_can_still_hand_out(routed):
    alloc, driver, blocks = routed("backend:virtual,capacity:1GiB,vmm:off", free=10 * GiB, total=80 * GiB)
    assert torch.cuda.mem_get_info(0) == (GiB, GiB)  # the capacity caps both
    big = blocks.malloc(300 * MiB)
    assert blocks.malloc(100 * MiB)
    blocks.free(big)  # 300 MiB cached, still memfit's
    s = alloc.stats()
    reserved, allocated = s["reserved_bytes"]["current"], s["allocated_bytes"]["current"]
    assert reserved > allocated
    assert torch.cuda.mem_get_info(0) == (GiB - allocated, GiB)
    # The driver has little left: memfit's cache still counts.
    driver.free = 50 * MiB
    assert torch.cuda.mem_get_info(0) == (50 * MiB + reserved - allocated, GiB)
    # A capacity above the device: the device's total.
    alloc.set_capacity(100 * GiB)
    driver.free = 10 * GiB
    assert torch.cuda.mem_get_info(0) == (10 * GiB + reserved - allocated, 80 * GiB)
    assert torch.cuda.memory.mem_get_info is torch.cuda.mem_get_info
    # The driver's own answer stays reachable.
    assert torch_stats.driver_mem_get_info(0) == (10 * GiB, 80 * GiB)
    assert driver.calls and set(driver.calls) == {0}


def test_get_per_process_memory_fraction_reads_the_capacity(routed):
    alloc, _, _ = routed("backend:virtual,capacity:1GiB", total=4 * GiB)
    assert torch.cuda.get_per_process_memory_fraction(0) == 0.25
    alloc.set_capacity(8 * GiB)
    assert torch.cuda.get_per_process_memory_fraction(0) == 1.0


def test_accelerator_memory_functions_read_memfit(routed):
    alloc, _, blocks = routed("backend:virtual,devices:2,capacity:1GiB")
    assert blocks.malloc(3 * MiB, device=1)
    s1 = alloc.stats(1)
    acc = torch.accelerator
    assert acc.memory_allocated(1) == s1["allocated_bytes"]["current"] >= 3 * MiB
    assert acc.max_memory_allocated(1) == s1["allocated_bytes"]["peak"]
    assert acc.memory_reserved(1) == s1["reserved_bytes"]["current"]
    assert acc.max_memory_reserved(1) == s1["reserved_bytes"]["peak"]
    assert acc.memory_allocated(0) == 0
    stats = acc.memory_stats(1)
    assert stats == torch.cuda.memory_stats(1)
    assert list(stats) == sorted(stats)
    assert acc.memory_allocated(torch.device("cuda", 1)) == acc.memory_allocated("cuda:1") == acc.memory_allocated(1)
    assert acc.get_memory_info(1) == torch.cuda.mem_get_info(1) == (GiB - s1["allocated_bytes"]["current"], GiB)
    blocks.free_all()
    acc.reset_peak_memory_stats(1)
    assert acc.max_memory_allocated(1) == 0
    acc.reset_accumulated_memory_stats(1)
    assert acc.memory_stats(1)["allocation.all.allocated"] == 0


def test_unroute_gives_pytorch_its_functions_back():
    import torch.accelerator.memory as amem
    import torch.cuda.memory as mem

    namespaces = {"mem": (mem, ROUTED_CUDA), "cuda": (torch.cuda, ROUTED_CUDA),
                  "amem": (amem, ROUTED_ACCELERATOR), "acc": (torch.accelerator, ROUTED_ACCELERATOR)}
    originals = {(key, name): getattr(ns, name) for key, (ns, names) in namespaces.items() for name in names}
    alloc = memfit.Allocator.create("backend:virtual,capacity:1GiB", "cuda")
    route_cuda_stats(alloc, driver=FakeDriver(GiB, GiB), accelerator=True)
    route_cuda_stats(alloc, driver=FakeDriver(GiB, GiB), accelerator=True)  # idempotent
    try:
        for (key, name), fn in originals.items():
            assert getattr(namespaces[key][0], name) is not fn, f"{key}.{name} was not routed"
        assert torch_stats.routed() is alloc
        assert torch.cuda.mem_get_info.__wrapped__ is originals[("mem", "mem_get_info")]
    finally:
        unroute_cuda_stats()
    for (key, name), fn in originals.items():
        assert getattr(namespaces[key][0], name) is fn, f"{key}.{name} was not restored"
    assert torch_stats.routed() is None


def test_accelerator_is_left_alone_when_it_is_not_cuda():
    assert torch.accelerator.current_accelerator() is None or torch.cuda.is_available()
    if torch.cuda.is_available():
        pytest.skip("this machine's accelerator is CUDA")
    original = torch.accelerator.memory_allocated
    alloc = memfit.Allocator.create("backend:virtual,capacity:1GiB", "cuda")
    route_cuda_stats(alloc, driver=FakeDriver(GiB, GiB))
    try:
        assert torch.accelerator.memory_allocated is original
    finally:
        unroute_cuda_stats()


def test_snapshot_routes_are_called_when_memfit_snapshot_has_them(monkeypatch):
    calls = []
    fake = types.ModuleType("memfit.snapshot")
    fake.route_torch_snapshot = lambda alloc: calls.append(("route", alloc))
    fake.unroute_torch_snapshot = lambda: calls.append(("unroute", None))
    monkeypatch.setitem(sys.modules, "memfit.snapshot", fake)
    alloc = memfit.Allocator.create("backend:virtual,capacity:1GiB", "cuda")
    route_cuda_stats(alloc, driver=FakeDriver(GiB, GiB), accelerator=False)
    unroute_cuda_stats()
    assert calls == [("route", alloc), ("unroute", None)]


def test_routing_works_without_memfit_snapshot(monkeypatch):
    monkeypatch.setitem(sys.modules, "memfit.snapshot", None)  # as if the module did not exist
    alloc = memfit.Allocator.create("backend:virtual,capacity:1GiB", "cuda")
    route_cuda_stats(alloc, driver=FakeDriver(GiB, GiB), accelerator=False)
    try:
        assert torch.cuda.memory_allocated(0) == 0
    finally:
        unroute_cuda_stats()


_PLUGIN_CHILD = """
import ctypes, json, torch
import memfit._lib as L
from memfit.install import PluginAllocator
from memfit.torch_stats import route_cuda_stats
alloc = PluginAllocator()
route_cuda_stats(alloc, driver=lambda device: (10 << 30, 80 << 30), accelerator=True)
out = {"allocated": torch.cuda.memory_allocated(), "stats": torch.cuda.memory_stats()["max_split_size"],
       "info": list(torch.cuda.mem_get_info()), "fraction": torch.cuda.get_per_process_memory_fraction(0)}
torch.cuda.reset_peak_memory_stats()
torch.cuda.reset_accumulated_memory_stats()
torch.accelerator.reset_peak_memory_stats()
out["created_before"] = bool(L.lib().memfit_plugin_allocator_if_created())
f = L.lib().memfit_malloc
f.restype, f.argtypes = ctypes.c_void_p, [ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
assert f(1 << 20, 0, None)
out["created_after"] = bool(L.lib().memfit_plugin_allocator_if_created())
out["allocated_after"] = torch.cuda.memory_allocated(0)
out["real"] = alloc.stats()["allocated_bytes"]["current"]
out["info_after"] = list(torch.cuda.mem_get_info(0))
print(json.dumps(out))
"""


def test_the_plugins_allocator_is_not_created_by_reading_stats():
    result = run_python(["-c", _PLUGIN_CHILD],
                        env=python_env(MEMFIT_CONF="backend:virtual,capacity:1GiB,max_split_size:64MiB"))
    assert result.returncode == 0, describe(result)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # Before PyTorch's first CUDA allocation: memfit's numbers are zeros and the
    # options are those the plugin will read from MEMFIT_CONF; nothing is created.
    assert out["allocated"] == 0 and out["stats"] == 64 * MiB
    assert out["info"] == [GiB, GiB] and out["fraction"] == 1 / 80
    assert out["created_before"] is False
    assert out["created_after"] is True
    assert out["allocated_after"] == out["real"] >= MiB
    assert out["info_after"] == [GiB - out["real"], GiB]
