# test_cudnn_guard.py — memfit.cudnn_guard on a CPU build (the cudnn flags exist
# there too): every way of switching torch.backends.cudnn.benchmark on leaves it
# off and prints one line once; a flag already on is turned off; the guard is
# idempotent and its undo gives PyTorch its setters back.
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from memfit import cudnn_guard  # noqa: E402
from memfit.cudnn_guard import MESSAGE, guard_cudnn_benchmark, unguard_cudnn_benchmark  # noqa: E402


@pytest.fixture
def guarded():
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    yield guard_cudnn_benchmark
    unguard_cudnn_benchmark()
    torch.backends.cudnn.benchmark = before


def test_every_way_of_switching_benchmark_on_leaves_it_off(guarded, capsys):
    guarded()
    assert capsys.readouterr().err == ""  # it was off: nothing to say yet
    torch.backends.cudnn.benchmark = True
    assert torch.backends.cudnn.benchmark is False
    assert capsys.readouterr().err == MESSAGE + "\n"
    with torch.backends.cudnn.flags(enabled=True, benchmark=True):
        assert torch.backends.cudnn.benchmark is False
    torch.backends.cudnn.set_flags(_benchmark=True)
    assert torch._C._get_cudnn_benchmark() is False
    torch._C._set_cudnn_benchmark(True)
    assert torch._C._get_cudnn_benchmark() is False
    assert capsys.readouterr().err == ""  # one line per process, not one per attempt
    torch.backends.cudnn.benchmark = False  # switching it off is untouched
    assert torch.backends.cudnn.benchmark is False
    assert cudnn_guard.state() == {"guarded": True, "warned": True}


def test_benchmark_already_on_is_turned_off(guarded, capsys):
    torch.backends.cudnn.benchmark = True
    assert torch.backends.cudnn.benchmark is True
    guarded()
    assert torch.backends.cudnn.benchmark is False
    assert capsys.readouterr().err == MESSAGE + "\n"


def test_guard_is_idempotent_and_undone(guarded, capsys):
    original = torch._C._set_cudnn_benchmark
    prop = type(torch.backends.cudnn).__dict__["benchmark"]
    original_prop_setter = prop.setter
    guarded()
    wrapped = torch._C._set_cudnn_benchmark
    guarded()
    assert torch._C._set_cudnn_benchmark is wrapped  # not wrapped twice
    torch.backends.cudnn.benchmark = True
    assert torch.backends.cudnn.benchmark is False
    assert capsys.readouterr().err.count("memfit:") == 1
    unguard_cudnn_benchmark()
    assert torch._C._set_cudnn_benchmark is original
    assert prop.setter is original_prop_setter
    assert cudnn_guard.state() == {"guarded": False, "warned": False}
    torch.backends.cudnn.benchmark = True
    assert torch.backends.cudnn.benchmark is True  # PyTorch's own behaviour again
    assert capsys.readouterr().err == ""
    torch.backends.cudnn.benchmark = False
