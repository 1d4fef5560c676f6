"""A small LSTM language model whose residual add is the parent's
(`h = h + lstm(h)[0]`): no test was written around it when it was found that
the planner's model of checkpointing misses it (tests/python/test_checkpoint_check.py)."""
import torch, torch.nn as nn, torch.nn.functional as F
import memfit

class LM(nn.Module):
    def __init__(self, vocab=1000, dim=192, layers=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.rnns = nn.ModuleList([nn.LSTM(dim, dim, batch_first=True) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab)
    def forward(self, x):
        h = self.emb(x)
        for rnn in self.rnns:
            h = h + rnn(h)[0]
        return self.out(self.norm(h))

def make():
    torch.manual_seed(0)
    def batch(b):
        g = torch.Generator().manual_seed(b)
        x = torch.randint(0, 1000, (b, 65), generator=g)
        return x[:, :-1].contiguous(), x[:, 1:].contiguous()
    return memfit.Job(model=LM(), make_batch=batch,
                      loss_fn=lambda m, b: F.cross_entropy(m(b[0]).reshape(-1, 1000), b[1].reshape(-1)),
                      optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
