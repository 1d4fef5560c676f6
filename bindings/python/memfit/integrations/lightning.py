"""memfit for Lightning: a Callback that, when fit starts, profiles the
LightningModule's training_step on two small batches, plans for a memory
budget, applies the plan to the module and sets the batch size where
Lightning's own BatchSizeFinder sets it.

    from memfit.integrations.lightning import MemfitBatchSizeFinder

    trainer = lightning.pytorch.Trainer(callbacks=[MemfitBatchSizeFinder(budget="8GiB")])
    trainer.fit(module, datamodule)     # trains at the plan's batch, with the plan applied

The batch size is the `batch_size` attribute (batch_arg_name) of the module,
its hparams, the datamodule or the datamodule's hparams, all of those that
have it (lightning_setattr); the train dataloader must read it, as for
BatchSizeFinder. What the fit leaves behind (memfit as PyTorch's CPU allocator,
the module's values as they were): memfit.integrations. Importing this module
does not import lightning or torch.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

from .._lib import MemfitError
from . import (check_budget, check_options, cuda_devices_of, enforce_budget, fit, kept_rng, lazy_class,
               measured_against_plan, model_device, require, same_optimizer, stash, unstash)

WHERE = "memfit.integrations.lightning"
PREFIX = "module."  # the LightningModule's path inside the step module memfit profiles

_callback_class: Optional[type] = None


def _pl(where: str = WHERE) -> Any:
    """lightning.pytorch, or the older pytorch_lightning package."""
    try:
        return importlib.import_module("lightning.pytorch")
    except ImportError:
        pass
    try:
        return importlib.import_module("pytorch_lightning")
    except ImportError:
        return require("lightning.pytorch", "lightning", where)


def _sub(pl: Any, name: str) -> Any:
    return importlib.import_module(f"{pl.__name__}.{name}")


def _step_module(pl_module: Any) -> Any:
    """An nn.Module whose forward is the LightningModule's training_step and
    returns its loss: the model memfit profiles (training_step may call any of
    the module's children, not its forward)."""
    import torch

    class TrainingStep(torch.nn.Module):
        def __init__(self, module: Any) -> None:
            super().__init__()
            self.module = module

        def forward(self, batch: Any) -> Any:
            out = self.module.training_step(batch, 0)
            if isinstance(out, dict):
                out = out.get("loss")
            if not isinstance(out, torch.Tensor):
                raise MemfitError(f"{WHERE}: training_step must return the loss (a tensor, or a dict with 'loss') "
                                  f"to be profiled, not {type(out).__name__}")
            return out

    return TrainingStep(pl_module)


@contextlib.contextmanager
def _quiet(pl_module: Any) -> Iterator[None]:
    """self.log / self.log_dict do nothing while the profile runs training_step:
    its steps are not the run's."""
    names = ("log", "log_dict")
    saved = {n: pl_module.__dict__[n] for n in names if n in pl_module.__dict__}

    def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    for n in names:
        object.__setattr__(pl_module, n, nothing)
    try:
        yield
    finally:
        for n in names:
            if n in saved:
                object.__setattr__(pl_module, n, saved[n])
            else:
                del pl_module.__dict__[n]


def _check(trainer: Any, pl_module: Any, batch_arg_name: str, where: str, optimizers: bool = True) -> None:
    pl = _pl(where)
    parsing = _sub(pl, "utilities.parsing")
    if trainer.world_size > 1:
        raise MemfitError(f"{where}: fit in a single process (world size {trainer.world_size} here), then start the "
                          "distributed run with the plan's batch size")
    if not trainer.fit_loop._data_source.is_module():
        raise MemfitError(f"{where}: the batch size is set through {batch_arg_name!r} of the module or datamodule: "
                          "define train_dataloader() there instead of passing dataloaders to fit()")
    if not parsing.lightning_hasattr(pl_module, batch_arg_name):
        raise MemfitError(f"{where}: {batch_arg_name!r} is not an attribute of the module, its hparams, the datamodule "
                          "or its hparams (batch_arg_name names it; the train dataloader must read it)")
    if not pl_module.automatic_optimization:
        raise MemfitError(f"{where}: memfit profiles training_step's loss with backward and one optimizer step: "
                          "manual optimization is not supported")
    if optimizers and len(trainer.optimizers) != 1:  # made after setup, before on_fit_start
        raise MemfitError(f"{where}: memfit profiles one optimizer, and configure_optimizers gave "
                          f"{len(trainer.optimizers)}")
    if str(trainer.precision) not in ("32-true", "32"):
        raise MemfitError(f"{where}: the plan sets each layer's precision (precisions=('fp32', 'bf16')); the "
                          f"Trainer's precision={trainer.precision!r} autocasts the whole module and would override "
                          "it: use precision='32-true'")


def _batches(trainer: Any, pl_module: Any, batch_arg_name: str, sizes: Sequence[int],
             where: str) -> Tuple[Dict[int, Any], Optional[int]]:
    """One batch of each size from the train dataloader, built with the batch
    size attribute set to it (then set back), kept in host memory outside
    torch's allocator; and the train dataset's length (None if unknown)."""
    pl = _pl(where)
    parsing = _sub(pl, "utilities.parsing")
    data = _sub(pl, "utilities.data")
    CombinedLoader = _sub(pl, "utilities.combined_loader").CombinedLoader
    request = _sub(pl, "trainer.connectors.data_connector")._request_dataloader
    original = parsing.lightning_getattr(pl_module, batch_arg_name)
    out: Dict[int, Any] = {}
    length: Optional[int] = None
    try:
        for b in sizes:
            parsing.lightning_setattr(pl_module, batch_arg_name, b)
            loader = request(trainer.fit_loop._data_source)
            combined = loader if isinstance(loader, CombinedLoader) else CombinedLoader(loader, "max_size_cycle")
            if length is None:
                try:
                    length = int(combined._dataset_length())
                except (NotImplementedError, TypeError, AttributeError):
                    length = None
            iterator = iter(combined)
            try:
                batch = next(iterator)[0]  # (batch, batch_idx, dataloader_idx)
            except StopIteration:
                raise MemfitError(f"{where}: the train dataloader is empty") from None
            finally:
                combined.reset()  # its workers, if any, stop now
            got = data.extract_batch_size(batch)
            if got != b:
                raise MemfitError(f"{where}: with {batch_arg_name}={b} the train dataloader gave a batch of {got}: it "
                                  f"must read {batch_arg_name!r} (and the dataset have at least {b} examples)")
            out[b] = stash(batch)
            del batch, iterator, combined, loader
    finally:
        parsing.lightning_setattr(pl_module, batch_arg_name, original)
    return out, length


def _prefixed(blocks: Union[None, str, Sequence[str]]) -> Union[None, str, Sequence[str]]:
    if blocks is None:
        return None
    if isinstance(blocks, str):
        return rf"{PREFIX[:-1]}\.(?:{blocks})"
    return [PREFIX + b for b in blocks]


def _unprefixed(the_plan: Any) -> Any:
    """The plan with layer names relative to the LightningModule."""
    from ..planning import Plan

    layers = [dict(layer, name=layer["name"][len(PREFIX):] if layer["name"].startswith(PREFIX) else layer["name"])
              for layer in the_plan.layers]
    return Plan(dict(the_plan.data, layers=layers))


def _fit(trainer: Any, pl_module: Any, budget: int, where: str, batch_arg_name: str, batch_sizes: Sequence[int],
         precisions: Sequence[str], objective: str, global_batch: Optional[int], max_batch: Optional[int],
         headroom: Optional[Union[float, str]], steps: int, warmup_steps: int,
         blocks: Union[None, str, Sequence[str]], enforce: bool,
         progress: Optional[Callable[[str], None]]) -> Tuple[Any, Any]:
    from ..job import Job
    from ..planning import apply

    pl = _pl(where)
    parsing = _sub(pl, "utilities.parsing")
    _check(trainer, pl_module, batch_arg_name, where)
    device = model_device(pl_module, where)
    with kept_rng(cuda_devices_of(pl_module)):  # a shuffling sampler draws its seed
        stashed, length = _batches(trainer, pl_module, batch_arg_name, batch_sizes, where)
    to_device = getattr(pl_module, "_on_before_batch_transfer", None)

    def make_batch(batch_size: int) -> Any:
        # As the fit loop hands a batch to training_step. A size not fetched yet
        # (the profile's timing ladder) is fetched from the dataloader as the others.
        if batch_size not in stashed:
            with kept_rng(cuda_devices_of(pl_module)):
                stashed.update(_batches(trainer, pl_module, batch_arg_name, [batch_size], where)[0])
        batch = unstash(stashed[batch_size])
        batch = trainer.precision_plugin.convert_input(batch)
        if to_device is not None:
            batch = to_device(batch, dataloader_idx=0)
        return trainer.strategy.batch_to_device(batch, dataloader_idx=0)

    job = Job(model=_step_module(pl_module), make_batch=make_batch, loss_fn=lambda m, batch: m(batch),
              optimizer=same_optimizer(trainer.optimizers[0]), blocks=_prefixed(blocks))
    job.check(where)
    if max_batch is None and length is not None:
        max_batch = max(length, max(batch_sizes))
    with _quiet(pl_module):
        prof, the_plan = fit(job, device, budget, where, batch_sizes, precisions, objective, global_batch,
                             max_batch, headroom, steps, warmup_steps, progress, timing_max_batch=length)
    stashed.clear()  # the host copies of the batches go now
    del job
    the_plan = _unprefixed(the_plan)
    apply(pl_module, the_plan)
    parsing.lightning_setattr(pl_module, batch_arg_name, the_plan.batch_size)
    if objective == "global-batch":
        trainer.accumulate_grad_batches = int(the_plan.data.get("grad_accumulation_steps", 1))
    # Dataloaders built before (configure_optimizers may have asked for
    # estimated_stepping_batches) are rebuilt with the new batch size.
    trainer.fit_loop._combined_loader = None
    trainer.fit_loop.epoch_loop.val_loop._combined_loader = None
    if enforce:
        enforce_budget(budget)
    return prof, the_plan


def _make_callback_class() -> type:
    pl = _pl(f"{WHERE}.MemfitBatchSizeFinder")

    class MemfitBatchSizeFinder(pl.Callback):
        """Fit the run to a memory budget when fit starts (on_fit_start, as
        Lightning's BatchSizeFinder): profile training_step at `batch_sizes`
        and `precisions` (one batch of each size from the train dataloader,
        the Trainer's optimizer's class, settings and groups), plan for
        `budget` (memfit.plan: `objective`, `global_batch`, `max_batch`
        (default: the dataset's length), `headroom`), apply the plan to the
        LightningModule and set `batch_arg_name` (and accumulate_grad_batches
        for objective="global-batch"; a plan's lr_scale suggestion is not
        applied). `blocks`: memfit's units, as paths in the LightningModule.
        enforce=True makes the budget memfit's capacity for the run.

        Attributes after the fit: `optimal_batch_size` (as BatchSizeFinder's),
        `profile`, `plan` (layer names relative to the LightningModule; the
        profile's start with 'module.'), and at the end of fit `measured`:
        memfit's peak allocated and reserved bytes of the run beside the plan's
        prediction. Refused: several processes, dataloaders passed to fit(),
        manual optimization, several optimizers, a precision other than
        '32-true' (the plan decides it per layer), fp16 layers."""

        def __init__(self, budget: Union[str, int], batch_sizes: Sequence[int] = (2, 4),
                     precisions: Sequence[str] = ("fp32",), objective: str = "max-batch",
                     global_batch: Optional[int] = None, max_batch: Optional[int] = None,
                     headroom: Optional[Union[float, str]] = None, batch_arg_name: str = "batch_size",
                     steps: int = 3, warmup_steps: int = 2, blocks: Union[None, str, Sequence[str]] = None,
                     enforce: bool = False, progress: Optional[Callable[[str], None]] = None) -> None:
            where = f"{WHERE}.MemfitBatchSizeFinder"
            self.budget_bytes = check_budget(budget, where)
            check_options(where, batch_sizes, precisions, objective, global_batch)
            self._options = dict(batch_arg_name=batch_arg_name, batch_sizes=tuple(batch_sizes),
                                 precisions=tuple(precisions), objective=objective, global_batch=global_batch,
                                 max_batch=max_batch, headroom=headroom, steps=steps, warmup_steps=warmup_steps,
                                 blocks=blocks, enforce=enforce, progress=progress)
            self.optimal_batch_size: Optional[int] = None
            self.profile: Any = None
            self.plan: Any = None
            self.measured: Optional[dict] = None

        def setup(self, trainer: Any, pl_module: Any, stage: Optional[str] = None) -> None:
            if stage in (None, "fit"):  # refused before the model is set up
                _check(trainer, pl_module, self._options["batch_arg_name"], f"{WHERE}.MemfitBatchSizeFinder",
                       optimizers=False)

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            self.profile, self.plan = _fit(trainer, pl_module, self.budget_bytes, f"{WHERE}.MemfitBatchSizeFinder",
                                           **self._options)
            self.optimal_batch_size = self.plan.batch_size
            from ..install import current

            alloc = current()
            if alloc is not None:
                alloc.reset_peaks()

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            self.measured = measured_against_plan(self.plan, self.budget_bytes)

    MemfitBatchSizeFinder.__module__ = __name__
    return MemfitBatchSizeFinder


# The class derives from its framework's callback class: made on first use.
__getattr__ = lazy_class(globals(), "MemfitBatchSizeFinder", _make_callback_class)


__all__ = ["MemfitBatchSizeFinder"]
