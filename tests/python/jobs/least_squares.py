"""Least squares on Gaussian inputs with known noise, for the noise-scale test:
x ~ N(0, I_d), y = x.w* + eps, eps ~ N(0, s^2), loss 0.5 (x.w - y)^2 averaged over
the batch, at weights w = w* + u held still. Its simple noise scale is known in
closed form (tests/python/test_noise_scale.py derives it):
B_simple = tr(Sigma) / |G|^2 = (d + 1) + d s^2 / |u|^2."""
import torch
import memfit

D, NOISE, U_NORM = 4, 1.0, 1.0


def closed_form(d=D, s=NOISE, u_norm=U_NORM):
    return (d + 1) + d * s ** 2 / u_norm ** 2


def make(d=D, s=NOISE, u_norm=U_NORM):
    gen = torch.Generator().manual_seed(1)
    w_star = torch.randn(d, generator=gen)
    u = torch.randn(d, generator=gen)
    u = u / u.norm() * u_norm
    model = torch.nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_((w_star + u).unsqueeze(0))

    def make_batch(b):
        x = torch.randn(b, d)
        return x, x @ w_star + s * torch.randn(b)

    return memfit.Job(
        model=model,
        make_batch=make_batch,
        loss_fn=lambda m, batch: 0.5 * ((m(batch[0]).squeeze(1) - batch[1]) ** 2).mean(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
    )


def make_noiseless():
    return make(s=0.0)
