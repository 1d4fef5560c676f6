# test_snapshot.py — memfit's PyTorch memory snapshot: `profile --snapshot` and
# `verify --snapshot` in child processes write pickles that PyTorch's own
# `python -m torch.cuda._memory_viz stats|trace_plot|segment_plot` open, whose
# frames name the job's layers and categories, whose blocks sum to memfit's
# allocated bytes and whose trace replays back from the final state; in
# process: memfit.snapshot() against the allocator, a pending free on a
# virtual allocator, and the routed torch.cuda.memory functions.
from __future__ import annotations

import collections
import ctypes
import gc
import importlib
import json
import pickle
import pickletools
from pathlib import Path

import pytest

from conftest import adapter_problem, describe, finish_python, start_python

torch = pytest.importorskip("torch")

import memfit  # noqa: E402
from memfit import _lib  # noqa: E402
from memfit.allocator import Allocator  # noqa: E402

snapshot_mod = importlib.import_module("memfit.snapshot")  # memfit.snapshot stays the function

JOB_FILE = (Path(__file__).resolve().parent / "jobs" / "tiny_mlp.py").read_text()
# verify needs a plan; this one checkpoints fc2.
PLAN = {"format": "memfit-plan", "version": 1, "batch_size": 8, "predicted_peak_bytes": 1 << 20,
        "layers": [{"name": "fc1", "checkpoint": False, "precision": "fp32"},
                   {"name": "act", "checkpoint": False, "precision": "fp32"},
                   {"name": "fc2", "checkpoint": True, "precision": "fp32"}]}
# The pickle opcodes MemoryViz.js (pytorch.org/memory_viz) reads; it refuses others.
VIEWER_OPCODES = {
    "PROTO", "FRAME", "STOP", "MARK", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "DICT", "LIST", "TUPLE",
    "TUPLE1", "TUPLE2", "TUPLE3", "SETITEM", "SETITEMS", "APPEND", "APPENDS", "MEMOIZE", "BINPUT",
    "LONG_BINPUT", "BINGET", "LONG_BINGET", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "NONE",
    "NEWTRUE", "NEWFALSE", "SHORT_BINUNICODE", "BINUNICODE",
}
CATEGORIES = set(_lib.CATEGORIES)


# ------------------------------------------------------------------ helpers


def tag_of(frames):
    """(layer, category, phase) from memfit's frames."""
    by_kind = {f["name"]: f["filename"] for f in frames}
    assert set(by_kind) == {"layer", "category", "phase"}, frames
    assert all(f["line"] == 0 for f in frames)
    return by_kind["layer"], by_kind["category"], by_kind["phase"]


def allocated_sum(snap, device=0):
    return sum(b["size"] for s in snap["segments"] if s["device"] == device
               for b in s["blocks"] if b["state"] == "active_allocated")


def check_segments(snap):
    """Blocks tile their segments; the per-segment sums are the blocks'."""
    for seg in snap["segments"]:
        at = seg["address"]
        for b in seg["blocks"]:
            assert b["address"] == at and b["size"] > 0
            assert b["state"] in ("active_allocated", "active_pending_free", "inactive")
            assert 0 <= b["requested_size"] <= b["size"]
            if b["state"] != "inactive":
                tag_of(b["frames"])
            at += b["size"]
        assert at == seg["address"] + seg["total_size"]
        assert seg["segment_type"] in ("small", "large")
        assert seg["allocated_size"] == sum(b["size"] for b in seg["blocks"] if b["state"] == "active_allocated")
        assert seg["requested_size"] == sum(b["requested_size"] for b in seg["blocks"]
                                            if b["state"] == "active_allocated")


