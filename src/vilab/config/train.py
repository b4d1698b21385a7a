"""The configuration of ``vilab train``: data, networks, posterior, objective, evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from vilab.config.base import FAMILY_KINDS, DeviceSpec, Widths, _load, _one_of, _Strict
from vilab.config.family import FamilyConfig, FlowConfig
from vilab.config.fit import FaultConfig, OptimConfig, refuse_renamed


class NetConfig(_Strict):
    """An encoder or decoder network: ``mlp`` (``hidden`` widths), ``resnet`` (the conv
    pair of Kingma et al. 2016 / seed 002, ``channels`` feature maps), ``gated`` (the
    gated-conv pair of van den Berg et al. 2018), or ``identity`` (encoder only: the
    posterior sees x itself, as UIVI's network μ(ε, x) does). ``activation`` of an ``mlp``:
    ``gated`` makes each hidden layer a gated linear unit (the VampPrior paper's GatedDense)."""

    kind: Literal["mlp", "resnet", "gated", "identity"] = "mlp"
    hidden: Widths = Field(default_factory=lambda: [256, 256])
    activation: Literal["relu", "elu", "tanh", "softplus", "gelu", "gated"] = "relu"
    channels: int = Field(64, ge=1)
    features: int = Field(256, ge=1)


class PosteriorConfig(FamilyConfig):
    """q(z | x): a family amortized from the encoder's features (same options as the 2-D
    families; ``mean_field`` by default). A semi-implicit posterior keeps K =
    ``log_q_samples`` fixed unless ``log_q_stderr`` is set: a log-likelihood scores
    images × samples estimates of log q, each of which sizing could take to
    ``max_log_q_samples`` draws."""

    kind: str = "mean_field"
    layers: int = Field(2, ge=1, le=10_000)
    hidden: Widths = Field(default_factory=lambda: [256, 256])
    stack: list[FlowConfig] = Field(default_factory=list)
    log_q_stderr: float | None = Field(None, gt=0, allow_inf_nan=False)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return _one_of(v, [k for k in FAMILY_KINDS if k != "full_rank"], "posterior")


class ObjectiveConfig(_Strict):
    """The training objective. ``kind``: ``elbo`` (analytic KL for mean-field), ``iwae``
    (K = ``samples``) or ``dreg`` (IWAE with doubly-reparameterized gradients);
    ``samples``: samples of q per image; ``beta_start``/``beta_steps``: KL warm-up (ELBO),
    the weight of the KL term β_t = min(1, beta_start + t / beta_steps) with t the
    optimizer steps done (the schedule of the fit's ``objective``, Sønderby et al. 2016;
    0 steps, the default, is off); ``free_bits``: λ nats per latent dimension (mean-field
    ELBO); ``stl``: sticking-the-landing gradients (ELBO, families with a log_prob)."""

    kind: Literal["elbo", "iwae", "dreg"] = "elbo"
    samples: int = Field(1, ge=1)
    beta_start: float = Field(0.0, ge=0, le=1)
    beta_steps: int = Field(0, ge=0)
    free_bits: float = Field(0.0, ge=0)
    stl: bool = False

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return refuse_renamed(data, {"kl_warmup_steps": "objective.beta_steps"}, cls.__name__)

    @model_validator(mode="after")
    def _consistent(self) -> ObjectiveConfig:
        if self.kind != "elbo" and (self.beta_steps or self.free_bits or self.stl):
            raise ValueError(f"beta_steps, free_bits and stl apply to kind=elbo, not {self.kind!r}")
        return self


#: Data sets whose pixels are 8-bit grey levels (uint8 0–255) as loaded.
GREY_SOURCES = ("freyfaces", "digits")
#: Sources read from the user's files (``data.path``).
FILE_SOURCES = ("arrays", "folder")
#: The MNIST and tiny sets served as binary images, by their own convention.
BINARY_SETS = ("binarized_mnist", "mnist_dynamic", "tiny", "tiny_static")


class DataConfig(_Strict):
    """Where the images come from, everything needed to load them again.

    ``name``: ``binarized_mnist`` (Larochelle's static set), ``mnist_dynamic`` (re-binarized
    every batch), ``mnist_gray`` (grey levels k/255, for a Gaussian or an 8-bit
    likelihood), ``tiny`` (built in, dynamic), ``tiny_static``; ``freyfaces`` (1965 faces,
    28 × 20, the papers' 1565 / 200 / 200 split after a shuffle seeded ``split_seed``),
    ``digits`` (scikit-learn's 8 × 8 digits, grey levels 0–16 scaled to 0–255); ``arrays``
    (``path``: a ``.npz`` with arrays ``train``/``valid``/``test`` — optional
    ``*_labels`` — or one array, ``key``, split by ``split`` fractions with
    ``split_seed``; a ``.npy``, memory-mapped) or ``folder`` (``path``: PNG/JPEG files,
    optionally in one sub-folder per class, split likewise; needs ``vilab[images]``);
    ``python`` (set by ``train_vae(config, run_dir, data=...)`` for a tensor, array or
    Dataset handed in: the run's config.yaml then records its shape, split and seeds but
    not the data itself).
    ``binarize``: ``none``, ``static`` (once, seeded ``binarize_seed``) or ``dynamic``
    (every batch; valid/test once) for a Bernoulli likelihood on grey levels; unset:
    the set's own convention. ``image_shape``: (C, H, W); unset, inferred from the data
    and written back into the run's config.yaml. ``sha256``: of ``path`` (the file, or
    the names and bytes of a folder's images); unset, computed and written into
    config.yaml; set, the data must match it. ``data_dir``: default $VILAB_DATA_DIR,
    else the user cache."""

    name: Literal[
        "binarized_mnist",
        "mnist_dynamic",
        "mnist_gray",
        "tiny",
        "tiny_static",
        "freyfaces",
        "digits",
        "arrays",
        "folder",
        "python",
    ] = "binarized_mnist"
    data_dir: str | None = None
    batch_size: int = Field(128, ge=1)
    path: str | None = None
    key: str | None = None
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = Field(123, ge=0)
    binarize: Literal["none", "static", "dynamic"] | None = None
    binarize_seed: int = Field(0, ge=0)
    image_shape: tuple[int, int, int] | None = None
    sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.sha256 is not None and self.name not in FILE_SOURCES:
            raise ValueError(f"data.sha256 is for data.name in {list(FILE_SOURCES)}")
        if (self.name in FILE_SOURCES) != (self.path is not None):
            raise ValueError(
                f"data.path is for data.name in {list(FILE_SOURCES)}"
                + (f"; data.name={self.name} needs one" if self.path is None else "")
            )
        if any(f < 0 for f in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(
                f"data.split={list(self.split)}: three fractions train, valid, test, each "
                "≥ 0, summing to 1"
            )
        if self.binarize is not None and self.name in (*BINARY_SETS, "mnist_gray"):
            raise ValueError(
                f"data.binarize is for grey-level sources; data.name={self.name} has its own "
                "convention (mnist_dynamic, tiny: dynamic; binarized_mnist, tiny_static: static)"
            )
        if self.image_shape is not None and min(self.image_shape) < 1:
            raise ValueError(f"data.image_shape={list(self.image_shape)}: positive (C, H, W)")
        return self


class TrainOptimConfig(OptimConfig):
    """The optimizer of a VAE (:class:`~vilab.config.fit.OptimConfig`, a constant 1e-3 by
    default). ``ema``: decay δ of an exponential moving average of the weights,
    θ̄ ← δ θ̄ + (1 − δ) θ after every update (Polyak averaging, as in Kingma et al.'s IAF
    experiments); validation, ``best.pt`` and the test then use θ̄."""

    lr: float = Field(1e-3, gt=0, le=10)
    schedule: Literal["constant", "cosine"] = "constant"
    ema: float | None = Field(None, gt=0, lt=1)


class EvalConfig(_Strict):
    """Evaluation of log p(x) by importance sampling: ``samples`` per image (K), drawn
    ``chunk`` at a time for ``batch`` images at once (unset: 100 × 20 on the CPU; on a GPU
    500 images with the chunk sized from free memory); ``valid_images`` /
    ``valid_samples`` for the quick validation estimate during training."""

    samples: int = Field(5000, ge=1)
    chunk: int | None = Field(None, ge=1)
    batch: int | None = Field(None, ge=1)
    valid_images: int = Field(1000, ge=1)
    valid_samples: int = Field(100, ge=1)


class EvalRunConfig(_Strict):
    """``vilab eval RUN_DIR``: log p(x) of a trained VAE run on its ``split`` (``test`` or
    ``valid``; the first ``images`` only, if set) by importance sampling (``method: is``,
    ``samples`` per image drawn ``chunk`` at a time for ``batch`` images; unset: the run's
    ``eval`` section) or annealed importance sampling (``method: ais``, starting at the
    encoder's q(z | x) or the ``prior``: the settings of ``ais`` — ``fast``,
    :data:`vilab.evaluation.ais.FAST`, or ``classic``, the settings before it,
    :data:`vilab.evaluation.ais.CLASSIC` — with ``chains`` per image, ``num_dists``
    distributions, ``leapfrog`` steps per HMC transition and ``batch`` images at once
    replacing the preset's where given). ``data_dir`` and ``device`` replace the run's
    (``None``: the run's own)."""

    split: Literal["test", "valid"] = "test"
    method: Literal["is", "ais"] = "is"
    samples: int | None = Field(None, ge=1)
    chunk: int | None = Field(None, ge=1)
    batch: int | None = Field(None, ge=1)
    images: int | None = Field(None, ge=1)
    ais: Literal["fast", "classic"] = "fast"
    chains: int | None = Field(None, ge=1)
    num_dists: int | None = Field(None, ge=1)
    leapfrog: int | None = Field(None, ge=1)
    init: Literal["posterior", "prior"] = "posterior"
    data_dir: str | None = None
    device: DeviceSpec | None = None


class TrainConfig(_Strict):
    """Train a VAE with an amortized flexible posterior (``vilab train``).

    ``device``: where everything computes — model, data (kept whole on the device and
    binarized there), samples, estimators (``auto``: CUDA when present; ``cpu``, ``cuda``,
    ``cuda:N``). ``precision``: ``float32``, or ``bf16`` — the encoder and decoder under
    bfloat16 autocast, every log-density, log-determinant, log-sum-exp and the bound in
    float32 (offered for the networks ``mlp``, ``resnet`` and ``gated``; see
    docs in README "GPU"). ``tf32``: TensorFloat-32 matmuls and convolutions on a GPU.
    ``compile``: ``torch.compile`` the loss (forward and backward) of the training step.
    """

    data: DataConfig = Field(default_factory=DataConfig)
    latent_dim: int = Field(32, ge=1)
    likelihood: Literal["bernoulli", "gaussian", "categorical", "logistic", "logistic_mixture"] = (
        "bernoulli"
    )
    mixture_components: int = Field(10, ge=1)
    gaussian_scale: float | None = Field(None, gt=0)
    encoder: NetConfig = Field(default_factory=NetConfig)
    decoder: NetConfig = Field(default_factory=NetConfig)
    posterior: PosteriorConfig = Field(default_factory=PosteriorConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    optim: TrainOptimConfig = Field(default_factory=TrainOptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    steps: int = Field(30_000, ge=1)
    seed: int = 0
    log_every: int = Field(50, ge=1)
    eval_every: int = Field(2000, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    threads: int | None = Field(None, ge=1)
    max_seconds: float | None = Field(None, gt=0)
    final_eval: bool = True
    faults: FaultConfig = Field(default_factory=FaultConfig)
    device: DeviceSpec = "auto"
    precision: Literal["float32", "bf16"] = "float32"
    tf32: bool = False
    compile: bool = False

    @model_validator(mode="after")
    def _likelihood_matches_data(self) -> TrainConfig:
        if self.posterior.kind == "uivi" and self.objective.kind != "elbo":
            raise ValueError(
                f"posterior.kind=uivi trains with objective.kind=elbo, not "
                f"{self.objective.kind!r} (its log q(z) is an estimate without a gradient)"
            )
        if self.precision == "bf16" and "identity" in (self.encoder.kind, self.decoder.kind):
            raise ValueError(
                "precision=bf16 runs the encoder and decoder networks in bfloat16; with an "
                "identity encoder there is no network to speed up and the posterior's own "
                "maths stays in float32: use precision=float32"
            )
        if self.precision == "bf16" and self.posterior.kind == "uivi":
            raise ValueError(
                "precision=bf16 is refused for posterior.kind=uivi: it is not measured "
                "against float32, and its HMC accept/reject compares log-densities of "
                "nearby points through the network μ(ε, x), where bfloat16's 8-bit "
                "mantissa would round the differences away; use precision=float32"
            )
        return _check_likelihood(self)


def _check_likelihood(cfg: TrainConfig) -> TrainConfig:
    """The likelihood takes the values the data set serves (the one-line errors; the data
    itself is checked when loaded)."""
    name, lik = cfg.data.name, cfg.likelihood
    if lik != "bernoulli" and name in BINARY_SETS:
        raise ValueError(
            f"likelihood={lik} is for grey levels; data.name={name} is binary: use "
            "likelihood=bernoulli, or data.name=mnist_gray"
        )
    if lik == "bernoulli" and name == "mnist_gray":
        raise ValueError(
            "data.name=mnist_gray holds grey levels: likelihood=bernoulli needs "
            "binary data (data.name=mnist_dynamic), or choose another likelihood"
        )
    if lik == "bernoulli" and name in GREY_SOURCES and cfg.data.binarize in (None, "none"):
        raise ValueError(
            f"likelihood=bernoulli needs binary data; data.name={name} holds grey levels "
            "0–255: set data.binarize=static or dynamic, or choose likelihood=categorical, "
            "logistic, logistic_mixture or gaussian"
        )
    if lik != "bernoulli" and cfg.data.binarize in ("static", "dynamic"):
        raise ValueError(
            f"data.binarize={cfg.data.binarize} makes binary data: likelihood=bernoulli, not {lik}"
        )
    return cfg


def load_train_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults <- ``base`` <- YAML file ``path`` <- ``overrides`` (``key.sub=value``)."""
    return _load(TrainConfig, path, overrides, base)
