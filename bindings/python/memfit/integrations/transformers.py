"""memfit for the Hugging Face Trainer: profile its training step on two small
batches, plan for a memory budget, apply the plan to the model and set the
Trainer's batch size.

    from memfit.integrations.transformers import MemfitCallback, fit_trainer

    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[MemfitCallback(budget="8GiB")])
    plan = fit_trainer(trainer)          # before trainer.train(): the batch size is fixed when
    trainer.train()                      # train() builds its dataloader, before any callback runs

or without the callback, `fit_trainer(trainer, budget="8GiB", ...)`. What the
fit leaves behind (memfit as PyTorch's CPU allocator, the model's values as
they were): memfit.integrations. Importing this module does not import
transformers or torch; MemfitCallback and fit_trainer need transformers.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any, Callable, Optional, Sequence, Tuple, Union

from .._lib import MemfitError
from . import (check_budget, check_options, enforce_budget, fit, lazy_class, measured_against_plan, model_device,
               require, same_optimizer)

WHERE = "memfit.integrations.transformers"

_callback_class: Optional[type] = None


def _transformers(where: str = WHERE) -> Any:
    return require("transformers", "transformers", where)


def _job(trainer: Any, where: str, blocks: Union[None, str, Sequence[str]] = None) -> Tuple[Any, str, Optional[int]]:
    """The Trainer's training step as a memfit.Job: its model, batches of the
    train dataset's first examples through its collator (with the columns the
    model does not take removed, as the Trainer's dataloader does), its
    compute_loss and its optimizer class and arguments; with the device and
    the dataset's length (None for an iterable dataset)."""
    from ..job import Job

    transformers = _transformers(where)
    if not isinstance(trainer, transformers.Trainer):
        raise MemfitError(f"{where}: expected a transformers.Trainer, not {type(trainer).__name__}")
    args, model = trainer.args, trainer.model
    if trainer.train_dataset is None:
        raise MemfitError(f"{where}: the Trainer has no train_dataset to take batches from")
    # The new name first: reading the old one warns that it is deprecated.
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    model_checkpoints = getattr(model, name, False)
    if getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False) \
            or model_checkpoints:
        raise MemfitError(f"{where}: the plan decides which layers are checkpointed: turn the Trainer's "
                          "activation_checkpointing (gradient_checkpointing) and the model's off")
    if args.fp16 or args.bf16:
        raise MemfitError(f"{where}: the plan sets each layer's precision (precisions=('fp32', 'bf16')); the "
                          "Trainer's fp16/bf16 autocast of the whole model would override it: turn them off")
    if args.world_size > 1 or args.n_gpu > 1:
        raise MemfitError(f"{where}: fit in a single process on one device (world size {args.world_size}, "
                          f"{args.n_gpu} GPUs here), then start the distributed run with its batch size and plan")
    device = model_device(model, where)

    dataset, collator = trainer.train_dataset, trainer.data_collator
    datasets = sys.modules.get("datasets")  # a datasets.Dataset means the package is imported
    if datasets is not None and isinstance(dataset, datasets.Dataset):
        dataset = trainer._remove_unused_columns(dataset, description="training")
    else:
        collator = trainer._get_collator_with_removed_columns(collator, description="training")
    try:
        length: Optional[int] = len(dataset)
    except (TypeError, NotImplementedError):
        length = None
    if length == 0:
        raise MemfitError(f"{where}: the train dataset is empty")
    if length is not None and not hasattr(dataset, "__getitem__"):
        length = None  # sized but iterable only

    def make_batch(batch_size: int) -> Any:
        if length is not None:  # the first examples, repeated if the dataset is shorter
            features = [dataset[i % length] for i in range(batch_size)]
        else:
            features = list(itertools.islice(iter(dataset), batch_size))
            if len(features) < batch_size:
                raise MemfitError(f"{where}: the train dataset has fewer than {batch_size} examples")
        return collator(features)

    if trainer.optimizer is not None:  # Trainer(optimizers=(opt, sched)): the same class, settings and groups
        optimizer = same_optimizer(trainer.optimizer)
    else:  # what Trainer.create_optimizer will make (its groups differ in weight decay only)
        optimizer_cls, optimizer_kwargs = trainer.get_optimizer_cls_and_kwargs(args, model)

        def optimizer(params: Any) -> Any:
            return optimizer_cls([p for p in params if p.requires_grad], **optimizer_kwargs)

    job = Job(model=model, make_batch=make_batch,
              loss_fn=lambda m, batch: trainer.compute_loss(m, batch), optimizer=optimizer, blocks=blocks)
    job.check(where)
    return job, device, length


