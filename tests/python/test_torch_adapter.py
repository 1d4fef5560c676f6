# test_torch_adapter.py — libmemfit_torch.so with real torch: memfit (host backend,
# 64 MiB) installed as PyTorch's CPU allocator counts, frees, raises
# torch.OutOfMemoryError, and uninstalls cleanly. Libraries come from
# $MEMFIT_BUILD_DIR (default <repo>/build) through ctypes.
import ctypes
import gc
import os
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("MEMFIT_BUILD_DIR", REPO / "build"))
LIBMEMFIT = BUILD / "allocator" / "libmemfit.so"
LIBADAPTER = BUILD / "bindings" / "torch" / "libmemfit_torch.so"

if not LIBADAPTER.exists():
    pytest.skip(
        f"{LIBADAPTER} is not built (MEMFIT_BUILD_DIR={BUILD}; configure with MEMFIT_TORCH=AUTO/ON "
        "and without MEMFIT_SANITIZE)",
        allow_module_level=True,
    )
if not LIBMEMFIT.exists():
    pytest.skip(f"{LIBMEMFIT} is not built", allow_module_level=True)

MiB = 1 << 20
MF_ERR_OOM = 2

# mf_stats: the layout the Python package declares (memfit._lib), which its own
# tests hold against the library's struct_size and version.
from memfit._lib import stats_struct  # noqa: E402


def _load():
    mf = ctypes.CDLL(str(LIBMEMFIT), mode=ctypes.RTLD_GLOBAL)
    mt = ctypes.CDLL(str(LIBADAPTER))
    P = ctypes.c_void_p
    mf.mf_allocator_create.argtypes = [ctypes.c_char_p, ctypes.POINTER(P)]
    mf.mf_allocator_create.restype = ctypes.c_int
    mf.mf_get_stats.argtypes = [P, ctypes.c_int, P]
    mf.mf_get_stats.restype = ctypes.c_int
    mf.mf_device_of.argtypes = [P, P]
    mf.mf_device_of.restype = ctypes.c_int
    mf.mf_last_error.restype = ctypes.c_char_p
    mt.memfit_torch_cpu_install.argtypes = [P, ctypes.c_int]
    mt.memfit_torch_cpu_install.restype = ctypes.c_int
    mt.memfit_torch_cpu_uninstall.argtypes = []
    mt.memfit_torch_cpu_uninstall.restype = ctypes.c_int
    mt.memfit_torch_cpu_installed.restype = ctypes.c_int
    mt.memfit_torch_last_error.restype = ctypes.c_char_p
    mt.memfit_torch_built_for.restype = ctypes.c_char_p
    return mf, mt


mf, mt = _load()
if mt.memfit_torch_built_for().decode() != torch.__version__:
    pytest.skip(f"libmemfit_torch.so was built for torch {mt.memfit_torch_built_for().decode()}, "
                f"this is {torch.__version__}", allow_module_level=True)


def create(conf):
    a = ctypes.c_void_p()
    st = mf.mf_allocator_create(conf.encode(), ctypes.byref(a))
    assert st == 0, mf.mf_last_error().decode()
    return a  # never destroyed: tensors may still point into it


def stats(a):
    raw = ctypes.create_string_buffer(4096)  # room for a newer, larger struct
    assert mf.mf_get_stats(a, 0, raw) == 0, mf.mf_last_error().decode()
    stats_type = stats_struct()  # laid out from the library's field lists
    s = stats_type.from_buffer_copy(raw.raw[:ctypes.sizeof(stats_type)])
    assert s.struct_size == ctypes.sizeof(stats_type), "mf_stats is not what its field lists say"
    return s


def allocated(a):
    return stats(a).allocated_bytes.current


def owned(a, t):
    return mf.mf_device_of(a, ctypes.c_void_p(t.untyped_storage().data_ptr())) >= 0


@pytest.fixture(scope="module")
def alloc():
    return create("backend:host,capacity:64MiB")


@pytest.fixture
def installed(alloc):
    assert mt.memfit_torch_cpu_installed() == 0, "a previous test left memfit installed"
    assert mt.memfit_torch_cpu_install(alloc, 0) == 0, mt.memfit_torch_last_error().decode()
    try:
        yield alloc
    finally:
        gc.collect()
        if mt.memfit_torch_cpu_installed():
            assert mt.memfit_torch_cpu_uninstall() == 0, mt.memfit_torch_last_error().decode()


def test_built_for_names_the_running_torch():
    assert mt.memfit_torch_built_for().decode() == torch.__version__


