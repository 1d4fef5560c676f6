"""memfit inside training frameworks: fit a Hugging Face Trainer
(`memfit.integrations.transformers`) or a Lightning Trainer
(`memfit.integrations.lightning`) to a memory budget before it trains.

Each integration profiles the framework's own training step on two small
batches (memfit.profile), plans for the budget (memfit.plan), applies the plan
to the model (memfit.apply: which layers are checkpointed, in which precision)
and sets the framework's batch size (and gradient accumulation for the
"global-batch" objective). Importing this package, or either module, imports
neither framework nor torch; using one without its framework raises a
MemfitError that says what to install.

What the fit leaves behind (both integrations):

* the plan's wrappers on the planned modules (memfit.unapply(model) removes them);
* the model's parameters, buffers, gradients, train/eval modes and the RNG
  states (torch's CPU and CUDA generators, Python's `random`, NumPy's global
  one) as they were before the profile's training steps: they are copied to
  host memory outside torch's allocator (NumPy) for the profile and copied back;
* no hooks and no optimizer state (the profile's optimizer is its own, and
  freed); memfit's cache is emptied;
* on CPU, memfit as PyTorch's CPU allocator for the rest of the process
  (memfit.profile installs it if it is not yet): the model's parameters and
  buffers now live in memfit's blocks (moved by memfit.profile, values
  unchanged; a buffer is a new tensor object, a parameter the same Parameter
  object with new storage), and every later CPU tensor is served by memfit.
  memfit.uninstall() gives PyTorch its own allocator back; tensors memfit
  served still free into memfit. On CUDA memfit must already be PyTorch's CUDA
  allocator (PYTORCH_CUDA_ALLOC_CONF=backend:memfit, or memfit.install("cuda")
  before the first CUDA tensor), as for any CUDA profile.

With `enforce=True` the budget also becomes memfit's capacity: going past it
raises torch.OutOfMemoryError with memfit's report instead of using more.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import random
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .._lib import MemfitError, parse_size
from ..documents import predicted_allocated

OBJECTIVES = ("max-batch", "throughput", "global-batch")
PLANNABLE_PRECISIONS = ("fp32", "bf16")  # fp16 layers need a GradScaler the frameworks use only with fp16 AMP


def measured_against_plan(plan: Any, budget_bytes: int) -> Optional[Dict[str, Any]]:
    """The run's peaks so far (memfit's stats) beside the plan's prediction;
    None without an installed memfit or a plan."""
    from ..install import current

    alloc = current()
    if alloc is None or plan is None:
        return None
    stats = alloc.stats()
    d = plan.data
    return {
        "batch_size": plan.batch_size,
        "budget_bytes": budget_bytes,
        "peak_allocated_bytes": stats["allocated_bytes"]["peak"],
        "peak_reserved_bytes": stats["reserved_bytes"]["peak"],
        "predicted_peak_bytes": predicted_allocated(d),
        "predicted_reserved_bytes": d.get("predicted_reserved_bytes"),
    }


def lazy_class(namespace: Dict[str, Any], name: str, make: Callable[[], type]) -> Callable[[str], Any]:
    """A module __getattr__ that makes the class `name` (which derives from its
    framework's callback class) on first use and keeps it in the module as
    `name` and `_callback_class`: importing the module needs no framework."""
    def __getattr__(attr: str) -> Any:
        if attr != name:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {attr!r}")
        if namespace.get("_callback_class") is None:
            namespace["_callback_class"] = make()
        namespace[name] = namespace["_callback_class"]
        return namespace[name]

    return __getattr__


def require(module: str, package: str, where: str) -> Any:
    """Import `module` or raise a MemfitError that says which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MemfitError(f"{where} needs the {package!r} package, which cannot be imported here ({e}); "
                          f"install it (pip install {package})") from e


def check_budget(budget: Union[str, int], where: str) -> int:
    """The budget in bytes; a MemfitError naming it when it is not a size."""
    try:
        nbytes = parse_size(budget, "budget")
    except MemfitError as e:
        raise MemfitError(f"{where}: budget {budget!r} is not a size such as '8GiB' or a number of bytes "
                          f"({e})") from None
    if nbytes <= 0:
        raise MemfitError(f"{where}: budget {budget!r} must be more than 0 bytes")
    return nbytes


def check_options(where: str, batch_sizes: Sequence[int], precisions: Sequence[str], objective: str,
                  global_batch: Optional[int]) -> None:
    """What memfit.profile and memfit.plan would refuse, refused before any profiling."""
    sizes = list(batch_sizes)
    if len(set(sizes)) < 2 or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in sizes):
        raise MemfitError(f"{where}: batch_sizes must be at least two different positive integers (the planner "
                          f"extrapolates from them), not {batch_sizes!r}")
    if isinstance(precisions, str) or not list(precisions):
        raise MemfitError(f"{where}: precisions must be a sequence such as ('fp32', 'bf16'), not {precisions!r}")
    for p in precisions:
        if p == "fp16":
            raise MemfitError(f"{where}: precision 'fp16' needs a GradScaler around the loss, which the trainer "
                              "uses only with fp16 mixed precision on the whole model; use 'bf16'")
        if p not in PLANNABLE_PRECISIONS:
            raise MemfitError(f"{where}: unknown precision {p!r} (known: {', '.join(PLANNABLE_PRECISIONS)})")
    if objective not in OBJECTIVES:
        raise MemfitError(f"{where}: objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    if (objective == "global-batch") != (global_batch is not None):
        raise MemfitError(f"{where}: global_batch=N goes with objective='global-batch', and only with it")


# ----------------------------------------------------------- host stash


class _Stashed:
    """A tensor's bytes in NumPy memory (outside torch's allocator, so outside
    memfit's counts), with what is needed to rebuild it."""

    __slots__ = ("data", "dtype", "shape", "device", "tensor")

    def __init__(self, t: Any) -> None:
        import torch

        src = t.detach()
        self.dtype, self.shape, self.device = src.dtype, tuple(src.shape), src.device
        self.data = self.tensor = None
        np = sys.modules.get("numpy")
        if np is None:
            try:
                import numpy as np  # noqa: F811
            except ImportError:
                np = None
        if np is None or src.layout != torch.strided or src.is_quantized:
            self.tensor = src.to("cpu", copy=True)  # through torch: counted if memfit serves the CPU
            return
        host = src if src.device.type == "cpu" else src.cpu()
        flat = host.resolve_conj().resolve_neg().contiguous().reshape(-1)
        self.data = flat.view(torch.uint8).numpy().copy()

    def view(self) -> Any:
        """A CPU tensor over the stashed bytes (no allocation by torch)."""
        import torch

        if self.tensor is not None:
            return self.tensor
        return torch.from_numpy(self.data).view(self.dtype).reshape(self.shape)

    def materialize(self) -> Any:
        """A fresh tensor (allocated by torch) on the original device."""
        return self.view().to(self.device, copy=True)


def stash(obj: Any) -> Any:
    """`obj` (tensors, possibly nested in lists, tuples, dicts) with every
    tensor's data moved to host memory outside torch's allocator."""
    import torch

    return _map(obj, lambda t: _Stashed(t) if isinstance(t, torch.Tensor) else t)


def unstash(obj: Any) -> Any:
    """Fresh tensors from stash(obj)."""
    return _map(obj, lambda x: x.materialize() if isinstance(x, _Stashed) else x)


def _map(obj: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(obj, dict):
        items = {k: _map(v, fn) for k, v in obj.items()}
        try:
            return type(obj)(items)
        except TypeError:
            return items
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_map(x, fn) for x in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(x, fn) for x in obj)
    return fn(obj)


# ------------------------------------------------------- left as it was


@contextlib.contextmanager
def kept_rng(cuda_devices: Sequence[int] = ()) -> Iterator[None]:
    """torch's CPU generator and those of `cuda_devices`, Python's `random` and
    NumPy's global generator are back as they were on exit."""
    import torch

    python_rng = random.getstate()
    np = sys.modules.get("numpy")
    numpy_rng = np.random.get_state() if np is not None else None
    with torch.random.fork_rng(devices=sorted(cuda_devices), device_type="cuda"):
        try:
            yield
        finally:
            random.setstate(python_rng)
            if numpy_rng is not None:
                np.random.set_state(numpy_rng)


def cuda_devices_of(model: Any) -> List[int]:
    import torch

    return sorted({p.device.index if p.device.index is not None else torch.cuda.current_device()
                   for p in model.parameters() if p.device.type == "cuda"})


@contextlib.contextmanager
def preserved(model: Any) -> Iterator[None]:
    """Inside: the model in train mode, to be trained by the profile. After:
    its parameters' and buffers' values, its gradients, every module's mode and
    the RNG states as they were before (the profile's optimizer steps changed
    the weights and its dropout drew random numbers)."""
    import torch

    params: List[Tuple[Any, _Stashed, Optional[_Stashed]]] = []
    seen = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        params.append((p, _Stashed(p), _Stashed(p.grad) if p.grad is not None else None))
    buffers = [(m, name, _Stashed(b)) for m in model.modules() for name, b in m._buffers.items() if b is not None]
    modes = [(m, m.training) for m in model.modules()]
    with kept_rng(cuda_devices_of(model)):
        try:
            model.train()
            yield
        finally:
            with torch.no_grad():
                for p, value, grad in params:
                    p.copy_(value.view())
                    p.grad = grad.materialize() if grad is not None else None
                for m, name, value in buffers:
                    current = m._buffers.get(name)  # memfit.profile may have replaced it by a copy in memfit
                    if current is not None:
                        current.copy_(value.view())
            for m, mode in modes:
                m.training = mode
            del params, buffers


def model_device(model: Any, where: str) -> str:
    """'cpu' or 'cuda': where the model's parameters are; refused when memfit
    cannot profile there."""
    devices = {p.device.type for p in model.parameters()}
    if not devices:
        raise MemfitError(f"{where}: the model has no parameters")
    if len(devices) > 1:
        raise MemfitError(f"{where}: the model's parameters are on several devices ({', '.join(sorted(devices))}); "
                          "memfit profiles a model on one device")
    device = devices.pop()
    if device not in ("cpu", "cuda"):
        raise MemfitError(f"{where}: the model is on {device!r}; memfit profiles on 'cpu' or 'cuda'")
    from ..install import current

    alloc = current()
    if device == "cuda" and (alloc is None or alloc.device != "cuda"):
        raise MemfitError(f"{where}: the model is on CUDA but memfit is not PyTorch's CUDA allocator: start Python "
                          "with PYTORCH_CUDA_ALLOC_CONF=backend:memfit, or call memfit.install('cuda') before the "
                          "first CUDA tensor (before the model is moved to the GPU)")
    if device == "cpu" and alloc is not None and alloc.device != "cpu":
        raise MemfitError(f"{where}: the model is on the CPU but memfit is installed for {alloc.device}")
    return device


def fit(job: Any, device: str, budget: int, where: str, batch_sizes: Sequence[int], precisions: Sequence[str],
        objective: str, global_batch: Optional[int], max_batch: Optional[int], headroom: Optional[Union[float, str]],
        steps: int, warmup_steps: int, progress: Optional[Callable[[str], None]],
        timing_max_batch: Optional[int] = None) -> Tuple[Any, Any]:
    """Profile `job` with its model left as it was (preserved), then plan for
    `budget`: (Profile, Plan). Nothing is applied here. timing_max_batch: the
    largest batch job.make_batch can make (the profile's timing ladder stops
    there)."""
    from ..install import current
    from ..planning import plan, unapply
    from ..profiling import profile

    unapply(job.model)  # a plan applied earlier is replaced, not profiled
    with preserved(job.model):
        prof = profile(job, device=device, batch_sizes=tuple(batch_sizes), precisions=tuple(precisions),
                       steps=steps, warmup_steps=warmup_steps, progress=progress, timing_max_batch=timing_max_batch)
    gc.collect()
    alloc = current()
    if alloc is not None:
        alloc.empty_cache()
    options: Dict[str, Any] = {"objective": objective, "precisions": list(precisions)}
    if global_batch is not None:
        options["global_batch"] = global_batch
    if max_batch is not None:
        options["max_batch"] = max_batch
    if headroom is not None:
        options["headroom"] = headroom
    return prof, plan(prof, budget, **options)


def same_optimizer(optimizer: Any) -> Callable[[Any], Any]:
    """A factory for a new optimizer like `optimizer`: its class, its
    constructor's settings and its parameter groups (so the same parameters get
    state). The factory ignores the parameters memfit.profile passes (the
    model's: the groups hold the same ones)."""
    import inspect

    cls = type(optimizer)
    try:
        accepted = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - a C-implemented optimizer
        accepted = {}
    any_keyword = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    # Not every default is a constructor argument (AdamW's decoupled_weight_decay).
    kwargs = {k: v for k, v in optimizer.defaults.items() if any_keyword or k in accepted}
    groups = [dict(g) for g in optimizer.param_groups]
    return lambda params: cls([dict(g, params=list(g["params"])) for g in groups], **kwargs)


def enforce_budget(budget: int) -> None:
    """memfit's capacity becomes the budget: going past it is an OOM with memfit's report."""
    from ..install import current

    alloc = current()
    if alloc is None:  # pragma: no cover - fit installed it
        raise MemfitError("memfit: enforce=True: memfit is not installed")
    alloc.set_capacity(budget)
