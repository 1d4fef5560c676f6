"""Compute-optimal model size and data (Hoffmann et al., 2022, "Training
Compute-Optimal Large Language Models", the "Chinchilla" paper), with the
parametric loss L(N, D) = E + A / N**alpha + B / D**beta as refitted by
Besiroglu, Erdil, Barnett and You (2024), "Chinchilla Scaling: A replication
attempt" (arXiv:2404.10102). planner/COMPUTE.md has the formulas and their limits.
No torch here."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

from ._lib import MemfitError

# name: (E, A, B, alpha, beta, where it comes from)
FITS: Dict[str, Dict[str, Any]] = {
    # The replication's fit of the paper's Approach 3, on data reconstructed from the
    # paper's Figure 4: consistent with Approaches 1 and 2 (about 20 tokens per parameter).
    "besiroglu2024": {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658,
                      "source": "Besiroglu et al. 2024, Chinchilla Scaling: A replication attempt "
                                "(arXiv:2404.10102), the refitted Approach 3"},
    # The paper's own Approach 3 (its equation 10), which the replication found inconsistent
    # with the paper's Approaches 1 and 2 (and with the paper's own data).
    "hoffmann2022": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28,
                     "source": "Hoffmann et al. 2022, Training Compute-Optimal Large Language Models "
                               "(arXiv:2203.15556), Approach 3"},
}
DEFAULT_FIT = "besiroglu2024"
FLOPS_PER_PARAM_TOKEN = 6.0  # C = 6 N D: forward (2 N D) + backward (4 N D)


def _positive(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise MemfitError(f"memfit chinchilla: {what} must be a positive finite number, not {value!r}")
    return float(value)


def flops_from_budget(usd: float, price: float, gpu_tflops: float, mfu: float) -> float:
    """Training FLOPs bought with `usd` at `price` USD per GPU-hour on GPUs of
    `gpu_tflops` peak TFLOP/s used at model FLOPs utilization `mfu` (0 < mfu <= 1):
    C = usd / price * 3600 * gpu_tflops * 1e12 * mfu."""
    usd = _positive(usd, "--usd")
    price = _positive(price, "--price")
    gpu_tflops = _positive(gpu_tflops, "--gpu-tflops")
    mfu = _positive(mfu, "--mfu")
    if mfu > 1:
        raise MemfitError(f"memfit chinchilla: --mfu must be a fraction in (0, 1], not {mfu!r}")
    return usd / price * 3600.0 * gpu_tflops * 1e12 * mfu


def loss(params: float, tokens: float, fit: str = DEFAULT_FIT) -> float:
    f = FITS[fit]
    return f["E"] + f["A"] / params ** f["alpha"] + f["B"] / tokens ** f["beta"]


def optimal(flops: float, fit: str = DEFAULT_FIT) -> Dict[str, Any]:
    """The N and D minimizing L(N, D) subject to 6 N D = flops:
    N = G (C/6)**(beta/(alpha+beta)), G = (alpha A / (beta B))**(1/(alpha+beta)),
    D = C / (6 N)."""
    flops = _positive(flops, "--flops")
    if fit not in FITS:
        raise MemfitError(f"memfit chinchilla: unknown fit {fit!r} ({', '.join(FITS)})")
    f = FITS[fit]
    a, b = f["alpha"], f["beta"]
    g = (a * f["A"] / (b * f["B"])) ** (1.0 / (a + b))
    params = g * (flops / FLOPS_PER_PARAM_TOKEN) ** (b / (a + b))
    tokens = flops / (FLOPS_PER_PARAM_TOKEN * params)
    return {
        "flops": flops,
        "params": params,
        "tokens": tokens,
        "tokens_per_param": tokens / params,
        "loss": loss(params, tokens, fit),
        "fit": fit,
        "constants": {k: f[k] for k in ("E", "A", "B", "alpha", "beta")},
        "source": f["source"],
        "rule": "C = 6 N D; N, D minimize E + A/N^alpha + B/D^beta",
    }


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def table(result: Dict[str, Any], budget: Optional[Dict[str, float]] = None) -> str:
    c = result["constants"]
    lines = [f"memfit chinchilla: {result['flops']:.3e} training FLOPs"
             + (f" ({budget['usd']:g} USD at {budget['price']:g} USD/GPU-hour = {budget['gpu_hours']:.4g} GPU-hours, "
                f"{budget['gpu_tflops']:g} TFLOP/s peak at {100 * budget['mfu']:g}% MFU)" if budget else ""),
             f"  compute-optimal: {_si(result['params'])} parameters, {_si(result['tokens'])} tokens "
             f"({result['tokens_per_param']:.1f} tokens per parameter), C = 6 N D",
             f"  expected loss {result['loss']:.3f} nats/token by L = {c['E']} + {c['A']}/N^{c['alpha']} + "
             f"{c['B']}/D^{c['beta']}",
             f"  fit: {result['source']}"]
    return "\n".join(lines)
