#!/usr/bin/env python3
"""Write the bundled .mftrace files: synthetic but shape-faithful allocation
traces of training jobs, for memfit-replay (format: benchmarks/README.md).

Each trace is what PyTorch's caching allocator would be asked for by a
training loop under autocast (bf16 activations, fp32 master weights): tensor
sizes are exact products of the model's shapes, and the order of allocations
and frees follows autograd (saved tensors live until their backward node runs,
temporaries die within the op that made them). No PyTorch is needed: the model
is simulated, deterministically from a fixed seed.

    python3 benchmarks/traces/gen_traces.py            # writes next to this file
    python3 benchmarks/traces/gen_traces.py --out DIR  # or into DIR
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SEED = 20261122
CKPT_BATCH, CKPT_STEPS = 16, 20  # gpt_ckpt: checkpointing buys a larger batch
F32, BF16, I64 = 4, 2, 8


@dataclass
class Trace:
    """Collects events; ids are small integers reused after a free, as
    pointers are, which keeps the file small and exercises id reuse."""

    lines: list[str] = field(default_factory=list)
    free_ids: list[int] = field(default_factory=list)
    next_id: int = 0
    live: dict[int, int] = field(default_factory=dict)
    live_bytes: int = 0
    peak_bytes: int = 0
    events: int = 0

    def comment(self, text: str) -> None:
        self.lines.append(f"# {text}")

    def alloc(self, nbytes: int, stream: int = 0) -> int:
        if self.free_ids:
            tid = heapq.heappop(self.free_ids)
        else:
            tid = self.next_id
            self.next_id += 1
        self.live[tid] = nbytes
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self.lines.append(f"alloc {tid} {nbytes}" + (f" {stream}" if stream else ""))
        self.events += 1
        return tid

    def free(self, tid: int) -> None:
        self.live_bytes -= self.live.pop(tid)
        heapq.heappush(self.free_ids, tid)
        self.lines.append(f"free {tid}")
        self.events += 1

    def free_all(self, tids: list[int]) -> None:
        for tid in tids:
            self.free(tid)

    def write(self, path: Path, header: list[str]) -> None:
        text = "".join(f"# {h}\n" for h in header)
        text += f"# events={self.events} peak_requested_bytes={self.peak_bytes}\n"
        path.write_text(text + "\n".join(self.lines) + "\n")


class Params:
    """fp32 parameters with gradients kept from the first backward on (the
    training loop zeroes them in place) and optimizer state made on the
    first step, as torch.optim does."""

    def __init__(self, tr: Trace) -> None:
        self.tr = tr
        self.sizes: dict[str, int] = {}
        self.ids: dict[str, int] = {}
        self.grads: dict[str, int] = {}

    def add(self, name: str, numel: int) -> None:
        self.sizes[name] = numel * F32
        self.ids[name] = self.tr.alloc(numel * F32)

    def accumulate(self, name: str, grad_bf16_bytes: int) -> None:
        """A weight's gradient comes out of the matmul in bf16; autocast's
        cast backward makes the fp32 copy that AccumulateGrad keeps (first
        backward) or adds into .grad and drops (later ones)."""
        tr = self.tr
        g16 = tr.alloc(grad_bf16_bytes)
        g32 = tr.alloc(self.sizes[name])
        tr.free(g16)
        self.accumulate_fp32(name, g32)

    def accumulate_fp32(self, name: str, g32: int) -> None:
        if name in self.grads:
            self.tr.free(g32)
        else:
            self.grads[name] = g32


def clip_grad_norm(tr: Trace, params: Params) -> None:
    """torch.nn.utils.clip_grad_norm_ with foreach: one scalar norm per
    parameter, stacked, reduced, and a clip coefficient."""
    norms = [tr.alloc(F32) for _ in params.sizes]
    stacked = tr.alloc(F32 * len(norms))
    tr.free_all(norms)
    total = tr.alloc(F32)
    tr.free(stacked)
    coef = tr.alloc(F32)
    clamped = tr.alloc(F32)
    tr.free_all([coef, total, clamped])


def adamw_step(tr: Trace, params: Params, state: dict[str, tuple[int, int]]) -> None:
    """torch.optim.AdamW(foreach=True): exp_avg and exp_avg_sq made on the
    first step; every step makes the list exp_avg_sq.sqrt() and frees it."""
    for name, nbytes in params.sizes.items():
        if name not in state:
            state[name] = (tr.alloc(nbytes), tr.alloc(nbytes))
    sqrt = [tr.alloc(nbytes) for nbytes in params.sizes.values()]
    tr.free_all(sqrt)


# --------------------------------------------------------------------- GPT


@dataclass
class GPTConfig:
    layers: int = 12
    d_model: int = 768
    heads: int = 12
    vocab: int = 32000
    max_seq: int = 1024


def gpt_build(tr: Trace, cfg: GPTConfig) -> Params:
    d = cfg.d_model
    p = Params(tr)
    tr.comment(f"model: GPT {cfg.layers} layers, d_model {d}, {cfg.heads} heads, vocab {cfg.vocab}")
    p.add("wte", cfg.vocab * d)  # tied with the LM head
    p.add("wpe", cfg.max_seq * d)
    for i in range(cfg.layers):
        for name, numel in (("ln1.w", d), ("ln1.b", d), ("qkv.w", 3 * d * d), ("qkv.b", 3 * d),
                            ("proj.w", d * d), ("proj.b", d), ("ln2.w", d), ("ln2.b", d),
                            ("fc.w", 4 * d * d), ("fc.b", 4 * d), ("mproj.w", 4 * d * d),
                            ("mproj.b", d)):
            p.add(f"h{i}.{name}", numel)
    p.add("lnf.w", d)
    p.add("lnf.b", d)
    tr.alloc(cfg.max_seq * cfg.max_seq)  # the causal mask buffer (bool), never freed
    return p


def gpt_block_forward(tr: Trace, d: int, N: int, att: int, x: int, cache: list[int],
                      keep: bool = True, early_stop: bool = False) -> tuple[dict[str, int], int | None]:
    """One decoder block on the residual stream x; returns what it saved for
    backward and its output. `cache` is autocast's cast cache (bias casts
    always, weight casts too when they are not saved), freed by the caller
    when the autocast region ends. keep=False is a checkpointed block's
    forward: every saved tensor is dropped once the forward is done with it
    (`used`), and only the input x survives, held by the checkpoint.
    early_stop is the recomputation of non-reentrant checkpoint: it stops
    once the last saved tensor is recomputed, before the final matmul and
    residual run (no output)."""
    s: dict[str, int] = {"x_in": x}  # layer_norm saves its input

    def used(*names: str) -> None:
        if not keep:
            tr.free_all([s.pop(name) for name in names])

    def weight_cast(name: str, nbytes: int) -> None:
        t = tr.alloc(nbytes)
        if keep:
            s[name] = t
        else:
            cache.append(t)

    ln1 = tr.alloc(N * d * F32)
    s["mean1"], s["rstd1"] = tr.alloc(N * F32), tr.alloc(N * F32)
    used("mean1", "rstd1")
    s["h1"] = tr.alloc(N * d * BF16)  # ln output cast to bf16, saved by the qkv matmul
    tr.free(ln1)
    weight_cast("w_qkv", 3 * d * d * BF16)
    cache.append(tr.alloc(3 * d * BF16))
    qkv = tr.alloc(N * 3 * d * BF16)
    used("h1")
    # q, k, v made contiguous per head for the batched matmuls, which save them.
    s["q"], s["k"], s["v"] = (tr.alloc(N * d * BF16) for _ in range(3))
    tr.free(qkv)
    scores = tr.alloc(att * BF16)  # q @ k^T
    used("q", "k")
    scaled = tr.alloc(att * BF16)  # * 1/sqrt(head_dim)
    tr.free(scores)
    masked = tr.alloc(att * BF16)  # masked_fill(-inf)
    tr.free(scaled)
    s["p32"] = tr.alloc(att * F32)  # softmax runs in fp32 under autocast; saved
    tr.free(masked)
    s["p16"] = tr.alloc(att * BF16)  # cast back for p @ v; saved
    used("p32")
    y = tr.alloc(N * d * BF16)
    used("p16", "v")
    s["y"] = tr.alloc(N * d * BF16)  # transpose(1, 2).contiguous(); saved by proj
    tr.free(y)
    weight_cast("w_proj", d * d * BF16)
    cache.append(tr.alloc(d * BF16))
    o = tr.alloc(N * d * BF16)
    used("y")
    s["x_mid"] = tr.alloc(N * d * F32)  # residual add promotes to fp32; saved by ln2
    tr.free(o)
    ln2 = tr.alloc(N * d * F32)
    s["mean2"], s["rstd2"] = tr.alloc(N * F32), tr.alloc(N * F32)
    used("mean2", "rstd2")
    s["h2"] = tr.alloc(N * d * BF16)
    tr.free(ln2)
    weight_cast("w_fc", 4 * d * d * BF16)
    cache.append(tr.alloc(4 * d * BF16))
    s["fc"] = tr.alloc(N * 4 * d * BF16)  # saved by gelu
    used("h2")
    s["gelu"] = tr.alloc(N * 4 * d * BF16)  # saved by the second matmul
    used("fc")
    weight_cast("w_mproj", 4 * d * d * BF16)
    cache.append(tr.alloc(d * BF16))
    if early_stop:  # the second matmul has saved its inputs: nothing more to recompute
        return s, None
    m = tr.alloc(N * d * BF16)
    used("gelu")
    x = tr.alloc(N * d * F32)
    used("x_mid")
    tr.free(m)
    return s, x


def gpt_block_backward(tr: Trace, p: Params, i: int, saved: Callable[[], dict[str, int]],
                       g_x: int, d: int, N: int, att: int) -> int:
    """Backward of block i from the gradient g_x of its output; returns the
    gradient of its input. saved() is called when the first node that
    unpacks a saved tensor runs (the second matmul's): a checkpointed block
    recomputes its forward there."""
    pre = f"h{i}."
    g_m = tr.alloc(N * d * BF16)  # the add's cast backward
    s = saved()
    g_gelu = tr.alloc(N * 4 * d * BF16)
    p.accumulate(pre + "mproj.w", 4 * d * d * BF16)
    p.accumulate(pre + "mproj.b", d * BF16)
    tr.free_all([g_m, s["gelu"], s["w_mproj"]])
    g_fc = tr.alloc(N * 4 * d * BF16)
    tr.free_all([g_gelu, s["fc"]])
    g_h2 = tr.alloc(N * d * BF16)
    p.accumulate(pre + "fc.w", 4 * d * d * BF16)
    p.accumulate(pre + "fc.b", 4 * d * BF16)
    tr.free_all([g_fc, s["h2"], s["w_fc"]])
    g_ln2_in = tr.alloc(N * d * F32)
    tr.free(g_h2)
    g_ln2 = tr.alloc(N * d * F32)
    p.accumulate_fp32(pre + "ln2.w", tr.alloc(d * F32))
    p.accumulate_fp32(pre + "ln2.b", tr.alloc(d * F32))
    tr.free_all([g_ln2_in, s["x_mid"], s["mean2"], s["rstd2"]])
    g_sum = tr.alloc(N * d * F32)  # residual: both paths' gradients added
    tr.free_all([g_x, g_ln2])
    g_x = g_sum
    g_o = tr.alloc(N * d * BF16)
    g_y = tr.alloc(N * d * BF16)
    p.accumulate(pre + "proj.w", d * d * BF16)
    p.accumulate(pre + "proj.b", d * BF16)
    tr.free_all([g_o, s["y"], s["w_proj"]])
    g_yt = tr.alloc(N * d * BF16)
    tr.free(g_y)
    g_p16 = tr.alloc(att * BF16)
    g_v = tr.alloc(N * d * BF16)
    tr.free_all([g_yt, s["p16"], s["v"]])
    g_p32 = tr.alloc(att * F32)
    tr.free(g_p16)
    g_s32 = tr.alloc(att * F32)  # softmax backward
    tr.free_all([g_p32, s["p32"]])
    g_s16 = tr.alloc(att * BF16)
    tr.free(g_s32)
    g_masked = tr.alloc(att * BF16)
    tr.free(g_s16)
    g_scaled = tr.alloc(att * BF16)
    tr.free(g_masked)
    g_q, g_k = tr.alloc(N * d * BF16), tr.alloc(N * d * BF16)
    tr.free_all([g_scaled, s["q"], s["k"]])
    g_qkv = tr.alloc(N * 3 * d * BF16)
    tr.free_all([g_q, g_k, g_v])
    g_h1 = tr.alloc(N * d * BF16)
    p.accumulate(pre + "qkv.w", 3 * d * d * BF16)
    p.accumulate(pre + "qkv.b", 3 * d * BF16)
    tr.free_all([g_qkv, s["h1"], s["w_qkv"]])
    g_ln1_in = tr.alloc(N * d * F32)
    tr.free(g_h1)
    g_ln1 = tr.alloc(N * d * F32)
    p.accumulate_fp32(pre + "ln1.w", tr.alloc(d * F32))
    p.accumulate_fp32(pre + "ln1.b", tr.alloc(d * F32))
    tr.free_all([g_ln1_in, s["x_in"], s["mean1"], s["rstd1"]])
    g_sum = tr.alloc(N * d * F32)
    tr.free_all([g_x, g_ln1])
    return g_sum


def gpt_step(tr: Trace, cfg: GPTConfig, p: Params, adam: dict, batch: int, seq: int, step: int,
             checkpoint: bool = False) -> None:
    """One training step. checkpoint: every block under non-reentrant
    torch.utils.checkpoint (only its input is kept through the forward; its
    backward first recomputes its forward)."""
    B, T, d, h, V = batch, seq, cfg.d_model, cfg.heads, cfg.vocab
    N = B * T
    att = B * h * T * T  # elements of one attention matrix
    tr.comment(f"step {step}: batch {B} seq {T}")
    idx, tgt = tr.alloc(N * I64), tr.alloc(N * I64)

    # ---- forward (autocast bf16). Weight casts are kept by autocast's cache
    # until the forward ends, and beyond by the matmuls that save them.
    tok, pos = tr.alloc(N * d * F32), tr.alloc(T * d * F32)
    x = tr.alloc(N * d * F32)
    tr.free_all([tok, pos])
    bias_casts: list[int] = []  # autocast's cache
    saved: list[dict[str, int]] = []
    for _ in range(cfg.layers):
        s, x_out = gpt_block_forward(tr, d, N, att, x, bias_casts, keep=not checkpoint)
        assert x_out is not None
        saved.append(s)  # a checkpointed block's is just {"x_in": x}
        x = x_out
    x_f = x
    lnf = tr.alloc(N * d * F32)
    mean_f, rstd_f = tr.alloc(N * F32), tr.alloc(N * F32)
    hf = tr.alloc(N * d * BF16)
    tr.free(lnf)
    w_head = tr.alloc(V * d * BF16)  # the tied embedding cast for the LM head
    logits = tr.alloc(N * V * BF16)
    l32 = tr.alloc(N * V * F32)  # cross_entropy runs in fp32
    tr.free(logits)
    logp = tr.alloc(N * V * F32)  # log_softmax output, saved
    tr.free(l32)
    loss, total_weight = tr.alloc(F32), tr.alloc(F32)
    tr.free_all(bias_casts)  # autocast's cache is cleared when the forward ends

    # ---- backward, in reverse; saved tensors die as their node runs.
    g_loss = tr.alloc(F32)
    g_logp = tr.alloc(N * V * F32)
    tr.free_all([g_loss, total_weight])
    g_l32 = tr.alloc(N * V * F32)
    tr.free_all([g_logp, logp])
    g_logits = tr.alloc(N * V * BF16)
    tr.free(g_l32)
    g_hf = tr.alloc(N * d * BF16)
    p.accumulate("wte", V * d * BF16)
    tr.free_all([g_logits, hf, w_head])
    g_lnf = tr.alloc(N * d * F32)
    tr.free(g_hf)
    g_x = tr.alloc(N * d * F32)
    p.accumulate_fp32("lnf.w", tr.alloc(d * F32))
    p.accumulate_fp32("lnf.b", tr.alloc(d * F32))
    tr.free_all([g_lnf, x_f, mean_f, rstd_f])

    def recompute(x_in: int) -> dict[str, int]:
        # checkpoint re-enters autocast for the recomputation: a fresh cache,
        # cleared (bias casts freed) when it stops; weight casts are saved.
        cache: list[int] = []
        s, _ = gpt_block_forward(tr, d, N, att, x_in, cache, early_stop=True)
        tr.free_all(cache)
        return s

    for i in reversed(range(cfg.layers)):
        s = saved[i]
        unpack = (lambda s=s: recompute(s["x_in"])) if checkpoint else (lambda s=s: s)
        g_x = gpt_block_backward(tr, p, i, unpack, g_x, d, N, att)
    g_pos = tr.alloc(T * d * F32)  # summed over the batch
    p.accumulate_fp32("wpe", tr.alloc(cfg.max_seq * d * F32))
    tr.free(g_pos)
    p.accumulate_fp32("wte", tr.alloc(V * d * F32))  # embedding backward, added into .grad
    tr.free_all([g_x, idx, tgt, loss])

    clip_grad_norm(tr, p)
    adamw_step(tr, p, adam)


def gpt_trace(path: Path, steps: int, shape: Callable[[int], tuple[int, int]], what: str,
              checkpoint: bool = False) -> None:
    tr = Trace()
    cfg = GPTConfig()
    p = gpt_build(tr, cfg)
    adam: dict[str, tuple[int, int]] = {}
    shapes = [shape(step) for step in range(steps)]
    for step, (batch, seq) in enumerate(shapes):
        gpt_step(tr, cfg, p, adam, batch, seq, step, checkpoint)
    seqs = sorted({s for _, s in shapes})
    tr.write(path, [
        f"{path.name}: {what}",
        f"GPT-2-small-like: {cfg.layers} layers, d_model {cfg.d_model}, {cfg.heads} heads, "
        f"vocab {cfg.vocab}, fp32 weights, bf16 autocast, AdamW(foreach), grad clipping"
        + (", activation checkpointing of every block (non-reentrant)" if checkpoint else ""),
        f"{steps} steps; batch {shapes[0][0]}; sequence lengths {seqs[0]}..{seqs[-1]}",
        f"written by benchmarks/traces/gen_traces.py (seed {SEED}); see benchmarks/traces/README.md",
    ])


# --------------------------------------------------------------------- CNN


class BucketStager:
    """Gradients staged for an all-reduce on the side stream: a bucket is
    allocated on stream 1 whenever `limit` bytes of gradients are ready."""

    def __init__(self, tr: Trace, limit: int) -> None:
        self.tr, self.limit = tr, limit
        self.buckets: list[int] = []
        self.pending = 0

    def grad_ready(self, nbytes: int) -> None:
        self.pending += nbytes
        if self.pending >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.buckets.append(self.tr.alloc(self.pending, stream=1))
            self.pending = 0


def resnet_trace(path: Path, steps: int, batch: int, image: int) -> None:
    """ResNet-50 (stages of 3, 4, 6, 3 bottlenecks at 4 resolutions: unequal
    stages), channels_last, bf16 autocast, SGD with momentum (foreach).
    Stream 1 is a side stream: the next batch is copied in on it while the
    current one trains, and gradient buckets (25 MiB) are staged on it for
    an all-reduce as backward produces them."""
    rng = random.Random(SEED + 1)
    tr = Trace()
    p = Params(tr)
    tr.comment(f"model: ResNet-50, batch {batch}, {image}x{image}")
    stages = [(64, 256, 3, 1), (128, 512, 4, 2), (256, 1024, 6, 2), (512, 2048, 3, 2)]
    convs: list[tuple[str, int, int, int]] = [("stem", 3, 64, 7)]  # (name, c_in, c_out, k)
    blocks = []
    c_in = 64
    for si, (mid, out, n, stride) in enumerate(stages):
        for bi in range(n):
            name = f"s{si}.b{bi}"
            down = bi == 0
            blocks.append((name, c_in, mid, out, stride if bi == 0 else 1, down))
            convs += [(name + ".c1", c_in, mid, 1), (name + ".c2", mid, mid, 3), (name + ".c3", mid, out, 1)]
            if down:
                convs.append((name + ".down", c_in, out, 1))
            c_in = out
    for name, ci, co, k in convs:
        p.add(name + ".w", ci * co * k * k)
        p.add(name + ".bn.w", co)
        p.add(name + ".bn.b", co)
        tr.alloc(co * F32)  # running_mean buffer
        tr.alloc(co * F32)  # running_var buffer
    p.add("fc.w", 2048 * 1000)
    p.add("fc.b", 1000)
    conv_channels = {name: (ci, co, k) for name, ci, co, k in convs}
    momentum: dict[str, int] = {}
    bucket_limit = 25 * 2**20

    def workspace() -> int:
        # cuDNN's workspace for the algorithm it picked: a few MiB to ~100 MiB.
        return tr.alloc(rng.choice([0, 1, 2, 4, 8, 16, 32, 64, 96]) * 2**20 + rng.randrange(0, 4096, 256))

    def conv_bn(name: str, x: int, hw: int, saved: list[int], relu: bool) -> int:
        """conv (saves its input and the bf16 weight cast) then batch norm
        (saves its input and the batch statistics); ReLU is in place."""
        ci, co, k = conv_channels[name]
        w16 = tr.alloc(ci * co * k * k * BF16)
        ws = workspace()
        c = tr.alloc(batch * hw * hw * co * BF16)
        tr.free(ws)
        mean, invstd = tr.alloc(co * F32), tr.alloc(co * F32)
        y = tr.alloc(batch * hw * hw * co * BF16)
        # The input x is saved too, but belongs to whoever made it.
        saved += [w16, c, mean, invstd, y]
        return y

    next_input = tr.alloc(batch * 3 * image * image * F32, stream=1)
    next_labels = tr.alloc(batch * I64, stream=1)
    for step in range(steps):
        tr.comment(f"step {step}")
        x_in, labels = next_input, next_labels
        # prefetch of the following batch on the side stream
        next_input = tr.alloc(batch * 3 * image * image * F32, stream=1)
        next_labels = tr.alloc(batch * I64, stream=1)
        x16 = tr.alloc(batch * 3 * image * image * BF16)  # autocast's input cast
        saved_all: list[list[int]] = []
        hw = image // 2
        s: list[int] = []
        conv_bn("stem", x16, hw, s, True)
        hw //= 2
        pooled = tr.alloc(batch * hw * hw * 64 * BF16)
        idx = tr.alloc(batch * hw * hw * 64 * I64)  # max_pool indices, saved
        s.append(idx)
        saved_all.append(s)
        x = pooled
        for name, _ci, _mid, _out, stride, down in blocks:
            s = []
            h1 = conv_bn(name + ".c1", x, hw, s, True)
            hw2 = hw // stride
            h2 = conv_bn(name + ".c2", h1, hw2, s, True)
            h3 = conv_bn(name + ".c3", h2, hw2, s, False)
            if down:
                conv_bn(name + ".down", x, hw2, s, False)
            # out += identity and relu_ work in place on h3, which the relu
            # backward keeps (it is in s already).
            saved_all.append(s)
            x, hw = h3, hw2
        pool = tr.alloc(batch * 2048 * BF16)
        w16 = tr.alloc(2048 * 1000 * BF16)
        logits = tr.alloc(batch * 1000 * BF16)
        l32 = tr.alloc(batch * 1000 * F32)
        tr.free(logits)
        logp = tr.alloc(batch * 1000 * F32)
        tr.free(l32)
        loss = tr.alloc(F32)

        # backward, with gradient buckets staged on stream 1
        stager = BucketStager(tr, bucket_limit)
        grad_ready = stager.grad_ready
        g = tr.alloc(batch * 1000 * F32)
        tr.free(logp)
        g16 = tr.alloc(batch * 1000 * BF16)
        tr.free(g)
        g_pool = tr.alloc(batch * 2048 * BF16)
        p.accumulate("fc.w", 2048 * 1000 * BF16)
        p.accumulate("fc.b", 1000 * BF16)
        grad_ready(2048 * 1000 * F32)
        tr.free_all([g16, pool, w16, loss])
        g_x = tr.alloc(batch * hw * hw * 2048 * BF16)  # avg-pool backward
        tr.free(g_pool)
        for (name, ci, _mid, out, stride, down), s in zip(reversed(blocks), reversed(saved_all[1:]), strict=True):
            hw_out = hw
            hw_in = hw * stride
            g_relu = tr.alloc(batch * hw_out * hw_out * out * BF16)
            tr.free(g_x)
            parts = [(name + ".c3", hw_out), (name + ".c2", hw_out), (name + ".c1", hw_in)]
            g = g_relu
            for cname, chw in parts:
                ci_, co_, k_ = conv_channels[cname]
                g_bn = tr.alloc(batch * chw * chw * co_ * BF16)
                p.accumulate_fp32(cname + ".bn.w", tr.alloc(co_ * F32))
                p.accumulate_fp32(cname + ".bn.b", tr.alloc(co_ * F32))
                if g is not g_relu:
                    tr.free(g)
                ws = workspace()
                in_hw = hw_out if cname.endswith(".c3") else hw_in  # c1, c2 read hw_in inputs
                g = tr.alloc(batch * in_hw * in_hw * ci_ * BF16)
                p.accumulate(cname + ".w", ci_ * co_ * k_ * k_ * BF16)
                grad_ready((ci_ * co_ * k_ * k_ + 2 * co_) * F32)
                tr.free_all([ws, g_bn])
            if down:
                ci_, co_, k_ = conv_channels[name + ".down"]
                g_bn = tr.alloc(batch * hw_out * hw_out * co_ * BF16)
                p.accumulate_fp32(name + ".down.bn.w", tr.alloc(co_ * F32))
                p.accumulate_fp32(name + ".down.bn.b", tr.alloc(co_ * F32))
                ws = workspace()
                g_id = tr.alloc(batch * hw_in * hw_in * ci_ * BF16)
                p.accumulate(name + ".down.w", ci_ * co_ * k_ * k_ * BF16)
                grad_ready((ci_ * co_ * k_ * k_ + 2 * co_) * F32)
                tr.free_all([ws, g_bn])
            else:
                g_id = g_relu  # the identity passes the relu's gradient through
            g_sum = tr.alloc(batch * hw_in * hw_in * ci * BF16)
            tr.free(g)
            tr.free(g_id)
            if g_id is not g_relu:
                tr.free(g_relu)
            tr.free_all(s)
            g_x = g_sum
            hw = hw_in
        # stem
        s = saved_all[0]
        g_pool_in = tr.alloc(batch * hw * 2 * hw * 2 * 64 * BF16)  # max_pool backward
        tr.free(g_x)
        g_bn = tr.alloc(batch * hw * 2 * hw * 2 * 64 * BF16)
        tr.free(g_pool_in)
        p.accumulate_fp32("stem.bn.w", tr.alloc(64 * F32))
        p.accumulate_fp32("stem.bn.b", tr.alloc(64 * F32))
        ws = workspace()
        p.accumulate("stem.w", 3 * 64 * 49 * BF16)  # no input gradient for the image
        grad_ready((3 * 64 * 49 + 128) * F32)
        tr.free_all([ws, g_bn])
        tr.free_all(s)
        tr.free_all([pooled, x16, x_in, labels])
        stager.flush()

        # SGD(momentum=0.9, weight_decay=1e-4, foreach=True): the weight
        # decay makes a new list of tensors; momentum buffers from step 0.
        decayed = [tr.alloc(nbytes) for nbytes in p.sizes.values()]
        for name, nbytes in p.sizes.items():
            if name not in momentum:
                momentum[name] = tr.alloc(nbytes)
        tr.free_all(decayed)
        tr.free_all(stager.buckets)
    tr.write(path, [
        f"{path.name}: ResNet-50-like CNN, two streams (stream 1: input prefetch and gradient buckets)",
        f"batch {batch}, {image}x{image}, channels_last bf16 autocast, SGD momentum (foreach); {steps} steps",
        f"written by benchmarks/traces/gen_traces.py (seed {SEED}); see benchmarks/traces/README.md",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    def drifting(batch: int) -> Callable[[int], tuple[int, int]]:
        # A random walk of the sequence length in steps of 64 tokens, as with
        # length-bucketed batches: every step the activations change size.
        # Each trace walks from its own Random(SEED): the same lengths.
        rng = random.Random(SEED)
        seq = [512]

        def shape(step: int) -> tuple[int, int]:
            if step:
                seq[0] = min(1024, max(256, seq[0] + rng.choice([-128, -64, 64, 128])))
            return batch, seq[0]
        return shape

    gpt_trace(args.out / "gpt_varlen.mftrace", 40, drifting(8),
              "GPT training, sequence length drifting between 256 and 1024 (random walk)")
    gpt_trace(args.out / "gpt_fixed.mftrace", 16, lambda step: (8, 512),
              "GPT training at a fixed shape (steady state)")
    resnet_trace(args.out / "resnet_2stream.mftrace", 12, batch=64, image=224)
    gpt_trace(args.out / "gpt_ckpt.mftrace", CKPT_STEPS, drifting(CKPT_BATCH),
              "GPT training with every block checkpointed, sequence length drifting (random walk)",
              checkpoint=True)


if __name__ == "__main__":
    main()
