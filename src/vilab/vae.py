"""A VAE is an amortized posterior q(z | x) and a log-joint p(x, z); nothing more.

    h = encoder(x),  z ~ q(z | h),  log w = log p(x, z) − log q(z | x)

Any family of :mod:`vilab.build` is amortized from the encoder's features h
(``context_dim = features``): mean-field (the head is the encoder's last layer), planar,
radial and Sylvester (their parameters are heads on h), IAF (h enters every MADE) — with
no class per flow × model combination (DESIGN.md §4). :func:`vae_objective` turns a batch
into an :class:`~vilab.estimators.objectives.Objective` with the configured estimator.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vilab.build import family_from_config
from vilab.config import NetConfig, ObjectiveConfig, TrainConfig
from vilab.estimators.gradients import log_prob_stop_params
from vilab.estimators.objectives import (
    Objective,
    dreg_objective,
    elbo_objective,
    gaussian_kl_per_dim,
    iwae_objective,
)
from vilab.families.amortized import AmortizedPosterior
from vilab.families.gaussian import MeanFieldGaussian
from vilab.families.semi_implicit import SemiImplicit
from vilab.nets.mlp import MLP
from vilab.targets.latent import DecoderModel

PIXELS = 28 * 28


class VAE(nn.Module):
    """``posterior``: q(z | x) (encoder + amortized family); ``model``: p(x, z)."""

    def __init__(self, posterior: AmortizedPosterior, model: DecoderModel) -> None:
        super().__init__()
        self.posterior, self.model = posterior, model

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    def log_weights(self, x: Tensor, n: int, h: Tensor | None = None) -> Tensor:
        """``log p(x, z) − log q(z | x)`` for n samples per image, ``(n, B)``."""
        h = self.posterior.context(x) if h is None else h
        z, log_q = self.posterior.family.rsample_and_log_prob(n, h)
        return self.model.log_joint(x, z) - log_q

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean of p(x | z) at one sample z ~ q(z | x), ``(B, 784)``."""
        z, _ = self.posterior.rsample_and_log_prob(1, x)
        return self.mean(z[0])

    @torch.no_grad()
    def mean(self, z: Tensor) -> Tensor:
        """Mean of p(x | z): sigmoid of the logits, or the Gaussian mean."""
        out = self.model.decoder(z)
        if self.model.likelihood == "bernoulli":
            return torch.sigmoid(out)
        return out.chunk(2, dim=-1)[0]

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """Means of p(x | z) for n draws z ~ p(z), ``(n, 784)``."""
        ref = next(self.parameters())
        z = torch.randn(n, self.latent_dim, dtype=ref.dtype, device=ref.device)
        return self.mean(z)


def build_net(cfg: NetConfig, role: str, in_dim: int, out_dim: int | None = None) -> nn.Module:
    """An encoder (``role="encoder"``: x -> features) or a decoder (latent -> outputs)."""
    if cfg.kind == "identity":
        if role != "encoder":
            raise ValueError("an identity network can only be the encoder")
        return nn.Flatten(-1)
    if cfg.kind == "mlp":
        if role == "encoder":
            return MLP([in_dim, *cfg.hidden], cfg.activation, final_activation=True)
        assert out_dim is not None
        return MLP([in_dim, *cfg.hidden, out_dim], cfg.activation)
    from vilab import nets

    out_channels = (out_dim or PIXELS) // PIXELS
    if cfg.kind == "gated":
        if role == "encoder":
            return nets.GatedConvEncoder(out_features=cfg.features)
        return nets.GatedConvDecoder(in_dim, out_channels=out_channels)
    if role == "encoder":
        return nets.ResNetEncoder(channels=cfg.channels, out_features=cfg.features)
    return nets.ResNetDecoder(in_dim, out_channels=out_channels, channels=cfg.channels)


def encoder_features(encoder: nn.Module, cfg: NetConfig) -> int:
    if cfg.kind == "identity":
        return PIXELS
    if cfg.kind == "mlp":
        return cfg.hidden[-1]
    return int(encoder.out_features)


