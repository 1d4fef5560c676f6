"""Models defined in code (no downloads) for the demo, the tests and the
benchmarks: a GPT-style decoder, a CNN with unequal stages and an MLP with one
very wide layer. Each has a job factory for `--job memfit.models:NAME`-style use."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .job import Job


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        # Explicit attention (not the fused kernel) so its memory is the textbook one on every device.
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Embedding(nn.Module):
    def __init__(self, vocab: int, width: int, context: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.tokens(idx) + self.positions(pos)


class GPT(nn.Module):
    """A GPT-style decoder: embedding, `depth` pre-norm blocks, final norm, head."""

    def __init__(self, depth: int = 4, width: int = 128, heads: int = 4, vocab: int = 512, context: int = 64) -> None:
        super().__init__()
        self.context = context
        self.vocab = vocab
        self.embed = Embedding(vocab, width, context)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def gpt_job(depth: int = 4, width: int = 128, heads: int = 4, vocab: int = 512, context: int = 64) -> Job:
    torch.manual_seed(0)
    model = GPT(depth, width, heads, vocab, context)

    def make_batch(batch_size: int):
        g = torch.Generator().manual_seed(batch_size)
        idx = torch.randint(0, vocab, (batch_size, context + 1), generator=g)
        return idx[:, :-1].contiguous(), idx[:, 1:].contiguous()

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        logits = m(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    return Job(model=model, make_batch=make_batch, loss_fn=loss_fn,
               optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))


class CNN(nn.Module):
    """A CNN with unequal stages: wide and shallow at high resolution, narrow and deep later."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()

        def stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
            layers = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            for _ in range(n - 1):
                layers += [nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            return nn.Sequential(*layers)

        self.stem = stage(3, 32, 1, 1)
        self.stage1 = stage(32, 48, 2, 1)
        self.stage2 = stage(48, 64, 1, 2)
        self.stage3 = stage(64, 96, 3, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(96, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for s in (self.stem, self.stage1, self.stage2, self.stage3):
            x = s(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def cnn_job(size: int = 32) -> Job:
    torch.manual_seed(0)

    def make_batch(batch_size: int):
        g = torch.Generator().manual_seed(batch_size)
        return torch.randn(batch_size, 3, size, size, generator=g), torch.randint(0, 10, (batch_size,), generator=g)

    return Job(model=CNN(), make_batch=make_batch,
               loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
               optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9))


class MLP(nn.Module):
    """An MLP with one very wide hidden layer between narrow ones."""

    def __init__(self, inputs: int = 256, narrow: int = 256, wide: int = 4096, classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(inputs, narrow), nn.ReLU(),
            nn.Linear(narrow, wide), nn.ReLU(),
            nn.Linear(wide, narrow), nn.ReLU(),
            nn.Linear(narrow, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def mlp_job(inputs: int = 256, wide: int = 4096) -> Job:
    torch.manual_seed(0)

    def make_batch(batch_size: int):
        g = torch.Generator().manual_seed(batch_size)
        return torch.randn(batch_size, inputs, generator=g), torch.randint(0, 10, (batch_size,), generator=g)

    return Job(model=MLP(inputs, wide=wide), make_batch=make_batch,
               loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
               optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))


def demo_job() -> Job:
    """The demo's model: a 6-block GPT, width 256, context 128 (about 5 M parameters)."""
    return gpt_job(depth=6, width=256, heads=4, vocab=512, context=128)
