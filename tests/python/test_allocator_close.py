# test_allocator_close.py — Allocator.close() and `with`: an allocator created
# here is destroyed (and further use is a clear error); one installed under
# PyTorch, whose tensors may still free into it, is never destroyed.
from __future__ import annotations

import pytest

import memfit
from memfit import _lib
from memfit.allocator import Allocator

pytestmark = pytest.mark.needs_lib


def test_close_destroys_and_later_use_is_named():
    with Allocator.create("backend:virtual,capacity:64MiB") as a:
        p = _lib.lib().mf_malloc(a.handle, 0, 1 << 20, 0)
        assert p and a.stats()["allocated_bytes"]["current"] == 1 << 20
    with pytest.raises(memfit.MemfitError, match="closed"):
        a.stats()
    assert "closed" in repr(a)
    a.close()  # twice: a no-op


def test_an_installed_allocator_is_not_closed(memfit_cpu):
    alloc = memfit.current()
    with pytest.raises(memfit.MemfitError, match="installed under PyTorch"):
        alloc.close()
    assert alloc.stats()["reserved_bytes"]["current"] >= 0  # still alive


def test_a_borrowed_allocator_is_not_closed():
    a = Allocator.create("backend:virtual")
    borrowed = Allocator(a.handle.value, "cuda", owned=False)
    with pytest.raises(memfit.MemfitError, match="not memfit's to destroy"):
        borrowed.close()
    a.close()
