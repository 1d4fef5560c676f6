#!/usr/bin/env python3
# term_bends.py — how far each model's per-layer window terms bend between the
# profiled batches: traced at 2, 4 and 16, the largest gap at 16 between a term and
# the line through its values at 2 and 4, as a share of the step's peak at 16.
"""Usage: python3 benchmarks/planner/term_bends.py [JOB ...]   (default: the jobs of
tests/python/jobs/real_models.py and memfit.models)

For each job and precision (fp32, bf16), one line: the largest bend, and the run,
layer and term it is in with its values at 2, 4 and 16 (planner/PLAN.md, "The ladder
check"). Prints only; about 2 minutes on 2 cores."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402,F401  (sets up the package path and the build directory)

from memfit.profiling import profile  # noqa: E402

JOBS = HERE.parents[1] / "tests" / "python" / "jobs" / "real_models.py"
DEFAULT = [f"{JOBS}:{name}" for name in ("gpt2", "llama", "mixtral", "bert", "t5", "unet", "vit", "resnet")] + \
          [f"memfit.models:{name}" for name in ("gpt_job", "cnn_job", "mlp_job")]


def _terms(layer):
    f, b = layer["forward"], layer["backward"]
    return {"fpk": f["peak"] - f["start"], "kept": f["end"] - f["start"],
            "bpk": b["peak"] - b["start"], "bd": b["end"] - b["start"]}


def main() -> int:
    for spec in sys.argv[1:] or DEFAULT:
        for precision in ("fp32", "bf16"):
            prof = profile(spec, batch_sizes=(2, 4, 16), precisions=(precision,), steps=1, warmup_steps=1,
                           selective=False, timing_batches=())
            at = {s["batch_size"]: s for s in prof.settings}
            worst, where = 0.0, ""
            for run in ("plain", "checkpointed"):
                def layers(b, run=run):
                    return at[b]["layers"] if run == "plain" else at[b]["checkpointed"]["layers"]
                for i, layer in enumerate(layers(2)):
                    t2, t4, t16 = _terms(layer), _terms(layers(4)[i]), _terms(layers(16)[i])
                    for k in t2:
                        bend = (t16[k] - (t2[k] + 7 * (t4[k] - t2[k]))) / at[16]["peak_allocated_bytes"]
                        if abs(bend) > abs(worst):
                            worst, where = bend, f"{run} {layer['name']} {k}: {t2[k]}, {t4[k]}, {t16[k]} B"
            print(f"{spec.rsplit('/', 1)[-1]}  {precision}  {100 * worst:+.2f}%  {where}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
