"""The plain baselines: what the benchmarks compare vilab against, written without vilab.

Every plain reference implementation lives here once, and the benchmarks import it from
here (their shared helpers come from ``common.py``):

- seed 004's VAEs (REFERENCE.md §3) as one writes them in plain PyTorch:
  ``nn.Sequential`` MLPs (:func:`mlp`), reparameterization, the Bernoulli log-likelihood
  by ``binary_cross_entropy_with_logits``, and the analytic KL (:class:`PlainVAE`) or a
  MADE-based IAF (:class:`PlainIAF`: gated update, sigmoid bias +2, order reversed
  between steps, the context added in the MADE's first layer);
- their eager training step (:func:`vae_step`: forward, ``zero_grad``, backward, the
  optimizer's step, optionally an EMA), with torch's own optimizers
  (:func:`plain_optimizer`) and batches cut by indexing (:func:`shuffled_batches`) or
  drawn from a ``DataLoader`` (:func:`cycle`);
- the per-image importance-sampling loop (:func:`plain_log_px`: the K samples of one
  image at once, a log-sum-exp, the next image);
- the reverse-KL training step of a flow library's model (:func:`reverse_kl_step`).

No vilab code runs here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

PIXELS = 784
LATENT, HIDDEN = 128, 256  # seed 004
SampleFn = Callable[[int], tuple[Tensor, Tensor]]  # n -> (z, log q(z)), n draws


# -- seed 004's models --------------------------------------------------------------------------
def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """Seed 004's network shape: ``n_in``-``hidden``-``hidden``-``n_out``, ReLU between."""
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_out),
    )


class PlainVAE(nn.Module):
    """Seed 004's mean-field VAE as one writes it without a library."""

    def __init__(self, latent: int = LATENT, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.encoder = mlp(PIXELS, hidden, 2 * latent)
        self.decoder = mlp(latent, hidden, PIXELS)

    def loss(self, x: Tensor) -> Tensor:
        """−ELBO averaged over the batch: BCE-with-logits + analytic KL, one z per image."""
        loc, rho = self.encoder(x).chunk(2, dim=-1)
        scale = F.softplus(rho)
        z = loc + scale * torch.randn_like(loc)
        logits = self.decoder(z)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        kl = (0.5 * (loc.pow(2) + scale.pow(2) - 1.0) - scale.log()).sum(-1)
        return (rec + kl).mean()

    @torch.no_grad()
    def log_weights(self, x: Tensor, samples: int) -> Tensor:
        """log p(x, z_k) − log q(z_k | x) for K = ``samples`` draws, one image ``(784,)``."""
        loc, rho = self.encoder(x).chunk(2, dim=-1)
        scale = F.softplus(rho)
        eps = torch.randn(samples, loc.shape[-1], device=loc.device)
        z = loc + scale * eps
        logits = self.decoder(z)
        log_lik = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
        # log N(z; 0, I) − log N(z; loc, scale²); the (D/2) log 2π terms cancel
        return log_lik - 0.5 * z.pow(2).sum(-1) + 0.5 * eps.pow(2).sum(-1) + scale.log().sum()


class PlainMADE(nn.Module):
    """A MADE ``z (..., D) -> (m, s)``, each ``(..., D)``, with the context ``h`` added to
    the first hidden layer: hidden unit degrees cycle through 1..D−1; output i sees only
    inputs earlier than i in ``order``. Gated IAF initialization: small output weights,
    the bias of s at +2."""

    def __init__(self, dim: int, hidden: Sequence[int], context: int, reverse: bool) -> None:
        super().__init__()
        order = torch.arange(dim).flip(0) if reverse else torch.arange(dim)
        degrees = [order + 1, *(torch.arange(h) % max(1, dim - 1) + 1 for h in hidden)]
        self.layers = nn.ModuleList(nn.Linear(len(a), len(b)) for a, b in zip(degrees, degrees[1:]))
        self.out = nn.Linear(hidden[-1], 2 * dim)
        self.context = nn.Linear(context, hidden[0], bias=False)
        for i, (a, b) in enumerate(zip(degrees, degrees[1:])):
            self.register_buffer(f"mask{i}", (b[:, None] >= a[None, :]).float())
        out_degrees = (order + 1).repeat(2)
        self.register_buffer("mask_out", (out_degrees[:, None] > degrees[-1][None, :]).float())
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
            self.out.bias[dim:].fill_(2.0)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        a = z
        for i, layer in enumerate(self.layers):
            a = F.linear(a, layer.weight * getattr(self, f"mask{i}"), layer.bias)
            a = F.elu(a + self.context(h) if i == 0 else a)
        m, s = F.linear(a, self.out.weight * self.mask_out, self.out.bias).chunk(2, dim=-1)
        return m, s


class PlainIAF(nn.Module):
    """Seed 004's IAF VAE as one writes it without a library: the encoder's 256 features
    give (loc, softplus scale) of z₀ and the context of every IAF step."""

    def __init__(self, latent: int = LATENT, hidden: int = HIDDEN, steps: int = 2) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(PIXELS, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, 2 * latent)
        self.flows = nn.ModuleList(
            PlainMADE(latent, [hidden, hidden], hidden, reverse=k % 2 == 1) for k in range(steps)
        )
        self.decoder = mlp(latent, hidden, PIXELS)
        self.latent = latent

    def _log_w(self, x: Tensor, eps_shape: Sequence[int]) -> Tensor:
        """log p(x, z) − log q(z | x) at z = IAF(loc + scale ε); the (D/2) log 2π of the
        prior and of q₀ cancel."""
        h = self.encoder(x)
        loc, rho = self.head(h).chunk(2, dim=-1)
        scale = F.softplus(rho)
        eps = torch.randn(*eps_shape, device=x.device)
        z = loc + scale * eps
        log_q = -0.5 * eps.pow(2).sum(-1) - scale.log().sum(-1)
        for made in self.flows:
            m, s = made(z, h)
            gate = torch.sigmoid(s)
            z = gate * z + (1.0 - gate) * m
            log_q = log_q - F.logsigmoid(s).sum(-1)
        logits = self.decoder(z)
        log_lik = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
        return log_lik - 0.5 * z.pow(2).sum(-1) - log_q

    def loss(self, x: Tensor) -> Tensor:
        """−ELBO averaged over the batch, one z per image."""
        return -self._log_w(x, (x.shape[0], self.latent)).mean()

    @torch.no_grad()
    def log_weights(self, x: Tensor, samples: int) -> Tensor:
        """The K = ``samples`` log-weights of one image ``(784,)``."""
        return self._log_w(x[None], (samples, self.latent))


PLAIN = {"mean_field": PlainVAE, "iaf": PlainIAF}  # seed 004's presets by name


@torch.no_grad()
def copy_parameters(source: nn.Module, target: nn.Module) -> None:
    """vilab's weights into the plain model: the same parameters in the same order."""
    a, b = list(source.parameters()), list(target.parameters())
    if len(a) != len(b) or any(p.shape != q.shape for p, q in zip(a, b)):
        raise ValueError(
            f"not the same model: {[tuple(p.shape) for p in a]} vs {[tuple(q.shape) for q in b]}"
        )
    for p, q in zip(a, b):
        q.copy_(p)


# -- training ------------------------------------------------------------------------------------
def plain_optimizer(model: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    """Seed 004's optimizer ``name`` straight from torch (its default implementation):
    centered RMSprop or Adam."""
    if name == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=lr, centered=True)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    raise ValueError(f"seed 004's presets use rmsprop or adam, not {name!r}")


def shuffled_batches(data: Tensor, batch: int, full_only: bool = False) -> Iterator[Tensor]:
    """Shuffled batches of ``data`` cut by plain tensor indexing on its device, epoch after
    epoch (with ``full_only``, an epoch's last, smaller batch is left out)."""
    end = len(data) - batch + 1 if full_only else len(data)
    while True:
        perm = torch.randperm(len(data), device=data.device)
        for i in range(0, end, batch):
            yield data[perm[i : i + batch]]


def cycle(loader: Iterable[Any]) -> Iterator[Any]:
    """Batches of ``loader`` without end, a new shuffled epoch each pass."""
    while True:
        yield from loader


def update(loss: Tensor, optimizer: torch.optim.Optimizer, skip_nonfinite: bool = False) -> Tensor:
    """One optimizer update from ``loss``: ``zero_grad``, backward, step (both skipped for
    a non-finite loss with ``skip_nonfinite``, as the flow libraries' examples do).
    Returns the loss, detached; nothing is read back to the host."""
    optimizer.zero_grad(set_to_none=True)
    if not skip_nonfinite or torch.isfinite(loss):
        loss.backward()
        optimizer.step()
    return loss.detach()


def vae_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Any],
    ema: float | None = None,
) -> Callable[[], tuple[int, Tensor]]:
    """One eager step of the plain loop: the next batch (a tensor, or the ``(x,)`` of a
    ``TensorDataset``), ``model.loss``, :func:`update`, and with ``ema`` an exponential
    moving average of the weights (torch's ``AveragedModel``). Returns (images, loss on
    the device)."""
    averaged = None
    if ema is not None:
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True)

    def step() -> tuple[int, Tensor]:
        x = next(batches)
        if isinstance(x, list | tuple):  # a TensorDataset yields (x,)
            (x,) = x
        loss = update(model.loss(x), optimizer)  # type: ignore[operator]
        if averaged is not None:
            averaged.update_parameters(model)
        return x.shape[0], loss

    return step