def replay_backward(snap, device=0):
    """Undo the device's trace from the snapshot's state, as memory_viz's segment
    view does, checking that each step is possible: a block freed was not live,
    a block allocated was, a segment mapped held no live block before, and every
    live block lies in a segment. Returns the count of each action."""
    segments = [[s["address"], s["total_size"]] for s in snap["segments"] if s["device"] == device]
    live = {b["address"]: b["size"] for s in snap["segments"] if s["device"] == device
            for b in s["blocks"] if b["state"] != "inactive"}

    def containing(addr, size):
        return next((s for s in segments if s[0] <= addr and addr + max(size, 1) <= s[0] + s[1]), None)

    def add_segment(addr, size):
        assert not any(s[0] < addr + size and addr < s[0] + s[1] for s in segments), f"{addr:#x} mapped twice"
        for s in [s for s in segments if s[0] + s[1] == addr or addr + size == s[0]]:  # runs of granules merge
            segments.remove(s)
            addr, size = min(addr, s[0]), size + s[1]
        segments.append([addr, size])

    pending = {b["address"] for s in snap["segments"] if s["device"] == device
               for b in s["blocks"] if b["state"] == "active_pending_free"}
    for addr, size in live.items():
        assert containing(addr, size), f"live block {addr:#x} outside every segment"
    entries = snap["device_traces"][device]
    for i, e in enumerate(entries):
        if e["action"] != "free_requested":
            continue
        if entries[i + 1]["action"] == "free_completed" and entries[i + 1]["addr"] == e["addr"]:
            continue  # memory_viz pairs them into one free
        # Else the block is still pending, and nothing later touches it.
        assert e["addr"] in pending, f"free of {e['addr']:#x} neither completed nor pending"
        assert not any(later.get("addr") == e["addr"] for later in entries[i + 1:])
    counts = collections.Counter(e["action"] for e in entries)
    for e in reversed(entries):
        action, addr, size = e["action"], e["addr"], e["size"]
        if action == "alloc":
            assert addr in live, f"alloc of {addr:#x} undone, but it is not live"
            del live[addr]
        elif action == "free_completed":
            assert addr not in live, f"free of {addr:#x} undone, but it is live"
            assert containing(addr, size), f"freed block {addr:#x} outside every segment"
            live[addr] = size
        elif action in ("segment_alloc", "segment_map"):
            seg = containing(addr, size)
            assert seg, f"{action} of {addr:#x} undone, but no segment holds it"
            if action == "segment_alloc":
                assert seg == [addr, size]
            assert not any(addr <= b < addr + size for b in live), f"{action} {addr:#x} undone under a live block"
            segments.remove(seg)
            if seg[0] < addr:
                segments.append([seg[0], addr - seg[0]])
            if addr + size < seg[0] + seg[1]:
                segments.append([addr + size, seg[0] + seg[1] - addr - size])
        elif action in ("segment_free", "segment_unmap"):
            add_segment(addr, size)
        else:
            assert action in ("free_requested", "snapshot"), action
    return counts


def check_viewer_can_read(path):
    data = path.read_bytes()
    assert data[:2] == b"\x80\x04", "memory_viz's web viewer reads pickle protocols 2-4"
    used = {op.name for op, _, _ in pickletools.genops(data)}
    assert used <= VIEWER_OPCODES, f"opcodes the web viewer does not know: {used - VIEWER_OPCODES}"


def check_trace_categories(snap):
    """Each alloc/free entry names its category; MemoryViz.js needs "unknown" among them."""
    for trace in snap["device_traces"]:
        cats = {e["category"] for e in trace if "category" in e}
        if cats:
            assert "unknown" in cats
            assert cats - {"unknown"} <= CATEGORIES
        for e in trace:
            if e["action"] in ("alloc", "free_requested", "free_completed"):
                layer, category, _ = tag_of(e["frames"])
                assert category == e["category"]


# ---------------------------------------------------------- the CLI's files


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """`profile --snapshot` and `verify --snapshot`, concurrently, then the three
    memory_viz commands on the profile's pickle."""
    if adapter_problem():
        pytest.skip(adapter_problem())
    d = tmp_path_factory.mktemp("snapshot")
    (d / "job.py").write_text(JOB_FILE)
    (d / "plan.json").write_text(json.dumps(PLAN))
    job = f"{d / 'job.py'}:make"
    profile = start_python(["-m", "memfit", "profile", "--job", job, "--batch-sizes", "2,4", "--steps", "2",
                            "--warmup-steps", "1", "--timing-batches", "none", "--out", str(d / "profile.json"),
                            "--snapshot", str(d / "profile.pickle")], cwd=d)
    verify = start_python(["-m", "memfit", "verify", "--job", job, "--plan", str(d / "plan.json"),
                           "--budget", "1GiB", "--steps", "2", "--json", "--snapshot", str(d / "verify.pickle")], cwd=d)
    out = {"profile": finish_python(profile), "verify": finish_python(verify)}
    if out["profile"].returncode == 0:
        pickle_path = str(d / "profile.pickle")
        viz = {
            "stats": start_python(["-m", "torch.cuda._memory_viz", "stats", pickle_path], cwd=d),
            "trace_plot": start_python(["-m", "torch.cuda._memory_viz", "trace_plot", pickle_path,
                                        "-o", str(d / "trace_plot.html")], cwd=d),
            "segment_plot": start_python(["-m", "torch.cuda._memory_viz", "segment_plot", pickle_path,
                                          "-o", str(d / "segment_plot.html")], cwd=d),
        }
        out.update({name: finish_python(proc) for name, proc in viz.items()})
    return d, out