def test_tensor_counted_then_freed(installed):
    a = installed
    assert mt.memfit_torch_cpu_installed() == 1
    before = allocated(a)
    t = torch.empty(3 * MiB, dtype=torch.uint8)
    t.fill_(7)
    assert owned(a, t)
    assert allocated(a) >= before + 3 * MiB
    del t
    assert allocated(a) == before


def test_zero_bytes_get_no_memory(installed):
    a = installed
    allocs = stats(a).allocs
    t = torch.empty(0)
    assert t.untyped_storage().data_ptr() == 0
    assert stats(a).allocs == allocs
    del t


def test_blocks_are_aligned_for_c10(installed):
    # c10::gAlignment is 64 on non-mobile builds; memfit gives 512.
    ts = [torch.empty(n, dtype=torch.uint8) for n in (1, 63, 64, 65, 511, 513, 4097, MiB + 1)]
    assert all(t.untyped_storage().data_ptr() % 64 == 0 for t in ts)


def test_matmul_and_backward(installed):
    a = installed
    allocs = stats(a).allocs
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    x = torch.randn(32, 64)
    ref = x @ model[0].weight.t()
    assert torch.allclose(ref, torch.matmul(x, model[0].weight.T))
    loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (32,)))
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert owned(a, p) and owned(a, p.grad)
    assert stats(a).allocs > allocs


def test_oom_raises_and_the_process_goes_on(installed):
    a = installed
    ooms = stats(a).ooms
    with pytest.raises(torch.OutOfMemoryError) as info:
        torch.empty(100 * MiB, dtype=torch.uint8)
    msg = str(info.value)
    assert msg.startswith("memfit: CPU out of memory"), msg
    assert "memfit: out of memory on device 0" in msg and "capacity" in msg  # memfit's OOM report
    assert stats(a).ooms == ooms + 1
    t = torch.ones(MiB)  # the allocator still serves
    assert owned(a, t) and t.sum().item() == MiB
    del t


def test_uninstall_restores_default_and_frees_late(alloc):
    before = allocated(alloc)
    assert mt.memfit_torch_cpu_install(alloc, 0) == 0, mt.memfit_torch_last_error().decode()
    try:
        kept = torch.ones(2 * MiB, dtype=torch.uint8)
        assert owned(alloc, kept)
    finally:
        assert mt.memfit_torch_cpu_uninstall() == 0, mt.memfit_torch_last_error().decode()
    assert mt.memfit_torch_cpu_installed() == 0
    allocs = stats(alloc).allocs
    fresh = torch.ones(2 * MiB, dtype=torch.uint8)
    assert not owned(alloc, fresh) and stats(alloc).allocs == allocs
    assert allocated(alloc) >= before + 2 * MiB
    del kept  # a memfit tensor freed after uninstall goes back to memfit
    assert allocated(alloc) == before
    del fresh


def test_reinstall_switches_new_allocations(alloc):
    other = create("backend:host,capacity:16MiB")
    before_a, before_b = allocated(alloc), allocated(other)
    assert mt.memfit_torch_cpu_install(alloc, 0) == 0, mt.memfit_torch_last_error().decode()
    try:
        on_a = torch.ones(MiB, dtype=torch.uint8)
        assert mt.memfit_torch_cpu_install(other, 0) == 0, mt.memfit_torch_last_error().decode()
        on_b = torch.ones(MiB, dtype=torch.uint8)
        assert owned(alloc, on_a) and owned(other, on_b) and not owned(alloc, on_b)
    finally:
        assert mt.memfit_torch_cpu_uninstall() == 0, mt.memfit_torch_last_error().decode()
    assert not owned(other, torch.ones(16))  # the default allocator is back, not `alloc`'s adapter
    del on_a, on_b
    assert allocated(alloc) == before_a and allocated(other) == before_b


def test_threads_allocate_concurrently(installed):
    a = installed
    before = allocated(a)
    errors = []

    def work():
        try:
            for _ in range(200):
                t = torch.empty(4096 + 64 * threading.get_ident() % 4096)
                t.fill_(1.0)
                assert owned(a, t)
                del t
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert allocated(a) == before


def test_bad_calls_return_nonzero_with_a_message(alloc):
    assert mt.memfit_torch_cpu_install(None, 0) != 0
    assert b"NULL allocator" in mt.memfit_torch_last_error()
    assert mt.memfit_torch_cpu_install(alloc, 7) != 0
    assert b"out of range" in mt.memfit_torch_last_error()
    assert mt.memfit_torch_cpu_install(create("backend:virtual,capacity:1GiB"), 0) != 0
    assert b"virtual" in mt.memfit_torch_last_error()
    assert mt.memfit_torch_cpu_installed() == 0
    assert mt.memfit_torch_cpu_uninstall() != 0
    assert b"not installed" in mt.memfit_torch_last_error()
