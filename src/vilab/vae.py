"""A VAE is an amortized posterior q(z | x) and a log-joint p(x, z); nothing more.

    h = encoder(x),  z ~ q(z | h),  log w = log p(x, z) − log q(z | x)

Any family of :mod:`vilab.build` is amortized from the encoder's features h
(``context_dim = features``): mean-field (the head is the encoder's last layer), planar,
radial and Sylvester (their parameters are heads on h), IAF (h enters every MADE) — with
no class per flow × model combination (DESIGN.md §4). :func:`vae_objective` turns a batch
into an :class:`~vilab.estimators.objectives.Objective` with the configured estimator,
from the family's :meth:`~vilab.families.base.Family.training_sample` alone: it never asks
which family it trains (DESIGN.md §8).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vilab.build import family_from_config
from vilab.config import NetConfig, ObjectiveConfig, TrainConfig
from vilab.estimators.elbo import beta_at
from vilab.estimators.objectives import Objective, dreg_objective, elbo_objective, iwae_objective
from vilab.families.amortized import AmortizedPosterior
from vilab.likelihoods import Likelihood, get_likelihood
from vilab.nets.mlp import MLP
from vilab.targets.latent import DecoderModel, LatentVariableModel

PIXELS = 28 * 28
MNIST_SHAPE = (1, 28, 28)


class VAE(nn.Module):
    """``posterior``: q(z | x) (encoder + amortized family); ``model``: p(x, z), whose
    ``likelihood`` p(x | z) gives the mean and the bpd offset; ``image_shape``: (C, H, W)."""

    def __init__(
        self,
        posterior: AmortizedPosterior,
        model: DecoderModel,
        image_shape: tuple[int, int, int] = MNIST_SHAPE,
    ) -> None:
        super().__init__()
        self.posterior, self.model = posterior, model
        self.likelihood: Likelihood = model.likelihood
        self.image_shape = tuple(image_shape)

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
        """Mean of p(x | z) at one sample z ~ q(z | x), ``(B, D)``."""
        z, _ = self.posterior.rsample_and_log_prob(1, x)
        return self.mean(z[0])

    @torch.no_grad()
    def mean(self, z: Tensor) -> Tensor:
        """Mean of p(x | z) (the likelihood's, on the data's scale), ``(..., D)``."""
        return self.likelihood.mean(self.model.decoder(z))

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """Means of p(x | z) for n draws z ~ p(z), ``(n, D)``."""
        ref = next(self.parameters())
        z = torch.randn(n, self.latent_dim, dtype=ref.dtype, device=ref.device)
        return self.mean(z)


def build_net(
    cfg: NetConfig,
    role: str,
    in_dim: int,
    out_dim: int | None = None,
    image_shape: tuple[int, int, int] = MNIST_SHAPE,
) -> nn.Module:
    """An encoder (``role="encoder"``: x -> features) or a decoder (latent -> outputs) for
    images of ``image_shape`` (C, H, W); a conv net refuses H or W not divisible by 4."""
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

    c, h, w = image_shape
    out_channels = (out_dim or c * h * w) // (c * h * w)
    if cfg.kind == "gated":
        if role == "encoder":
            return nets.GatedConvEncoder(c, (h, w), out_features=cfg.features)
        return nets.GatedConvDecoder(in_dim, out_channels, c, (h, w))
    if role == "encoder":
        return nets.ResNetEncoder(c, (h, w), channels=cfg.channels, out_features=cfg.features)
    return nets.ResNetDecoder(in_dim, out_channels, c, (h, w), channels=cfg.channels)


def encoder_features(encoder: nn.Module, cfg: NetConfig, dim: int = PIXELS) -> int:
    if cfg.kind == "identity":
        return dim
    if cfg.kind == "mlp":
        return cfg.hidden[-1]
    return int(encoder.out_features)


def likelihood_of(cfg: TrainConfig) -> Likelihood:
    """The configured likelihood (``gaussian`` on 8-bit data other than ``mnist_gray`` is
    on dequantized data: its bpd adds log 256 nats per dimension)."""
    dequantized = cfg.likelihood == "gaussian" and cfg.data.name != "mnist_gray"
    return get_likelihood(
        cfg.likelihood,
        components=cfg.mixture_components,
        scale=cfg.gaussian_scale,
        dequantized=dequantized,
    )


def build_vae(cfg: TrainConfig, image_shape: tuple[int, int, int] | None = None) -> VAE:
    """The VAE described by a :class:`~vilab.config.TrainConfig`, on the CPU (move it with
    ``.to(device)``), for images of ``image_shape`` (default ``data.image_shape``, else
    1 × 28 × 28); the decoder gives K outputs per pixel, K set by the likelihood. With
    ``precision=bf16`` its encoder and decoder run under bfloat16 autocast, the family and
    every log-density in float32."""
    shape = tuple(image_shape or cfg.data.image_shape or MNIST_SHAPE)
    dim = shape[0] * shape[1] * shape[2]
    lik = likelihood_of(cfg)
    encoder = build_net(cfg.encoder, "encoder", dim, image_shape=shape)
    features = encoder_features(encoder, cfg.encoder, dim)
    family = family_from_config(cfg.posterior, cfg.latent_dim, features)
    decoder = build_net(cfg.decoder, "decoder", cfg.latent_dim, dim * lik.params, shape)
    posterior = AmortizedPosterior(encoder, family)
    model = DecoderModel(decoder, cfg.latent_dim, lik)
    posterior.precision = model.precision = cfg.precision  # the networks only
    return VAE(posterior, model, shape)


def vae_objective(
    vae: VAE, x: Tensor, cfg: ObjectiveConfig, step: int = 0, need_value: bool = True
) -> Objective:
    """The configured objective on a batch ``x (B, D)``.

    ELBO: analytic KL when the family gives ``kl_per_dim`` (mean-field) and the prior is
    N(0, I), Monte Carlo over ``samples`` otherwise; KL warm-up β_t = min(1, beta_start +
    step / beta_steps) (:func:`~vilab.estimators.elbo.beta_at` counting optimizer steps);
    free bits (need ``kl_per_dim``); the family's gradient surrogate (STL, UIVI's entropy
    gradient). IWAE and DReG: K = ``samples``. The value is always the bound; only the
    surrogate changes. ``need_value=False`` lets a family skip a costly log q value (a
    semi-implicit one's value is then NaN).

    Raises:
        ValueError: free bits without an analytic KL per dimension; STL or DReG for a
            family without log_prob; IWAE or DReG for a family whose log q has no
            reparameterized gradient.
    """
    family, model = vae.posterior.family, vae.model
    h = vae.posterior.context(x)
    if cfg.kind == "elbo":
        s = family.training_sample(cfg.samples, h, stl=cfg.stl, need_value=need_value)
        ll, lp = model.log_likelihood(x, s.z), model.log_prior(s.z)
        kl_dim = s.kl_per_dim if _standard_normal_prior(model) else None
        if cfg.free_bits and kl_dim is None:
            raise ValueError(
                "free_bits needs a mean_field posterior (an analytic KL per latent dimension "
                f"to a standard-normal prior); {type(family).__name__} gives none"
            )
        kl = None if kl_dim is None else kl_dim.sum(-1)
        log_q_stop = s.log_q_surrogate if s.has_surrogate else None
        beta = beta_at(step, beta_start=cfg.beta_start, beta_steps=cfg.beta_steps)
        return elbo_objective(ll, lp, s.log_q, kl, beta, cfg.free_bits, kl_dim, log_q_stop)
    s = family.training_sample(cfg.samples, h, stl=cfg.kind == "dreg")
    if cfg.kind == "iwae" and s.has_surrogate:
        raise ValueError(
            f"objective.kind={cfg.kind!r} needs a log q(z) with a reparameterized gradient; "
            f"{type(family).__name__} trains with kind=elbo"
        )
    log_w = model.log_joint(x, s.z) - s.log_q
    if cfg.kind == "iwae":
        return iwae_objective(log_w)
    frozen = {n: v.detach() for n, v in model.named_parameters()}
    joint_stop = torch.func.functional_call(model, frozen, (x, s.z))
    return dreg_objective(log_w, joint_stop, s.log_q_surrogate, model.log_joint(x, s.z.detach()))


def _standard_normal_prior(model: nn.Module) -> bool:
    """Whether ``model``'s prior is the N(0, I) of :class:`LatentVariableModel` (an
    analytic KL to it then applies)."""
    return type(model).log_prior is LatentVariableModel.log_prior
