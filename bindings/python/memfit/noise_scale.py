"""The simple gradient noise scale B_simple = tr(Sigma) / |G|^2 of McCandlish,
Kaplan, Amodei et al. (2018), "An Empirical Model of Large-Batch Training"
(arXiv:1812.06162), measured at a job's current weights (no optimizer step) from
squared gradient norms at two batch sizes, with the unbiased estimators of the
paper's Appendix A:

    |G|^2    ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

Each estimator is averaged over draws (fresh batches from the job's make_batch),
then the ratio is taken; its standard error is the jackknife's over draws. The
job's loss must be the mean over the batch's examples (what the estimators
assume). planner/COMPUTE.md has the details and limits. torch is imported
inside the functions only."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence

from ._lib import MemfitError

DEFAULT_BATCH_SIZES = (4, 64)
DEFAULT_DRAWS = 32


def _grad_sq_norm(job: Any, model: Any, batch_size: int, device: str) -> float:
    import torch

    from .profiling import to_device

    model.zero_grad(set_to_none=True)
    batch = to_device(job.make_batch(batch_size), device)
    loss = job.loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise MemfitError("memfit noise-scale: the job's loss_fn must return a scalar tensor")
    loss.backward()
    total = 0.0
    for p in model.parameters():
        if p.grad is not None:
            total += float(p.grad.detach().double().pow(2).sum())
    model.zero_grad(set_to_none=True)
    return total


def estimate(small_sq: Sequence[float], big_sq: Sequence[float], b_small: int, b_big: int) -> Dict[str, Any]:
    """B_simple from per-draw squared gradient norms at the two batch sizes."""
    n = len(small_sq)
    if n != len(big_sq) or n < 2:
        raise MemfitError("memfit noise-scale: need the same number (>= 2) of draws at both batch sizes")
    if not 0 < b_small < b_big:
        raise MemfitError(f"memfit noise-scale: batch sizes must be SMALL < BIG, not {b_small}, {b_big}")
    g2 = [(b_big * big - b_small * small) / (b_big - b_small) for small, big in zip(small_sq, big_sq)]
    tr = [(small - big) / (1.0 / b_small - 1.0 / b_big) for small, big in zip(small_sq, big_sq)]
    g2_sum, tr_sum = sum(g2), sum(tr)
    g2_mean, tr_mean = g2_sum / n, tr_sum / n

    def ratio(t: float, g: float) -> Optional[float]:
        return t / g if g > 0 and t > 0 else None

    b_simple = ratio(tr_mean, g2_mean)
    stderr = None
    if b_simple is not None:
        leave_one_out = [ratio(tr_sum - tr[i], g2_sum - g2[i]) for i in range(n)]
        if all(x is not None for x in leave_one_out):
            mean = sum(leave_one_out) / n  # type: ignore[arg-type]
            stderr = math.sqrt((n - 1) / n * sum((x - mean) ** 2 for x in leave_one_out))  # type: ignore[operator]

    def se(xs: List[float], mean: float) -> float:
        return math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n)

    return {
        "b_simple": b_simple,
        "b_simple_stderr": stderr,
        "uncertainty": "jackknife standard error over draws",
        "batch_sizes": [b_small, b_big],
        "draws": n,
        "grad_sq_norm": g2_mean,  # |G|^2
        "grad_sq_norm_stderr": se(g2, g2_mean),
        "trace_sigma": tr_mean,  # tr(Sigma)
        "trace_sigma_stderr": se(tr, tr_mean),
        "mean_sq_norm_small": sum(small_sq) / n,
        "mean_sq_norm_big": sum(big_sq) / n,
        "note": None if b_simple is not None else
        ("the |G|^2 estimate is not positive: the gradient is lost in its noise at these batch sizes "
         "(measure with more draws or a larger big batch)" if g2_mean <= 0 else
         "the tr(Sigma) estimate is not positive: the noise is lost at these batch sizes "
         "(measure with more draws or a smaller small batch)"),
    }


def measure(job: Any, device: str = "cpu", batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
            draws: int = DEFAULT_DRAWS, seed: Optional[int] = 0,
            progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """B_simple of `job` (a memfit.Job, or 'FILE.py:FUNC') at its model's current
    weights: `draws` gradients at each of the two batch sizes, each on a fresh batch,
    in fp32, the model in train mode, no optimizer step. seed: torch's seed before
    the draws (None: leave it)."""
    import torch

    from .job import Job, load_job

    if len(batch_sizes) != 2:
        raise MemfitError(f"memfit noise-scale: --batch-sizes takes two sizes SMALL,BIG, not {list(batch_sizes)}")
    b_small, b_big = int(batch_sizes[0]), int(batch_sizes[1])
    if not 0 < b_small < b_big:
        raise MemfitError(f"memfit noise-scale: --batch-sizes {b_small},{b_big}: expected SMALL < BIG")
    if draws < 2:
        raise MemfitError(f"memfit noise-scale: --draws {draws}: expected 2 or more")
    if device == "cuda" and not torch.cuda.is_available():
        raise MemfitError("memfit noise-scale: --device cuda, but CUDA is not available")
    job_obj: Job = load_job(job) if isinstance(job, str) else job
    job_obj.check()
    model = job_obj.model.to(device)
    model.train()
    if seed is not None:
        torch.manual_seed(seed)
    small_sq, big_sq = [], []
    for i in range(draws):
        if progress and (i == 0 or (i + 1) % max(1, draws // 4) == 0):
            progress(f"noise scale: draw {i + 1}/{draws} at batch sizes {b_small} and {b_big}")
        small_sq.append(_grad_sq_norm(job_obj, model, b_small, device))
        big_sq.append(_grad_sq_norm(job_obj, model, b_big, device))
    result = estimate(small_sq, big_sq, b_small, b_big)
    result["device"] = device
    result["seed"] = seed
    result["source"] = "McCandlish et al. 2018, An Empirical Model of Large-Batch Training (arXiv:1812.06162), App. A"
    return result


def table(result: Dict[str, Any]) -> str:
    b_small, b_big = result["batch_sizes"]
    if result["b_simple"] is None:
        head = f"memfit noise-scale: B_simple not measured: {result['note']}"
    else:
        se = result.get("b_simple_stderr")
        head = (f"memfit noise-scale: B_simple = {result['b_simple']:.4g}"
                + (f" +- {se:.2g} (jackknife standard error)" if se is not None else "")
                + f": the critical batch is about {result['b_simple']:.0f}")
    return "\n".join([
        head,
        f"  |G|^2 = {result['grad_sq_norm']:.4g} +- {result['grad_sq_norm_stderr']:.2g}, "
        f"tr(Sigma) = {result['trace_sigma']:.4g} +- {result['trace_sigma_stderr']:.2g}",
        f"  from {result['draws']} draws at batch sizes {b_small} and {b_big} on {result.get('device', '?')}, "
        "at the model's current weights",
    ])
