"""A training job as memfit sees it (model, batch maker, loss, optimizer) and
loading one from `FILE.py:FUNC` or `package.module:FUNC`."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

from ._lib import MemfitError


@dataclass
class Job:
    """model: an nn.Module (memfit moves it to the device); make_batch(batch_size)
    returns a batch (tensors, possibly nested; memfit moves them); loss_fn(model,
    batch) returns the scalar loss; optimizer(params) returns a torch optimizer.
    blocks (optional): the modules the planner decides on, as a regular
    expression over module paths or a list of paths (default: the model's
    repeated blocks, found as memfit.blocks.find_units describes).
    loader (optional): loader(batch_size) returns an iterable of batches (a
    DataLoader, typically); memfit.profile measures the samples per second it
    delivers (memfit.loader.measure_loader) and the plan says whether the
    planned step would wait for data (planner/COMPUTE.md, section 4). The
    profile's steps still use make_batch."""

    model: Any
    make_batch: Callable[[int], Any]
    loss_fn: Callable[[Any, Any], Any]
    optimizer: Callable[[Any], Any]
    blocks: Optional[Union[str, Sequence[str]]] = None
    loader: Optional[Callable[[int], Any]] = None

    def __post_init__(self) -> None:
        self._check_loader("Job")

    def _check_loader(self, where: str) -> None:
        if self.loader is not None and not callable(self.loader):
            raise MemfitError(f"memfit: {where}: loader must be callable (batch_size -> iterable of batches, "
                              f"e.g. lambda b: DataLoader(data, batch_size=b)), not {type(self.loader).__name__}")

    def check(self, where: str = "job") -> None:
        import torch

        if not isinstance(self.model, torch.nn.Module):
            raise MemfitError(f"memfit: {where}: model must be a torch.nn.Module, not {type(self.model).__name__}")
        for name in ("make_batch", "loss_fn", "optimizer"):
            if not callable(getattr(self, name)):
                raise MemfitError(f"memfit: {where}: {name} must be callable")
        self._check_loader(where)
        if self.blocks is not None:
            from .blocks import find_units

            find_units(self.model, self.blocks)  # a pattern that matches nothing is named now


def load_job(spec: str) -> Job:
    """A Job from 'path/to/file.py:FUNC' or 'package.module:FUNC' (FUNC() returns a memfit.Job)."""
    if ":" not in spec:
        raise MemfitError(f"memfit: --job {spec!r}: expected FILE.py:FUNC (e.g. train.py:make_job)")
    target, _, func = spec.rpartition(":")
    if not target.strip():
        raise MemfitError(f"memfit: --job {spec!r}: no file or module before ':' (e.g. train.py:make_job)")
    if not func.isidentifier():
        raise MemfitError(f"memfit: --job {spec!r}: {func!r} is not a function name")
    if target.endswith(".py") or os.sep in target:
        if not os.path.isfile(target):
            raise MemfitError(f"memfit: --job {spec!r}: no such file {target!r}")
        mod_spec = importlib.util.spec_from_file_location(f"memfit_job_{abs(hash(target))}", target)
        if mod_spec is None or mod_spec.loader is None:
            raise MemfitError(f"memfit: --job {spec!r}: cannot load {target!r} as Python")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_spec.name] = module  # dataclasses and pickling look the module up there
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[mod_spec.name]
            raise MemfitError(f"memfit: --job {spec!r}: importing {target!r} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(target)
        except (ImportError, ValueError, TypeError) as e:  # ValueError: a name like '.x' or 'a..b'
            raise MemfitError(f"memfit: --job {spec!r}: cannot import module {target!r}: {e}") from e
    fn = getattr(module, func, None)
    if fn is None:
        raise MemfitError(f"memfit: --job {spec!r}: {target!r} has no function {func!r}")
    if not callable(fn):
        raise MemfitError(f"memfit: --job {spec!r}: {func!r} is not callable")
    job = fn()
    if not isinstance(job, Job):
        raise MemfitError(f"memfit: --job {spec!r}: {func}() returned {type(job).__name__}, not memfit.Job")
    job.check(f"--job {spec}")
    return job
