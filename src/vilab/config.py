"""Typed, validated configuration: the only place that reads config files.

A run is described by a :class:`FitConfig` (2-D / user targets). Configs come from
defaults, then an optional YAML file, then ``key.sub=value`` overrides from the command
line (values parsed as YAML scalars/lists). Every error names the bad key and value and
what is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vilab.families.base import Family
from vilab.families.registry import FAMILY_KINDS, FLOW_KINDS, build_family


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


M = TypeVar("M", bound=BaseModel)


def _positive_widths(v: list[int]) -> list[int]:
    if not v or any(h < 1 for h in v):
        raise ValueError(f"hidden must be a non-empty list of positive widths, got {v}")
    return v


Widths = Annotated[list[int], AfterValidator(_positive_widths)]


def _one_of(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    return value


class TargetConfig(_Strict):
    """What p is: a built-in name (U1–U4, banana, banana_family) or ``module:function`` /
    ``file.py:function``; ``box`` = (x0, x1, y0, y1) for plots and 2-D quadrature."""

    name: str = "U1"
    dim: int | None = Field(None, ge=1)
    box: tuple[float, float, float, float] | None = None
    log_z: float | None = None
    context_dim: int | None = Field(None, ge=1)
    context_range: tuple[float, float] = (0.0, 1.0)


class FlowConfig(_Strict):
    """One kind of flow: ``kind`` (see FLOW_KINDS), depth ``layers``, MADE ``hidden``
    widths (IAF), Sylvester options."""

    kind: str = "sylvester_orthogonal"
    layers: int = Field(32, ge=1, le=10_000)
    hidden: Widths = Field(default_factory=lambda: [64, 64])
    num_ortho: int | None = Field(None, ge=1)
    num_householder: int = Field(2, ge=1)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return _one_of(v, FLOW_KINDS, "flow")


def default_stack() -> list[FlowConfig]:
    """vilab's strong default for 2-D targets: 24 orthogonal Sylvester layers (they move
    mass between modes) followed by 4 IAF steps (they fix scales and curved tails)."""
    return [
        FlowConfig(kind="sylvester_orthogonal", layers=24),
        FlowConfig(kind="iaf", layers=4, hidden=[64, 64]),
    ]


class FamilyConfig(FlowConfig):
    """What q is: ``kind`` (see FAMILY_KINDS) with the flow options of :class:`FlowConfig`
    and the ``base`` of a flow; ``kind: stack`` (the default) chains the flows listed in
    ``stack`` on the base (``stack`` is ignored by the other kinds); ``kind: uivi`` uses
    ``noise_dim``, ``hidden`` (its network μ(ε [, h])) and ``log_q_samples`` (the K draws
    of ε that estimate log q(z) for reported KLs and log-likelihoods)."""

    kind: str = "stack"
    base: Literal["standard", "mean_field", "full_rank"] = "mean_field"
    stack: list[FlowConfig] = Field(default_factory=default_stack)
    noise_dim: int = Field(10, ge=1)
    log_q_samples: int = Field(1000, ge=1)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return _one_of(v, FAMILY_KINDS, "family")

    def build(self, dim: int, context_dim: int | None = None) -> Family:
        """The family this config describes, free or amortized from a context."""
        return build_family(
            self.kind,
            dim,
            context_dim,
            layers=self.layers,
            base=self.base,
            hidden=self.hidden,
            num_ortho=self.num_ortho,
            num_householder=self.num_householder,
            stack=[spec.model_dump() for spec in self.stack],
            noise_dim=self.noise_dim,
            log_q_samples=self.log_q_samples,
        )

    @model_validator(mode="after")
    def _stack_given(self) -> FamilyConfig:
        if self.kind == "stack" and not self.stack:
            raise ValueError("family.kind=stack needs family.stack: a list of flows")
        return self


class OptimConfig(_Strict):
    """Adam with a learning-rate schedule: linear warm-up, then constant or cosine decay to
    ``lr * min_lr_ratio``; optional gradient-norm clipping."""

    lr: float = Field(2e-3, gt=0, le=10)
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    grad_clip: float | None = Field(None, gt=0)


class FaultConfig(_Strict):
    """What to do about non-finite losses or gradients (:mod:`vilab.train.guard`): skip
    the step; after ``max_bad_steps`` in a row, roll back to the last checkpoint with the
    learning rate multiplied by ``rollback_lr_factor``; after ``max_rollbacks`` rollbacks,
    stop with an error."""

    max_bad_steps: int = Field(5, ge=1)
    max_rollbacks: int = Field(3, ge=0)
    rollback_lr_factor: float = Field(0.5, gt=0, lt=1)


class FitConfig(_Strict):
    """Fit a family to a target by maximizing the reverse-KL ELBO.

    ``beta_start``/``beta_steps``: β-annealing β_t = min(1, beta_start + t / beta_steps)
    on log p̃ (Rezende & Mohamed 2015); ``beta_steps = 0`` turns it off and the default
    (None) anneals over the first 40% of the steps. Annealing lets q spread over every mode
    before it sharpens: without it a flow on U1 typically keeps one of the two halves
    (KL ≈ log 2). ``stl``: the
    sticking-the-landing gradient (Roeder et al. 2017), for families with a log_prob.
    ``samples``: samples of q per step (split over ``contexts`` contexts for a target
    family). ``eval_samples``: samples for the exact KL. ``max_seconds``: stop early after
    this much training time.
    """

    target: TargetConfig = Field(default_factory=TargetConfig)
    family: FamilyConfig = Field(default_factory=FamilyConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    steps: int = Field(8000, ge=1)
    samples: int = Field(1000, ge=1)
    contexts: int = Field(16, ge=1)
    eval_contexts: list[float] | None = None
    beta_start: float = Field(0.01, ge=0, le=1)
    beta_steps: int | None = Field(None, ge=0)
    stl: bool = False
    seed: int = 0
    eval_samples: int = Field(100_000, ge=2)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    dtype: Literal["float32", "float64"] = "float32"
    threads: int | None = Field(None, ge=1)
    figures: bool = True
    max_seconds: float | None = Field(None, gt=0)
    faults: FaultConfig = Field(default_factory=FaultConfig)

    @model_validator(mode="after")
    def _samples_split(self) -> FitConfig:
        has_context = self.target.name == "banana_family" or self.target.context_dim is not None
        if has_context and self.samples < self.contexts:
            raise ValueError(f"samples ({self.samples}) must be ≥ contexts ({self.contexts})")
        return self


class ConfigError(ValueError):
    """A config file or override that does not validate; the message says what and why."""


def _format_validation(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(config)"
        given = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg} (got {given!r})")
    return "invalid configuration:\n" + "\n".join(lines)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``"family.layers=32"`` -> ``("family.layers", 32)``; the value is read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
    return key.strip(), value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, with clear errors for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping, got {type(data).__name__}")
    return data


def _load(
    model: type[M],
    path: str | Path | None,
    overrides: list[str] | None,
    base: dict[str, Any] | None,
) -> M:
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = _merge(data, read_yaml(path))
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation(err)) from None


def load_fit_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> FitConfig:
    """Defaults <- ``base`` <- YAML file ``path`` <- ``overrides`` (``key.sub=value``)."""
    return _load(FitConfig, path, overrides, base)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (what the run directory stores)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# -- VAEs -----------------------------------------------------------------------------------
class NetConfig(_Strict):
    """An encoder or decoder network: ``mlp`` (``hidden`` widths), ``resnet`` (the conv
    pair of Kingma et al. 2016 / seed 002, ``channels`` feature maps), ``gated`` (the
    gated-conv pair of van den Berg et al. 2018), or ``identity`` (encoder only: the
    posterior sees x itself, as UIVI's network μ(ε, x) does)."""

    kind: Literal["mlp", "resnet", "gated", "identity"] = "mlp"
    hidden: Widths = Field(default_factory=lambda: [256, 256])
    activation: Literal["relu", "elu", "tanh", "softplus", "gelu"] = "relu"
    channels: int = Field(64, ge=1)
    features: int = Field(256, ge=1)


class PosteriorConfig(FamilyConfig):
    """q(z | x): a family amortized from the encoder's features (same options as the 2-D
    families; ``mean_field`` by default)."""

    kind: str = "mean_field"
    layers: int = Field(2, ge=1, le=10_000)
    hidden: Widths = Field(default_factory=lambda: [256, 256])
    stack: list[FlowConfig] = Field(default_factory=list)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return _one_of(v, [k for k in FAMILY_KINDS if k != "full_rank"], "posterior")


class ObjectiveConfig(_Strict):
    """The training objective. ``kind``: ``elbo`` (analytic KL for mean-field), ``iwae``
    (K = ``samples``) or ``dreg`` (IWAE with doubly-reparameterized gradients);
    ``samples``: samples of q per image; ``kl_warmup_steps``: β rises linearly from 0 to 1
    over these steps (ELBO); ``free_bits``: λ nats per latent dimension (mean-field ELBO);
    ``stl``: sticking-the-landing gradients (ELBO, families with a log_prob)."""

    kind: Literal["elbo", "iwae", "dreg"] = "elbo"
    samples: int = Field(1, ge=1)
    kl_warmup_steps: int = Field(0, ge=0)
    free_bits: float = Field(0.0, ge=0)
    stl: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ObjectiveConfig:
        if self.kind != "elbo" and (self.kl_warmup_steps or self.free_bits or self.stl):
            raise ValueError(
                f"kl_warmup_steps, free_bits and stl apply to kind=elbo, not {self.kind!r}"
            )
        return self


class DataConfig(_Strict):
    """``binarized_mnist`` (Larochelle's static set), ``mnist_dynamic`` (re-binarized every
    batch), ``mnist_gray`` (grey levels in [0, 1], for a Gaussian likelihood), ``tiny``
    (built in, no files, dynamic) or ``tiny_static``; ``data_dir`` (default:
    $VILAB_DATA_DIR, else the user cache)."""

    name: Literal["binarized_mnist", "mnist_dynamic", "mnist_gray", "tiny", "tiny_static"] = (
        "binarized_mnist"
    )
    data_dir: str | None = None
    batch_size: int = Field(128, ge=1)


class TrainOptimConfig(OptimConfig):
    """Optimizer for VAEs: ``adam``, ``adamax`` (Sylvester paper) or ``rmsprop`` (centered,
    seed 004). ``ema``: decay δ of an exponential moving average of the weights,
    θ̄ ← δ θ̄ + (1 − δ) θ after every update (Polyak averaging, as in Kingma et al.'s IAF
    experiments); validation, ``best.pt`` and the test then use θ̄."""

    name: Literal["adam", "adamax", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    schedule: Literal["constant", "cosine"] = "constant"
    ema: float | None = Field(None, gt=0, lt=1)


class EvalConfig(_Strict):
    """Evaluation of log p(x) by importance sampling: ``samples`` per image (K), drawn
    ``chunk`` at a time for ``batch`` images at once; ``valid_images`` / ``valid_samples``
    for the quick validation estimate during training."""

    samples: int = Field(5000, ge=1)
    chunk: int = Field(100, ge=1)
    batch: int = Field(20, ge=1)
    valid_images: int = Field(1000, ge=1)
    valid_samples: int = Field(100, ge=1)


class TrainConfig(_Strict):
    """Train a VAE with an amortized flexible posterior (``vilab train``)."""

    data: DataConfig = Field(default_factory=DataConfig)
    latent_dim: int = Field(32, ge=1)
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
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

    @model_validator(mode="after")
    def _likelihood_matches_data(self) -> TrainConfig:
        if self.likelihood == "gaussian" and self.data.name != "mnist_gray":
            raise ValueError("likelihood=gaussian is for continuous data: data.name=mnist_gray")
        if self.likelihood == "bernoulli" and self.data.name == "mnist_gray":
            raise ValueError("data.name=mnist_gray needs likelihood=gaussian")
        return self


def load_train_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults <- ``base`` <- YAML file ``path`` <- ``overrides`` (``key.sub=value``)."""
    return _load(TrainConfig, path, overrides, base)