def load(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def test_profile_snapshot_opens_in_memory_viz(cli_runs):
    d, out = cli_runs
    assert out["profile"].returncode == 0, describe(out["profile"])
    assert f"memory snapshot written to {d / 'profile.pickle'}" in out["profile"].stdout
    stats = out["stats"]
    assert stats.returncode == 0, describe(stats)
    assert "total_reserved:" in stats.stdout and "total_allocated:" in stats.stdout, describe(stats)
    for name in ("trace_plot", "segment_plot"):
        assert out[name].returncode == 0, describe(out[name])
        html = (d / f"{name}.html").read_text()
        assert "add_local_files" in html and len(html) > 2000, html[:500]
    check_viewer_can_read(d / "profile.pickle")


def test_profile_snapshot_names_layers_and_categories(cli_runs):
    d, out = cli_runs
    assert out["profile"].returncode == 0, describe(out["profile"])
    snap = load(d / "profile.pickle")
    held = collections.Counter(tag_of(b["frames"]) for s in snap["segments"] for b in s["blocks"]
                               if b["state"] == "active_allocated")
    # Between steps the model's state is what stays: each Linear's weight and bias,
    # their gradients, and AdamW's two moments and step counter for each.
    for layer in ("fc1", "fc2"):
        assert held[(layer, "parameter", "none")] == 2, held
        assert held[(layer, "gradient", "backward")] == 2, held
        assert held[(layer, "optimizer_state", "optimizer")] == 6, held
    trace = snap["device_traces"][0]
    allocs = collections.Counter(tag_of(e["frames"]) for e in trace if e["action"] == "alloc")
    layers = {t[0] for t in allocs}
    assert {"fc1", "act", "fc2"} <= layers, allocs
    assert {"activation", "temporary", "gradient", "input"} <= {t[1] for t in allocs}, allocs
    assert {"forward", "backward", "optimizer"} <= {t[2] for t in allocs}, allocs
    # Two measured steps of the largest batch (4): each step's input is 4 x 16 floats.
    inputs = [e["size"] for e in trace if e["action"] == "alloc" and e["category"] == "input"]
    assert 4 * 16 * 4 in inputs and len(inputs) == 2 * 2, inputs  # features and labels, per step
    check_trace_categories(snap)


def test_profile_snapshot_sums_and_replays(cli_runs):
    d, out = cli_runs
    assert out["profile"].returncode == 0, describe(out["profile"])
    snap = load(d / "profile.pickle")
    check_segments(snap)
    device = snap["memfit"]["devices"][0]
    assert allocated_sum(snap) == device["allocated_bytes"] > 0
    assert sum(s["total_size"] for s in snap["segments"]) == device["reserved_bytes"]
    assert all(s["is_expandable"] for s in snap["segments"]) == (snap["memfit"]["granule"] > 0)
    counts = replay_backward(snap)
    assert counts["alloc"] > 20 and counts["free_completed"] > 20, counts
    assert snap["allocator_settings"]["backend"] == "host"


def test_verify_snapshot(cli_runs):
    d, out = cli_runs
    result = out["verify"]
    assert result.returncode == 0, describe(result)
    assert json.loads(result.stdout.splitlines()[-1])["oom"] is False
    check_viewer_can_read(d / "verify.pickle")
    snap = load(d / "verify.pickle")
    check_segments(snap)
    assert allocated_sum(snap) == snap["memfit"]["devices"][0]["allocated_bytes"] > 0
    counts = replay_backward(snap)
    assert counts["alloc"] > 0, counts
    trace = snap["device_traces"][0]
    tags = {tag_of(e["frames"]) for e in trace if e["action"] == "alloc"}
    assert {("fc2", "activation", "forward"), ("fc1", "gradient", "backward")} <= tags, tags
    # The measured steps only: one batch of features (8 x 16 floats) each.
    inputs = [e["size"] for e in trace if e["action"] == "alloc" and e["category"] == "input"]
    assert inputs == [8 * 16 * 4] * 2, inputs
    check_trace_categories(snap)
    from torch.cuda import _memory_viz

    assert "total_allocated" in _memory_viz.segsum(snap)


# -------------------------------------------------------------- in process


@pytest.fixture
def no_gc():
    """Cyclic garbage collected at a random moment frees tensors: not between
    two readings that must see one state."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_snapshot_of_the_installed_allocator(memfit_cpu, no_gc):
    alloc = memfit_cpu
    model = torch.nn.Sequential(torch.nn.Linear(24, 48), torch.nn.Tanh(), torch.nn.Linear(48, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tracker = memfit.track(model, optimizer)
    try:
        alloc.trace_start()
        try:
            for _ in range(2):
                optimizer.zero_grad(set_to_none=True)
                model(torch.randn(5, 24)).square().mean().backward()
                optimizer.step()
            snap = memfit.snapshot()  # the trace is recording: it comes along
            allocated_now = alloc.allocated()
        finally:
            alloc.trace_stop()
    finally:
        tracker.remove()
    check_segments(snap)
    assert allocated_sum(snap) == snap["memfit"]["devices"][0]["allocated_bytes"] == allocated_now
    held = {tag_of(b["frames"]) for s in snap["segments"] for b in s["blocks"] if b["state"] == "active_allocated"}
    for layer in ("0", "2"):  # the Sequential's Linear layers, by module path
        assert (layer, "parameter", "none") in held and (layer, "gradient", "backward") in held, held
        assert (layer, "optimizer_state", "optimizer") in held, held  # momentum buffers
    counts = replay_backward(snap)
    assert counts["alloc"] > 0 and counts["snapshot"] == 1, counts
    check_trace_categories(snap)
    after = memfit.snapshot(trace=None)  # stopped: this trace need not lead to the state any more
    assert after["device_traces"] == [[]]
    assert memfit.snapshot(trace=False)["device_traces"] == [[]]
    del model, optimizer


def test_snapshot_writes_the_file(memfit_cpu, no_gc, tmp_path):
    path = tmp_path / "s.pickle"
    x = torch.ones(1000)
    snap = memfit.snapshot(path)
    assert load(path) == snap
    check_viewer_can_read(path)
    assert any(b["address"] <= x.untyped_storage().data_ptr() < b["address"] + b["size"]
               and b["state"] == "active_allocated" for s in snap["segments"] for b in s["blocks"])


@pytest.mark.needs_lib
def test_pending_free_and_segments_on_a_virtual_allocator():
    alloc = Allocator.create("backend:virtual,vmm:off", "cpu")
    lib = _lib.lib()
    lib.mf_record_stream.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
    lib.mf_record_stream.restype = ctypes.c_int
    alloc.trace_start(1000)
    with memfit.tag("encoder.layers.1", "backward", "temporary"):
        p = lib.mf_malloc(alloc.handle, 0, 3 << 20, 0x11)
        q = lib.mf_malloc(alloc.handle, 0, 100, 0x11)
    assert p and q
    assert lib.mf_record_stream(alloc.handle, p, 0x22) == _lib.MF_OK
    assert lib.mf_free(alloc.handle, p) == _lib.MF_OK
    snap = memfit.snapshot(allocator=alloc)
    check_segments(snap)
    block = next(b for s in snap["segments"] for b in s["blocks"] if b["address"] == p)
    assert block["state"] == "active_pending_free" and block["requested_size"] == 3 << 20
    assert tag_of(block["frames"]) == ("encoder.layers.1", "temporary", "backward")
    assert {s["stream"] for s in snap["segments"]} == {0x11}
    assert {s["segment_type"] for s in snap["segments"]} == {"small", "large"}
    assert not any(s["is_expandable"] for s in snap["segments"])  # vmm:off: segments
    actions = replay_backward(snap)
    # p's free waits on stream 0x22's event: requested, not completed.
    assert actions["segment_alloc"] == 2 and actions["alloc"] == 2, actions
    assert actions["free_requested"] == 1 and actions["free_completed"] == 0, actions
    seg_sizes = {s["segment_type"]: s["active_size"] for s in snap["segments"]}
    assert seg_sizes["large"] >= 3 << 20  # a pending block is active, not allocated
    assert snap["memfit"]["devices"][0]["pending_blocks"] == 1
    from torch.cuda import _memory_viz

    assert "segments: 2" in _memory_viz.segsum(snap)
    assert lib.mf_free(alloc.handle, q) == _lib.MF_OK
    alloc.trace_stop()


# ------------------------------------------------------- torch.cuda, routed


@pytest.fixture
def routed(memfit_cpu):
    originals = {name: getattr(torch.cuda.memory, name)
                 for name in ("_snapshot", "memory_snapshot", "_record_memory_history")}
    snapshot_mod.route_torch_snapshot(memfit_cpu)
    yield memfit_cpu
    snapshot_mod.unroute_torch_snapshot()
    for name, fn in originals.items():
        assert getattr(torch.cuda.memory, name) is fn
    assert torch.cuda.memory_snapshot is originals["memory_snapshot"]


def test_routed_torch_snapshot_returns_memfits(routed, no_gc, tmp_path):
    keep = torch.zeros(4096)
    ours = memfit.snapshot(allocator=routed)
    theirs = torch.cuda.memory._snapshot()
    assert theirs["segments"] == ours["segments"]
    assert theirs["memfit"]["devices"] == ours["memfit"]["devices"]
    assert allocated_sum(theirs) == routed.allocated()
    assert torch.cuda.memory_snapshot() == ours["segments"]
    assert torch.cuda.memory.memory_snapshot(include_traces=False) == ours["segments"]
    assert torch.cuda.memory_snapshot(mempool_id=(1, 2)) == []  # memfit has no private pools
    assert torch.accelerator.memory._snapshot()["segments"] == ours["segments"]  # it calls torch.cuda.memory's
    torch.cuda.memory._dump_snapshot(str(tmp_path / "dump.pickle"))
    assert load(tmp_path / "dump.pickle")["segments"] == ours["segments"]
    del keep


def test_record_memory_history_under_memfit(routed):
    def recording():
        return snapshot_mod.memfit_snapshot_json(routed)["trace"]["recording"]

    assert not recording()
    torch.cuda.memory._record_memory_history()  # "all": memfit's trace records the history
    assert recording()
    x = torch.empty(777)
    snap = torch.cuda.memory._snapshot()
    allocs = [e for e in snap["device_traces"][0] if e["action"] == "alloc"]
    assert any(e["size"] == 777 * 4 for e in allocs), allocs
    replay_backward(snap)
    torch.cuda.memory._record_memory_history(enabled=None)
    assert not recording()
    assert torch.cuda.memory._snapshot()["device_traces"] == [[]]
    torch.cuda.memory._record_memory_history("state")  # the state is always recorded: nothing to switch
    torch.cuda.memory._record_memory_history(True)  # the legacy signature: state only
    assert not recording()
    torch.cuda.memory._record_memory_history(True, True, 1000)  # legacy, with a history
    assert recording()
    torch.cuda.memory._record_memory_history(False)
    assert not recording()
    with pytest.raises(memfit.MemfitError, match="expected enabled"):
        torch.cuda.memory._record_memory_history("everything")
    # A trace someone else started (memfit.profile's) is neither restarted nor stopped.
    routed.trace_start(10_000)
    y = torch.empty(333)
    torch.cuda.memory._record_memory_history("all", max_entries=50)
    torch.cuda.memory._record_memory_history(None)
    assert recording()
    assert any(e["size"] == 333 * 4 for e in torch.cuda.memory._snapshot()["device_traces"][0]
               if e["action"] == "alloc")
    routed.trace_stop()
    del x, y


@pytest.mark.needs_lib
def test_snapshot_before_the_cuda_allocator_exists():
    """The CUDA plugin's allocator is created at PyTorch's first CUDA allocation
    (creating it initializes CUDA): a snapshot before that is empty and creates nothing."""
    install = importlib.import_module("memfit.install")  # memfit.install is the function
    if not hasattr(install, "PluginAllocator"):
        pytest.skip("this memfit creates the CUDA allocator at install")
    plugin = install.PluginAllocator()
    if plugin.created:
        pytest.skip("the plugin's allocator exists in this process")
    snap = memfit.snapshot(allocator=plugin)
    assert snap["segments"] == [] and snap["device_traces"] == [[]]
    assert not plugin.created