def fit_trainer(
    trainer: Any,
    budget: Union[str, int, None] = None,
    batch_sizes: Sequence[int] = (2, 4),
    precisions: Sequence[str] = ("fp32",),
    objective: str = "max-batch",
    global_batch: Optional[int] = None,
    max_batch: Optional[int] = None,
    headroom: Optional[Union[float, str]] = None,
    steps: int = 3,
    warmup_steps: int = 2,
    blocks: Union[None, str, Sequence[str]] = None,
    enforce: bool = False,
    progress: Optional[Callable[[str], None]] = None,
) -> Any:
    """Fit `trainer` (a transformers.Trainer) to `budget` before trainer.train();
    returns the memfit.Plan.

    Profiles the Trainer's own step (trainer.compute_loss on batches of the train
    dataset's first examples through its data collator, the optimizer class and
    arguments the Trainer would create) at `batch_sizes` and `precisions` on the
    model's device, plans for the budget (memfit.plan: `objective`,
    `global_batch`, `max_batch` (default: the dataset's length), `headroom`),
    applies the plan to trainer.model (memfit.apply) and sets
    args.per_device_train_batch_size to the plan's batch (and
    args.gradient_accumulation_steps for objective="global-batch"; a plan's
    `lr_scale` suggestion is not applied). budget=None takes the budget and
    settings of the MemfitCallback among the trainer's callbacks, which then
    holds the profile and the plan. blocks: memfit's units (memfit.Job's
    blocks). enforce=True makes the budget memfit's capacity afterwards.

    The model's weights, buffers, gradients, modes and the RNG states are left
    as they were; on CPU memfit stays PyTorch's CPU allocator (see
    memfit.integrations). With dynamic padding the profile's batches are the
    first examples' lengths: pad to a fixed length, or put the longest first.
    Refused: the Trainer's own activation checkpointing or fp16/bf16 (the plan
    decides both), several processes or GPUs, fp16 layers (no GradScaler).
    """
    if budget is None:
        callbacks = [c for c in getattr(getattr(trainer, "callback_handler", None), "callbacks", [])
                     if _callback_class is not None and isinstance(c, _callback_class)]
        if not callbacks:
            raise MemfitError(f"{WHERE}.fit_trainer: give a budget, or add a MemfitCallback(budget=...) to the Trainer")
        return callbacks[0].fit(trainer)
    where = f"{WHERE}.fit_trainer"
    budget_bytes = check_budget(budget, where)
    check_options(where, batch_sizes, precisions, objective, global_batch)
    _, the_plan = _fit(trainer, budget_bytes, where, batch_sizes, precisions, objective, global_batch,
                          max_batch, headroom, steps, warmup_steps, blocks, enforce, progress)
    return the_plan