def reverse_kl_step(
    sample: SampleFn,
    log_prob: Callable[[Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    samples: int,
    skip_nonfinite: bool = False,
) -> Callable[[], Tensor]:
    """One step of the reverse KL, ``mean(log q(z) − log p̃(z))`` over ``samples`` draws
    ``(z, log q) = sample(samples)``, and :func:`update`. Returns the loss, detached."""

    def step() -> Tensor:
        z, log_q = sample(samples)
        return update((log_q - log_prob(z)).mean(), optimizer, skip_nonfinite)

    return step


# -- evaluation ----------------------------------------------------------------------------------
def log_mean_exp_with_stderr(log_w: Tensor) -> tuple[float, float]:
    """log (1/K) Σ w_k and its delta-method standard error sqrt((mean w² / mean(w)² − 1) / K)."""
    log_w = log_w.double()
    k = log_w.numel()
    a, b = torch.logsumexp(log_w, 0), torch.logsumexp(2.0 * log_w, 0)
    rel_var = torch.expm1((b - 2.0 * a + math.log(k)).clamp_min(0.0))
    return float(a) - math.log(k), math.sqrt(float(rel_var) / k)


def plain_log_px(model: nn.Module, images: Tensor, samples: int) -> tuple[Tensor, Tensor]:
    """The plain evaluation: a loop over images, K samples of each (``model.log_weights``);
    per-image log p̂(x) and its Monte Carlo standard error, ``(N,)`` each."""
    model.eval()
    values, errors = torch.empty(len(images), dtype=torch.float64), torch.empty(len(images))
    for i, x in enumerate(images):
        values[i], errors[i] = log_mean_exp_with_stderr(model.log_weights(x, samples))  # type: ignore[operator]
    model.train()
    return values, errors.double()
