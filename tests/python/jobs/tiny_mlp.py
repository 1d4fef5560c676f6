"""A three-layer MLP job (fc1, act, fc2) small enough for CLI and snapshot tests
to profile in seconds."""
import torch
import memfit

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.act = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))

def make():
    torch.manual_seed(0)
    return memfit.Job(
        model=Net(),
        make_batch=lambda b: (torch.randn(b, 16), torch.randint(0, 4, (b,))),
        loss_fn=lambda m, batch: torch.nn.functional.cross_entropy(m(batch[0]), batch[1]),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
    )
