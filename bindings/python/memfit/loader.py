"""The data loader's throughput (planner/COMPUTE.md, section 4): how many samples
per second a job's loader delivers, measured by iterating it with nothing else
running, so the plan can say whether the planned step would wait for data.

A loader is `Job(loader=...)`: a callable batch_size -> iterable of batches (a
torch DataLoader, typically). No torch here: a batch's size is read by duck
typing (`.shape`), so plain Python loaders work as well as tensors and arrays."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Sequence

from ._lib import MemfitError

BATCHES, WARMUP = 16, 2  # the defaults of measure_loader and of the profile


def batch_samples(batch: Any) -> Optional[int]:
    """The samples in a batch: the first dimension of its first tensor (or array),
    looking into tuples, lists and dicts (values in order) depth first; None when
    it holds none with at least one dimension."""
    stack = [batch]
    while stack:
        item = stack.pop(0)
        shape = getattr(item, "shape", None)
        if shape is not None and not isinstance(item, type):
            try:
                if len(shape) >= 1:
                    return int(shape[0])
            except TypeError:
                pass
            continue  # a 0-d tensor: no batch dimension
        if isinstance(item, dict):
            stack[0:0] = list(item.values())
        elif isinstance(item, (list, tuple)):
            stack[0:0] = list(item)
    return None


def _count(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise MemfitError(f"memfit.measure_loader: {name} must be an integer >= {least}, not {value!r}")
    return value


def measure_loader(loader: Callable[[int], Any], batch_size: int, batches: int = BATCHES,
                   warmup: int = WARMUP) -> Dict[str, Any]:
    """Iterate `loader(batch_size)`: take `warmup` batches untimed (worker
    start-up, first-touch caches), then time the next `batches` ones. The samples
    of each timed batch are the first dimension of its first tensor
    (batch_samples), or `batch_size` when it has none. Returns

        {"batch_size", "batches", "warmup", "samples", "seconds",
         "samples_per_second", "samples_from", "num_workers", "pin_memory"}

    samples_per_second = samples / seconds (None if the clock saw no time pass);
    samples_from: "batch" or "batch_size"; num_workers, pin_memory: the
    iterable's own attributes (a DataLoader's), else None. A loader that raises,
    or yields fewer than warmup + batches batches, is a MemfitError saying so."""
    if not callable(loader):
        raise MemfitError(f"memfit.measure_loader: the loader must be callable (batch_size -> iterable of "
                          f"batches), not {type(loader).__name__}")
    _count("batch_size", batch_size, 1)
    _count("batches", batches, 1)
    _count("warmup", warmup, 0)
    what = f"memfit: the loader at batch size {batch_size}"
    try:
        iterable = loader(batch_size)
    except Exception as e:
        raise MemfitError(f"{what}: loader({batch_size}) raised {type(e).__name__}: {e}") from e
    try:
        it = iter(iterable)
    except TypeError:
        raise MemfitError(f"{what}: loader({batch_size}) returned {type(iterable).__name__}, which is not "
                          "iterable (expected an iterable of batches, e.g. a DataLoader)") from None
    need = warmup + batches
    samples, from_batch, got = 0, True, 0
    start = time.perf_counter()
    try:
        while got < need:
            if got == warmup:
                start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                raise MemfitError(f"{what}: it yielded only {got} batches; measuring needs {need} ({warmup} "
                                  f"warm-up + {batches} timed): give a longer loader or fewer batches") from None
            except Exception as e:
                phase = "warm-up" if got < warmup else "timed"
                raise MemfitError(f"{what}: getting batch {got + 1} ({phase}) raised {type(e).__name__}: {e}") from e
            got += 1
            if got > warmup:
                n = batch_samples(batch)
                if n is None:
                    n, from_batch = batch_size, False
                samples += n
            del batch
        seconds = time.perf_counter() - start
    finally:
        close = getattr(it, "close", None)  # a generator: run its finally blocks now
        if callable(close):
            try:
                close()
            except Exception:
                pass
        shutdown = getattr(it, "_shutdown_workers", None)  # a DataLoader's worker processes
        if callable(shutdown):
            try:
                shutdown()
            except Exception:
                pass
        del it
    return {
        "batch_size": batch_size,
        "batches": batches,
        "warmup": warmup,
        "samples": samples,
        "seconds": seconds,
        "samples_per_second": samples / seconds if seconds > 0 else None,
        "samples_from": "batch" if from_batch else "batch_size",
        "num_workers": _attribute(iterable, "num_workers", int),
        "pin_memory": _attribute(iterable, "pin_memory", bool),
    }


def _attribute(obj: Any, name: str, kind: type) -> Any:
    value = getattr(obj, name, None)
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    return value if isinstance(value, bool) else None


def profile_loader(job: Any, batch_sizes: Sequence[int], say: Optional[Callable[[str], None]] = None,
                   batches: int = BATCHES, warmup: int = WARMUP) -> Optional[Dict[str, Any]]:
    """What memfit.profile stores under "loader": measure_loader(job.loader) at
    the largest profiled batch size, or None when the job has no loader."""
    loader = getattr(job, "loader", None)
    if loader is None:
        return None
    b = max(batch_sizes)
    if say:
        say(f"loader at batch {b}: {warmup} warm-up + {batches} timed batches")
    result = measure_loader(loader, b, batches=batches, warmup=warmup)
    if say and result["samples_per_second"] is not None:
        say(f"loader: {result['samples_per_second']:.4g} samples/s")
    return result
