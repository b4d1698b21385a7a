"""The configuration of q: one kind of flow (:class:`FlowConfig`), the family built from
flows or otherwise (:class:`FamilyConfig`), and vilab's default family by dimension
(:func:`default_stack`, :func:`anneals_by_default`, :func:`preconditions`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from vilab.config.base import FAMILY_KINDS, FLOW_KINDS, Widths, _one_of, _Strict


class FlowConfig(_Strict):
    """One kind of flow: ``kind`` (see FLOW_KINDS), depth ``layers``, hidden widths of the
    MADE (IAF, spline_autoregressive, naf) or of the coupling conditioner (affine_coupling,
    spline_coupling), Sylvester options, the spline's ``bins`` K (≥ 2) and ``tail_bound``
    B (> 0: the spline maps [−B, B] onto itself, the identity outside), and the sigmoid
    ``units`` M per coordinate of a neural autoregressive flow (naf).

    B = 5 (zuko's default too) keeps a standard-normal base's samples inside the spline
    but for about 6 in 10 million per coordinate and covers U1–U4 (which live in
    [−4, 4]²) and a VAE's latents under their N(0, I) prior; a target on a larger scale
    (the banana reaches y ≈ −8) needs a larger B or a mean-field base that scales to it."""

    kind: str = "sylvester_orthogonal"
    layers: int = Field(32, ge=1, le=10_000)
    hidden: Widths = Field(default_factory=lambda: [64, 64])
    num_ortho: int | None = Field(None, ge=1)
    num_householder: int = Field(2, ge=1)
    bins: int = Field(8, ge=2, le=256)
    tail_bound: float = Field(5.0, gt=0, le=1e6, allow_inf_nan=False)
    units: int = Field(8, ge=1, le=256)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return _one_of(v, FLOW_KINDS, "flow")


#: The largest dimension that gets the 2-D default stack (:func:`default_stack`).
SMALL_DIM = 2


def default_stack(dim: int = SMALL_DIM) -> list[FlowConfig]:
    """vilab's default family for a target of dimension ``dim`` (what ``kind: stack``
    chains when ``stack`` is not given), a rule by dimension:

    * D ≤ 2: chosen by ``benchmarks/peers2d.py`` (eight 2-D targets against zuko's and
      normflows' flows at equal CPU time): 16 orthogonal Sylvester layers (they move
      mass between modes and keep both moons of TwoMoons), 3 autoregressive
      rational-quadratic spline layers (bins 8, tail bound 5: the shapes of rings and
      curved ridges) and 2 IAF steps (scales and the tails beyond the spline's bound).
    * D > 2: 3 affine autoregressive layers (``affine_autoregressive``, MADE 64-64, the
      order reversed every other layer; :class:`vilab.flows.iaf.AffineAutoregressive`),
      chosen by ``benchmarks/posteriordb.py`` against zuko's MAF and Pyro's
      AutoIAFNormal at equal CPU time (eight schools centred, Neal's funnel in 10-D and
      four more posteriordb posteriors of 4 to 26 dimensions). The 2-D stack loses
      there: its spline layers cost ~25 ms of a 31 ms step in 10-D (this stack and
      zuko's MAF: ~5.5 ms), and IAF's gated update can only narrow a coordinate. It is
      trained without β-annealing unless asked (:func:`anneals_by_default`). At 60 CPU s
      a fit (one seed): eight schools ELBO 7.92 (zuko's MAF 7.89, Pyro 7.62; the 2-D
      stack 7.24 in issue 18's run), the funnel −0.01 (zuko −0.01, Pyro −0.65), garch11 −267.23 (zuko
      −267.24, Pyro −267.34); arK and diamonds ahead of both too; behind Pyro's
      AutoIAFNormal on gp_pois_regr (918 against 969).

    The rule is applied when the family is built (:func:`vilab.build.stack_for`), so the
    stored config keeps ``stack: null`` and a resumed run rebuilds the same family.
    """
    if dim <= SMALL_DIM:
        return [
            FlowConfig(kind="sylvester_orthogonal", layers=16),
            FlowConfig(kind="spline_autoregressive", layers=3, hidden=[64, 64]),
            FlowConfig(kind="iaf", layers=2, hidden=[64, 64]),
        ]
    return [FlowConfig(kind="affine_autoregressive", layers=3, hidden=[64, 64])]


def anneals_by_default(family: FamilyConfig, dim: int) -> bool:
    """Whether a fit of ``family`` in dimension ``dim`` is β-annealed when
    ``objective.beta_steps`` is not given: yes, except vilab's default family above 2-D
    (``kind: stack`` with no ``stack``, D > 2), which trains at β = 1 from the start.

    Annealing from β = 0.01 rewards q's entropy 100 times more than log p̃: an affine
    flow then follows the flat tempered target outwards within tens of steps, and on
    garch11 reached z ≈ 42 (α₁ = 1 in double precision, log p̃ = −∞) in 2 of 3 seeds by
    step 65. Without it the same family matched zuko's MAF on Neal's funnel (60 CPU s: ELBO
    −0.01 against −0.56 annealed; zuko −0.01) and fitted garch11 like zuko's MAF."""
    return not _is_default_above_2d(family, dim)


def stl_by_default(family: FamilyConfig, dim: int) -> bool | Literal["late"]:
    """``objective.stl`` of a fit of ``family`` in dimension ``dim`` when it is not given:
    ``late`` (sticking-the-landing gradients in the last third of the run) for vilab's
    default family above 2-D, ``false`` otherwise.

    The STL gradient of the ELBO has zero variance where q = p (Roeder, Wu & Duvenaud
    2017), so it lets the parameters settle where the plain gradient keeps them jittering:
    on sblrc (posteriordb, D = 6, nearly Gaussian) the default family reached Pareto k̂
    0.31 and 0.50 with STL against 0.38–1.12 without, at the same ELBO. It needs log q at
    q's own draws with the parameters stopped, which an autoregressive layer gets by D
    passes of its inverse: a step costs up to 5 times more (eight schools, D = 10:
    3,567 steps in 120 CPU-s against 18,606), so the start of the run, far from p, is
    left to the cheap gradient. In ``benchmarks/posteriordb.py`` (120 CPU-s, one seed)
    late STL lowered k̂ on 11 of the 15 posteriors, at ELBOs equal to within 0.007."""
    return "late" if _is_default_above_2d(family, dim) else False


def _is_default_above_2d(family: FamilyConfig, dim: int) -> bool:
    return family.kind == "stack" and family.stack is None and dim > SMALL_DIM


def preconditions(family: FamilyConfig, dim: int, context_dim: int | None = None) -> bool:
    """Whether a fit of ``family`` in dimension ``dim`` starts with the pilot of
    :mod:`vilab.train.pilot` (``family.precondition``): ``laplace_path`` yes, ``none`` no,
    ``auto`` for vilab's default family above 2-D on a single density (no context).

    On posteriordb's posteriors, from q's start N(0, I) the default family spent its
    budget finding the scale: diamonds (D = 26, regressors correlated near ±1) ended 16
    reference sds off in its means and earnings (regressors on scales of 10⁴) 4.5, and
    gp_pois_regr's bound started at −10⁸ to −10¹⁹ and diverged in one seed of three
    (``benchmarks/posteriordb.py``, 120 CPU s). With the pilot, 3 seeds each: diamonds
    k̂ 0.28 and mean errors 0.024 sd, earnings 0.60 and 0.014, gp_pois_regr ELBO 969.61 in
    every seed (Pyro's AutoIAFNormal 969.30). In 2-D the default is left as chosen.

    Raises:
        ValueError: ``laplace_path`` asked for an amortized family (a context).
    """
    if family.precondition == "laplace_path" and context_dim is not None:
        raise ValueError(
            "family.precondition=laplace_path needs a single density (no context): its "
            "pilot fits one Gaussian to p; set family.precondition=none"
        )
    if family.precondition == "auto":
        return context_dim is None and _is_default_above_2d(family, dim)
    return family.precondition == "laplace_path"


class FamilyConfig(FlowConfig):
    """What q is: ``kind`` (see FAMILY_KINDS) with the flow options of :class:`FlowConfig`
    and the ``base`` of a flow; ``kind: stack`` (the default) chains the flows listed in
    ``stack`` on the base, or when ``stack`` is not given vilab's default for the target's
    dimension D (:func:`default_stack` (D): one stack for D ≤ 2, another above; ``stack``
    is ignored by the other kinds); ``kind: uivi`` uses
    ``noise_dim``, ``hidden`` (its network μ(ε [, h])), ``log_q_samples`` (the K draws
    of ε that estimate log q(z) for reported KLs and log-likelihoods) and
    ``train_log_q_samples`` (the draws for the log q(z) of the bound logged while
    training, paid at every logged step). Evaluation sizes K to ``log_q_stderr``: K
    starts at ``log_q_samples`` and doubles until the root mean square of the per-sample
    standard errors of log q(z) is at most that many nats, or K reaches
    ``max_log_q_samples`` (null: K stays ``log_q_samples``;
    :meth:`vilab.families.noise_mixture.NoiseMixture.log_q_estimate`).

    ``precondition``: ``laplace_path`` ends q in a fixed affine map z = m + L u set before
    the first step by a pilot (the best Laplace approximation N(m, L Lᵀ) along an L-BFGS
    path, :mod:`vilab.train.pilot`), so the flows work where p is near N(0, I); ``none``
    does not; ``auto`` (default) does it for vilab's default family above 2-D
    (:func:`preconditions`). Not for amortized families or a semi-implicit one."""

    kind: str = "stack"
    precondition: Literal["auto", "none", "laplace_path"] = "auto"
    base: Literal["standard", "mean_field", "full_rank"] = "mean_field"
    stack: list[FlowConfig] | None = None
    noise_dim: int = Field(10, ge=1)
    log_q_samples: int = Field(1000, ge=1)
    train_log_q_samples: int = Field(100, ge=1)
    log_q_stderr: float | None = Field(0.05, gt=0, allow_inf_nan=False)
    max_log_q_samples: int = Field(128_000, ge=1, validate_default=True)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return _one_of(v, FAMILY_KINDS, "family")

    @field_validator("max_log_q_samples")
    @classmethod
    def _cap_above_start(cls, v: int, info: ValidationInfo) -> int:
        start = info.data.get("log_q_samples")
        if start is not None and v < start:
            raise ValueError(f"must be ≥ log_q_samples ({start}), the K the sizing starts from")
        return v

    @model_validator(mode="after")
    def _stack_given(self) -> FamilyConfig:
        if self.kind == "stack" and self.stack is not None and not self.stack:
            raise ValueError("family.kind=stack needs family.stack: a list of flows")
        return self
