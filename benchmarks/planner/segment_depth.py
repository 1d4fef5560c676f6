#!/usr/bin/env python3
# segment_depth.py — where checkpoint segments pay: the peak of one training step of GPT-2
# (from config, tiny width) at several depths, its decoder layers checkpointed one by one,
# in pairs and in sqrt(n) segments (memfit.segments), against no checkpointing; one run on
# CPU under memfit's allocator. Writes benchmarks/results/segments-DATE.{md,json}.
"""Usage: python3 benchmarks/planner/segment_depth.py [--depths 16,32,64,128] [--batch 64] [--date YYYY-MM-DD]

A checkpoint segment keeps one input per segment where checkpointing each layer keeps
one per layer, and holds the whole segment's recomputed activations at once in
backward. With x a layer's input and a its activations (what it keeps, not
checkpointed), n layers checkpointed one by one hold about n*x + a at the backward
peak, in pairs n/2*x + 2a: pairs pay past n = 2a/x. The run measures both peaks
and a/x itself (a - x = (no checkpoint - each) / n)."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests" / "python" / "jobs"))

import compare  # noqa: E402  (sets up the package path and the build directory)
import memfit  # noqa: E402
import torch  # noqa: E402
import torch.utils.checkpoint  # noqa: E402

from memfit.documents import Plan  # noqa: E402

SEQ, WIDTH = 32, 64
DEPTHS = (16, 32, 64, 128)


def _gpt2(n: int) -> memfit.Job:
    from real_models import VOCAB, _adamw, _ids
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=n, n_embd=WIDTH, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=VOCAB - 1,
                     eos_token_id=VOCAB - 1, use_cache=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    return memfit.Job(model=GPT2LMHeadModel(cfg), make_batch=lambda b: _ids(b, length=SEQ),
                      loss_fn=lambda m, ids: m(input_ids=ids, labels=ids).loss, optimizer=_adamw)


for _n in DEPTHS:  # the jobs, by name: segment_depth.py:gpt2_16, ...
    globals()[f"gpt2_{_n}"] = (lambda n: (lambda: _gpt2(n)))(_n)


def layered(n: int, segment_of: Callable[[int], Optional[int]]) -> Callable[[torch.nn.Module], None]:
    """Every decoder layer checkpointed; layer i in segment segment_of(i) (None: alone)."""
    layers = []
    for i in range(n):
        layer = {"name": f"transformer.h.{i}", "checkpoint": True, "precision": "fp32"}
        if segment_of(i) is not None:
            layer["segment"] = segment_of(i)
        layers.append(layer)
    return compare.memfit_plan_policy(Plan({"format": "memfit-plan", "version": 1, "batch_size": 1,
                                            "layers": layers}))


def pairs_in_one_call(n: int) -> Callable[[torch.nn.Module], None]:
    """The reference for memfit.segments: each pair run by one torch.utils.checkpoint call from
    its first layer, the second layer passing its input on (a GPT-2 block returns one tensor)."""
    def policy(model: torch.nn.Module) -> None:
        layers = list(model.transformer.h)
        for start in range(0, n - 1, 2):
            first, second = layers[start], layers[start + 1]
            forwards = (first.forward, second.forward)

            def both(h: torch.Tensor, *args: Any, _f=forwards, **kwargs: Any) -> torch.Tensor:
                return _f[1](_f[0](h, *args, **kwargs), *args, **kwargs)

            def opened(h: torch.Tensor, *args: Any, _both=both, **kwargs: Any) -> torch.Tensor:
                if torch.is_grad_enabled():
                    return torch.utils.checkpoint.checkpoint(_both, h, *args, use_reentrant=False, **kwargs)
                return _both(h, *args, **kwargs)
            first.forward = opened
            second.forward = lambda h, *args, **kwargs: h
    return policy


def run(depths: List[int], batch: int) -> List[Dict[str, Any]]:
    runner = compare.Runner(600)
    rows = []
    for n in depths:
        job = f"{Path(__file__).resolve()}:gpt2_{n}"
        size = max(1, round(math.sqrt(n)))
        policies = {"none": None, "each": layered(n, lambda i: None), "pairs": layered(n, lambda i: i // 2),
                    "pairs_one_call": pairs_in_one_call(n), "sqrt": layered(n, lambda i, s=size: i // s)}
        row: Dict[str, Any] = {"layers": n, "sqrt_segment_size": size}
        for name, policy in policies.items():
            r = runner.trial(job, batch, None, policy, warmup=1, steps=1)
            if not r["ok"]:
                raise SystemExit(f"segment_depth: {name} at depth {n} failed: {r}")
            row[name] = r["peak_allocated_bytes"]
        x = batch * SEQ * WIDTH * 4  # a layer's input: the hidden states, fp32
        row["input_bytes"] = x
        row["activations_over_input"] = ((row["none"] - row["each"]) / n + x) / x
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def render(res: Dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"# Checkpoint segments against checkpointing each layer, by depth ({res['date']})", "",
             f"Machine: {m['cpu_model']}, {m['cpus_usable']} CPUs usable, commit {m['git_commit'][:10]}. "
             f"torch {res['torch']}, transformers {res['transformers']}. Produced by "
             f"`python3 benchmarks/planner/segment_depth.py --batch {res['batch']} --depths "
             f"{','.join(str(r['layers']) for r in res['rows'])}`: GPT-2 from config (width {WIDTH}, 4 heads, "
             f"sequence {SEQ}, loss inside forward, AdamW), batch {res['batch']}, one step after one warm-up "
             "under memfit's CPU allocator, peak allocated bytes of the step. `each`: every decoder layer "
             "checkpointed alone; `pairs`: checkpoint segments of two layers; `sqrt`: segments of "
             "round(sqrt(n)) layers, every segment checkpointed (memfit.segments); `one call`: the pairs run by one "
             "torch.utils.checkpoint call each instead (the reference for memfit.segments). a/x: a layer's activations "
             "over its input, from (none - each) / n + x.", "",
             "| layers | no checkpoint | each | pairs | pairs, one call | sqrt(n) (size) | pairs / each | "
             "sqrt / each | a/x | 2a/x |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    mib = 1 << 20
    for r in res["rows"]:
        lines.append(f"| {r['layers']} | {r['none'] / mib:.1f} MiB | {r['each'] / mib:.1f} MiB | "
                     f"{r['pairs'] / mib:.1f} MiB | {r['pairs_one_call'] / mib:.1f} MiB | "
                     f"{r['sqrt'] / mib:.1f} MiB ({r['sqrt_segment_size']}) | "
                     f"{r['pairs'] / r['each']:.3f} | {r['sqrt'] / r['each']:.3f} | "
                     f"{r['activations_over_input']:.1f} | {2 * r['activations_over_input']:.0f} |")
    same = all(r["pairs"] == r["pairs_one_call"] for r in res["rows"])
    lines += ["", "memfit.segments' pairs and one checkpoint call per pair: "
              + ("the same peak to the byte at every depth." if same else "different peaks (see the JSON)."),
              "", "The peaks include the parameters, their gradients and AdamW's state, which grow with the "
              "depth as well."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--out-dir", default=str(HERE.parent / "results"))
    args = ap.parse_args()
    import transformers

    rows = run([int(d) for d in args.depths.split(",")], args.batch)
    res = {"date": args.date, "batch": args.batch, "rows": rows, "torch": torch.__version__,
           "transformers": transformers.__version__, "machine": compare.machine_info()}
    out = Path(args.out_dir)
    (out / f"segments-{args.date}.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / f"segments-{args.date}.md").write_text(render(res))
    print(render(res))


if __name__ == "__main__":
    main()