def _fit(trainer: Any, budget: int, where: str, batch_sizes: Sequence[int], precisions: Sequence[str],
         objective: str, global_batch: Optional[int], max_batch: Optional[int],
         headroom: Optional[Union[float, str]], steps: int, warmup_steps: int,
         blocks: Union[None, str, Sequence[str]], enforce: bool,
         progress: Optional[Callable[[str], None]]) -> Tuple[Any, Any]:
    from ..planning import apply

    job, device, length = _job(trainer, where, blocks)
    if max_batch is None and length is not None:
        max_batch = max(length, max(batch_sizes))
    prof, the_plan = fit(job, device, budget, where, batch_sizes, precisions, objective, global_batch, max_batch,
                         headroom, steps, warmup_steps, progress)
    apply(trainer.model, the_plan)
    args = trainer.args
    args.per_device_train_batch_size = the_plan.batch_size
    trainer._train_batch_size = args.train_batch_size  # what get_train_dataloader reads
    if objective == "global-batch":
        args.gradient_accumulation_steps = int(the_plan.data.get("grad_accumulation_steps", 1))
    if enforce:
        enforce_budget(budget)
    return prof, the_plan


def _make_callback_class() -> type:
    transformers = _transformers(f"{WHERE}.MemfitCallback")

    class MemfitCallback(transformers.TrainerCallback):
        """A TrainerCallback that carries memfit's settings and results.

            cb = MemfitCallback(budget="8GiB", batch_sizes=(2, 4), precisions=("fp32",), objective="max-batch")
            trainer = Trainer(..., callbacks=[cb])
            cb.fit(trainer)        # or fit_trainer(trainer): profile, plan, apply, set the batch size
            trainer.train()

        The fit must come before train(): the Trainer builds its dataloader, and
        so fixes the batch size, before any callback event. At train begin the
        callback checks that the fit happened and that the batch size is still
        the plan's (else a MemfitError), and resets memfit's peaks; at train end
        `measured` holds memfit's peak allocated and reserved bytes of the run
        beside the plan's prediction. Attributes: `profile`, `plan` (None until
        fitted), `measured`. Options as fit_trainer's."""

        def __init__(self, budget: Union[str, int], batch_sizes: Sequence[int] = (2, 4),
                     precisions: Sequence[str] = ("fp32",), objective: str = "max-batch",
                     global_batch: Optional[int] = None, max_batch: Optional[int] = None,
                     headroom: Optional[Union[float, str]] = None, steps: int = 3, warmup_steps: int = 2,
                     blocks: Union[None, str, Sequence[str]] = None, enforce: bool = False,
                     progress: Optional[Callable[[str], None]] = None) -> None:
            where = f"{WHERE}.MemfitCallback"
            self.budget_bytes = check_budget(budget, where)
            check_options(where, batch_sizes, precisions, objective, global_batch)
            self._fit_options = dict(batch_sizes=tuple(batch_sizes), precisions=tuple(precisions),
                                     objective=objective, global_batch=global_batch, max_batch=max_batch,
                                     headroom=headroom, steps=steps, warmup_steps=warmup_steps, blocks=blocks,
                                     enforce=enforce, progress=progress)
            self.profile: Any = None
            self.plan: Any = None
            self.measured: Optional[dict] = None

        def fit(self, trainer: Any) -> Any:
            """fit_trainer with this callback's settings; returns the plan."""
            self.profile, self.plan = _fit(trainer, self.budget_bytes, f"{WHERE}.MemfitCallback.fit",
                                           **self._fit_options)
            return self.plan

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.plan is None:
                raise MemfitError(f"{WHERE}.MemfitCallback: call fit_trainer(trainer) (or this callback's "
                                  "fit(trainer)) before trainer.train(): the Trainer fixes its batch size when "
                                  "train() builds the dataloader, before any callback runs")
            if args.per_device_train_batch_size != self.plan.batch_size:
                raise MemfitError(f"{WHERE}.MemfitCallback: per_device_train_batch_size is "
                                  f"{args.per_device_train_batch_size}, not the plan's {self.plan.batch_size}")
            from ..install import current

            alloc = current()
            if alloc is not None:
                alloc.reset_peaks()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.measured = measured_against_plan(self.plan, self.budget_bytes)

    MemfitCallback.__module__ = __name__
    return MemfitCallback


# The class derives from its framework's callback class: made on first use.
__getattr__ = lazy_class(globals(), "MemfitCallback", _make_callback_class)


__all__ = ["MemfitCallback", "fit_trainer"]