def build_vae(cfg: TrainConfig) -> VAE:
    """The VAE described by a :class:`~vilab.config.TrainConfig`."""
    encoder = build_net(cfg.encoder, "encoder", PIXELS)
    features = encoder_features(encoder, cfg.encoder)
    family = family_from_config(cfg.posterior, cfg.latent_dim, features)
    out = PIXELS * (2 if cfg.likelihood == "gaussian" else 1)
    decoder = build_net(cfg.decoder, "decoder", cfg.latent_dim, out)
    return VAE(
        AmortizedPosterior(encoder, family), DecoderModel(decoder, cfg.latent_dim, cfg.likelihood)
    )


def _mean_field(family: nn.Module) -> MeanFieldGaussian | None:
    return family if isinstance(family, MeanFieldGaussian) else None


def vae_objective(
    vae: VAE, x: Tensor, cfg: ObjectiveConfig, step: int = 0, need_value: bool = True
) -> Objective:
    """The configured objective on a batch ``x (B, 784)``.

    ELBO: analytic KL when q is mean-field (otherwise Monte Carlo over ``samples``), KL
    warm-up β = min(1, step / kl_warmup_steps), free bits, STL. IWAE and DReG: K =
    ``samples``. The value is always the bound; only the surrogate changes. A
    semi-implicit (UIVI) posterior trains with its HMC entropy gradient; its value needs
    an importance-sampled log q, skipped (NaN) when ``need_value`` is False.
    """
    family, model = vae.posterior.family, vae.model
    h = vae.posterior.context(x)
    if isinstance(family, SemiImplicit):
        if cfg.kind != "elbo":
            raise ValueError(f"the uivi posterior trains with kind=elbo, not {cfg.kind!r}")
        z, eps0 = family.rsample_with_noise(cfg.samples, h)
        ll, lp = model.log_likelihood(x, z), model.log_prior(z)
        beta = min(1.0, step / cfg.kl_warmup_steps) if cfg.kl_warmup_steps else 1.0
        surrogate = (ll - beta * (family.entropy_surrogate(z, eps0, h) - lp).mean(0)).mean()
        if not need_value:
            return Objective(torch.full_like(ll[0], math.nan), surrogate)
        log_q_value = family.log_prob_bounds(z.detach(), h.detach(), eps0, k=100)[1]
        value = (ll + lp - log_q_value).mean(0)  # type: ignore[operator]
        return Objective(value.detach(), surrogate)
    mf = _mean_field(family)
    if mf is not None:
        loc, scale = mf.loc_scale(h)
        z, log_q = mf.rsample_given(loc, scale, mf.sample_shape(cfg.samples, h))
    else:
        z, log_q = family.rsample_and_log_prob(cfg.samples, h)
    if cfg.kind == "elbo":
        ll, lp = model.log_likelihood(x, z), model.log_prior(z)
        kl = kl_dim = None
        if mf is not None:
            kl_dim = gaussian_kl_per_dim(loc, scale)
            kl = kl_dim.sum(-1)
        elif cfg.free_bits:
            raise ValueError("free_bits needs a mean_field posterior (an analytic KL per dim)")
        log_q_stop = log_prob_stop_params(family, z, h.detach()) if cfg.stl else None
        beta = min(1.0, step / cfg.kl_warmup_steps) if cfg.kl_warmup_steps else 1.0
        return elbo_objective(ll, lp, log_q, kl, beta, cfg.free_bits, kl_dim, log_q_stop)
    log_joint = model.log_joint(x, z)
    log_w = log_joint - log_q
    if cfg.kind == "iwae":
        return iwae_objective(log_w)
    frozen = {n: v.detach() for n, v in model.named_parameters()}
    joint_stop = torch.func.functional_call(model, frozen, (x, z))
    log_q_stop = log_prob_stop_params(family, z, h.detach())
    return dreg_objective(log_w, joint_stop, log_q_stop, model.log_joint(x, z.detach()))
