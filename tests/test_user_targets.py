"""The targets users write: detached results refused at load, bounded supports fitted
through a support bijection (and their −inf blamed on the target, not the learning rate),
amortized targets without log Z evaluated by the report card, not failed at the end."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

import vilab
from vilab.build import family_from_config, target_from_config
from vilab.cli import _fit_overrides, build_parser, main
from vilab.config import ConfigError, load_fit_config
from vilab.estimators.kl import exact_kl
from vilab.evaluation.fit import eval_context_rows, evaluate_fit
from vilab.families.gaussian import MeanFieldGaussian
from vilab.flows import FlowFamily, SupportTransform, parse_support
from vilab.flows.support import support_flow
from vilab.targets.base import TargetError
from vilab.targets.resolve import resolve_target
from vilab.targets.user import CallableTarget, SupportWarning, with_support
from vilab.train.faults import check_target
from vilab.train.fit import Fitter

DETACHED = "does not depend on z through autograd"

# -- a product of Gamma densities on (0, ∞)², log Z known ----------------------------------
SHAPE, RATE = (2.5, 4.0), (1.5, 1.0)
LOG_Z = sum(math.lgamma(a) - a * math.log(b) for a, b in zip(SHAPE, RATE, strict=True))


def gamma2(z: torch.Tensor) -> torch.Tensor:
    """Unnormalized Gamma(2.5, 1.5) × Gamma(4, 1): Σ (a − 1) log z − b z, −inf outside."""
    a, b = torch.tensor(SHAPE, dtype=z.dtype), torch.tensor(RATE, dtype=z.dtype)
    safe = torch.where(z > 0, z, 1.0)
    log_p = ((a - 1) * safe.log() - b * safe).sum(-1)
    return torch.where((z > 0).all(-1), log_p, -math.inf)


def gamma_strict(z: torch.Tensor) -> torch.Tensor:
    """The same density through torch.distributions, which raises outside (0, ∞)."""
    a, b = torch.tensor(SHAPE, dtype=z.dtype), torch.tensor(RATE, dtype=z.dtype)
    return torch.distributions.Gamma(a, b, validate_args=True).log_prob(z).sum(-1)


def fast_fit(*extra: str) -> list[str]:
    return [
        "family.kind=mean_field",
        "dtype=float64",
        "steps=150",
        "samples=100",
        "optim.lr=0.1",
        "objective.beta_steps=0",
        "eval_samples=20000",
        "report_samples=500",
        "figures=false",
        *extra,
    ]


# -- 1. a detached target is refused at load time -------------------------------------------
def logp_gauss(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z * z).sum(-1)


def detached(z: torch.Tensor) -> torch.Tensor:
    return logp_gauss(z).detach()


def via_numpy(z: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(-0.5 * (z.detach().numpy() ** 2).sum(-1))


def via_item(z: torch.Tensor) -> torch.Tensor:
    return torch.tensor([logp_gauss(row).item() for row in z.reshape(-1, z.shape[-1])])


def under_no_grad(z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return logp_gauss(z)


@pytest.mark.parametrize("fn", [detached, via_numpy, via_item, under_no_grad])
def test_a_detached_target_is_refused_when_it_is_loaded(fn) -> None:
    with pytest.raises(ValueError, match=f"target '{fn.__name__}' returned .*{DETACHED}"):
        CallableTarget(fn, 2, fn.__name__)
    with pytest.raises(ValueError, match=DETACHED):
        resolve_target(fn, 2)
    with torch.no_grad(), pytest.raises(ValueError, match=DETACHED):  # caller's mode: no matter
        resolve_target(fn, 2)


def test_vilab_fit_refuses_a_detached_target_before_any_file_is_written(tmp_path) -> None:
    with pytest.raises(ValueError, match=DETACHED):
        vilab.fit(detached, "mean_field", run_dir=tmp_path / "run", steps=10, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_detached_target_in_a_file_is_refused_by_name(tmp_path) -> None:
    path = tmp_path / "mine.py"
    path.write_text(
        "import numpy as np, torch\n"
        "def logp(z):\n"
        "    return torch.tensor(-np.sum(z.numpy() ** 2, -1))\n"
    )
    with pytest.raises(ValueError, match=f"target 'logp' returned .*{DETACHED}.*requires grad"):
        resolve_target(f"{path}:logp", 2)


def test_a_target_flat_in_some_coordinates_or_constant_is_accepted() -> None:
    flat_in_z1 = CallableTarget(lambda z: -0.5 * z[..., 0] ** 2, 2, "flat")
    z = torch.tensor([[1.0, 5.0]], requires_grad=True)
    flat_in_z1.log_prob(z).sum().backward()
    assert z.grad.tolist() == [[-1.0, 0.0]]
    # a constant log-density has gradient zero whether detached or not: a uniform on a box
    uniform = CallableTarget(lambda z: torch.zeros(z.shape[:-1]), 2, "u", support=[[0, 1]] * 2)
    assert uniform.support == ((0.0, 1.0), (0.0, 1.0))


def test_a_target_whose_gradient_is_zero_everywhere_but_whose_values_vary_is_refused() -> None:
    with pytest.raises(ValueError, match="gradient with respect to z is zero"):
        CallableTarget(lambda z: torch.round(z).sum(-1), 2, "steps")


# -- 2. the support bijections ----------------------------------------------------------------
BOUNDS = ((0.0, math.inf), (-math.inf, 2.0), (-1.0, 3.0), (-math.inf, math.inf), (5.0, math.inf))


@pytest.mark.parametrize("lower", ["softplus", "exp"])
def test_support_logdet_equals_the_autograd_jacobian_and_the_inverse_round_trips(lower) -> None:
    torch.manual_seed(0)
    t = SupportTransform(BOUNDS, lower).double()
    x = 3.0 * torch.randn(7, len(BOUNDS), dtype=torch.float64)
    z, logdet = t(x)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: t(v)[0], x[i])
        assert float(logdet[i]) == pytest.approx(float(torch.slogdet(jac)[1]), abs=1e-10)
    x_back, logdet_inv = t.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(logdet_inv, -logdet, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_support_samples_stay_strictly_inside_even_where_the_maps_saturate(dtype) -> None:
    t = SupportTransform(BOUNDS).to(dtype)
    x = torch.tensor([[-1e4] * 5, [1e4] * 5, [-40.0] * 5, [40.0] * 5], dtype=dtype)
    x.requires_grad_(True)
    z, logdet = t(x)
    lo = torch.tensor([b[0] for b in BOUNDS], dtype=dtype)
    hi = torch.tensor([b[1] for b in BOUNDS], dtype=dtype)
    assert bool(((z > lo) & (z < hi)).all()), z
    assert bool(torch.isfinite(logdet).all())
    z.sum().backward()
    assert bool(torch.isfinite(x.grad).all())


def test_support_inverse_outside_is_minus_infinity_so_q_has_no_mass_there() -> None:
    t = SupportTransform(((0.0, math.inf), (-1.0, 1.0))).double()
    outside = torch.tensor([[-0.5, 0.0], [0.0, 0.5], [1.0, 1.0], [1.0, -3.0]], dtype=torch.float64)
    x, ld = t.inverse(outside)
    assert bool(torch.isfinite(x).all()) and bool(torch.isneginf(ld).all())
    q = FlowFamily(MeanFieldGaussian(2).double(), [t])
    assert bool(torch.isneginf(q.log_prob(outside)).all())


def test_a_family_on_a_support_scores_its_samples_and_integrates_to_one() -> None:
    torch.manual_seed(1)
    q = FlowFamily(MeanFieldGaussian(2).double(), [SupportTransform(((0.0, 1.0), (-2.0, 1.0)))])
    with torch.no_grad():
        q.base.params.values["loc"].copy_(torch.tensor([0.3, -0.4]))
    z, log_q = q.rsample_and_log_prob(1000)
    torch.testing.assert_close(q.log_prob(z), log_q, atol=1e-9, rtol=1e-9)
    # midpoint rule on the support (0, 1) × (−2, 1), whose edges have no mass
    n = 400
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    grid = torch.stack(torch.meshgrid(u, -2.0 + 3.0 * u, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = float(q.log_prob(grid).exp().sum()) * (1.0 / n) * (3.0 / n)
    assert mass == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("negative", "'real', 'positive' or one"),
        ([[0, None]], "has 1 .* pair.*dim 2"),
        ([[1, 0], [0, None]], r"support\[0\] must be a pair .* lo < hi"),
        ([[0, float("nan")], [0, 1]], r"support\[0\]"),
        ([0, 1], r"support\[0\]"),
    ],
)
def test_a_malformed_support_is_refused_naming_it(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_support(spec, 2)


def test_support_specs_in_normal_form() -> None:
    assert parse_support(None, 2) is None and parse_support("real", 3) is None
    assert parse_support([[None, None]] * 2, 2) is None
    assert parse_support("positive", 2) == ((0.0, math.inf),) * 2
    assert parse_support([[0, None], [None, 1], [-1, 1]], 3) == (
        (0.0, math.inf),
        (-math.inf, 1.0),
        (-1.0, 1.0),
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("target.support=negative", "target.support must be 'real', 'positive'"),
        ("target.support=[[2, 1], [0, 1]]", r"target.support\[0\] = \[2, 1\]"),
        ("target.support=[]", "target.support must be"),
    ],
)
def test_the_config_refuses_a_bad_support(override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_fit_config(overrides=[override])
    with pytest.raises(ConfigError, match="2 .* pair.* target.dim is 3"):
        load_fit_config(overrides=["target.dim=3", "target.support=[[0, 1], [0, null]]"])


def test_the_config_keeps_a_support_as_yaml_can_write_it() -> None:
    cfg = load_fit_config(overrides=["target.support=[[0, .inf], [null, 1]]"])
    assert cfg.target.support == [(0.0, None), (None, 1.0)]
    assert load_fit_config(overrides=["target.support=positive"]).target.support == "positive"


def test_a_family_with_a_support_ends_in_the_bijection() -> None:
    cfg = load_fit_config(overrides=["family.kind=planar", "family.layers=2"])
    flows = family_from_config(cfg.family, 2, support=parse_support("positive", 2)).flows
    assert isinstance(flows[-1], SupportTransform) and len(flows) == 2
    mean_field = load_fit_config(overrides=["family.kind=mean_field"]).family
    q = family_from_config(mean_field, 2, support=parse_support([[0, 1], [None, None]], 2))
    assert isinstance(q, FlowFamily) and isinstance(q.base, MeanFieldGaussian)
    amortized = family_from_config(cfg.family, 2, 3, support=parse_support("positive", 2))
    z, _ = amortized.rsample_and_log_prob(5, torch.randn(4, 3))
    assert z.shape == (5, 4, 2) and bool((z > 0).all())
    with pytest.raises(ValueError, match="uivi.*support"):
        family_from_config(
            load_fit_config(overrides=["family.kind=uivi"]).family, 2, None, ((0.0, math.inf),) * 2
        )
    assert support_flow(None) is None
    with pytest.raises(TypeError, match="normal form"):
        SupportTransform([[0, 1]])  # type: ignore[arg-type]


# -- 2. a target on (0, ∞)²: fitted with a support, blamed without --------------------------
def test_a_gamma_target_fits_through_a_positive_support() -> None:
    torch.manual_seed(0)
    target = CallableTarget(gamma2, 2, "gamma2", log_z=LOG_Z, support="positive")
    fitter = Fitter(load_fit_config(overrides=fast_fit()), target=target)
    for _ in range(150):
        assert fitter.train_step(log_value=False).finite == 1.0
    est = exact_kl(fitter.family, fitter.target, LOG_Z, 20_000)
    # softplus(mean-field Gaussian) has no exact Gamma in it: its best KL is ≈ 0.06 nats
    assert 0.0 < est.kl < 0.1 and est.kl_stderr < 0.01
    z = fitter.family.rsample(10_000)
    assert bool((z > 0).all())


def test_without_a_support_the_gamma_target_is_blamed_not_the_learning_rate(tmp_path) -> None:
    with pytest.warns(SupportWarning, match=r"'gamma2' is −inf .* probe points .*support"):
        target = CallableTarget(gamma2, 2, "gamma2", log_z=LOG_Z)
    cfg = load_fit_config(overrides=fast_fit())
    with pytest.raises(TargetError) as err:
        vilab.fit(target, config=cfg, run_dir=tmp_path / "run", progress=False)
    message = str(err.value)
    assert "target 'gamma2' returned −inf" in message and "of 100 samples of q at step 0" in message
    assert "target.support" in message and "no learning rate fixes this" in message
    assert "lower optim.lr" not in message


def test_vilab_fit_with_support_fits_the_gamma_target_with_no_warning(tmp_path) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = vilab.fit(
            gamma2,
            config=load_fit_config(overrides=fast_fit()),
            support="positive",
            log_z=LOG_Z,
            run_dir=tmp_path / "run",
            progress=False,
        )
    m = result.metrics
    assert m["kl"] < 0.1 and m["report"]["kl"] == m["kl"] and m["skipped_steps"] == 0
    assert result.target.support == ((0.0, math.inf),) * 2


def test_a_target_that_raises_outside_its_support_is_probed_inside_a_stated_one() -> None:
    with pytest.raises(ValueError, match="raised ValueError.*state where: target.support") as err:
        resolve_target(gamma_strict, 2)
    assert "\n" not in str(err.value)  # the first line of the error, not its tensor
    target = resolve_target(gamma_strict, 2, support="positive")
    assert target.support == ((0.0, math.inf),) * 2
    cfg = load_fit_config(overrides=["target.name=U1", "target.support=[[-4, 4], [-4, 4]]"])
    u1 = target_from_config(cfg.target)
    assert u1.support == ((-4.0, 4.0), (-4.0, 4.0))


def test_minus_infinity_inside_a_stated_support_is_flagged() -> None:
    with pytest.warns(SupportWarning, match="inside its stated support"):
        CallableTarget(gamma2, 2, "gamma2", support=[[-1, None], [0, None]])
    target = with_support(CallableTarget(logp_gauss, 2, "g"), "positive")
    assert target.support is not None


def test_the_float64_recheck_leaves_an_overflow_of_the_family_to_the_guard() -> None:
    cfg = load_fit_config(overrides=["family.kind=mean_field", "dtype=float32"])
    fitter = Fitter(cfg, target=CallableTarget(logp_gauss, 2, "gauss"))
    huge = torch.tensor([[3e19, 0.0], [1.0, 0.0]])
    log_p = fitter.target.log_prob(huge)  # z² overflows float32: −inf, but not the target's
    assert bool(torch.isneginf(log_p[0]))
    assert (
        check_target(fitter.target, log_p, huge, None, 0) is None
    )  # the guard's: a blown-up family
    gamma = Fitter(cfg, target=CallableTarget(gamma2, 2, "gamma2", support="positive"))
    outside = torch.tensor([[-1.0, 2.0], [1.0, 1.0]])
    with pytest.raises(TargetError, match=r"1 of 2 samples.*z = \[-1, 2\].*inside its stated"):
        check_target(gamma.target, gamma2(outside), outside, None, 0)


def test_nan_from_the_target_that_outlasts_the_rollbacks_names_the_target(tmp_path) -> None:
    target = CallableTarget(logp_gauss, 2, "gauss", log_z=math.log(2 * math.pi))
    target.fn = lambda z: logp_gauss(z) * math.nan  # after the probe: NaN at every sample
    cfg = load_fit_config(
        overrides=[
            *fast_fit("steps=30", "checkpoint_every=5"),
            "faults.max_bad_steps=2",
            "faults.max_rollbacks=1",
        ]
    )
    with pytest.raises(TargetError, match="training stopped: target 'gauss' returned NaN") as err:
        vilab.fit(target, config=cfg, run_dir=tmp_path / "run", progress=False)
    assert "not the learning rate" in str(err.value)


# -- 3. an amortized user target without box or log Z ----------------------------------------
def shifted(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return -((z - c[..., :1]) ** 2).sum(-1)


def test_an_amortized_target_without_log_z_is_evaluated_by_the_report_card() -> None:
    torch.manual_seed(0)
    cfg = load_fit_config(
        overrides=[
            "family.kind=mean_field",
            "target.context_dim=2",
            "samples=64",
            "contexts=4",
            "report_samples=400",
            "eval_contexts=[0.2, 0.7]",
        ]
    )
    fitter = Fitter(cfg, target=resolve_target(shifted, 3, context_dim=2))
    rows = eval_context_rows(fitter.target, cfg.eval_contexts)
    assert rows == [[0.2, 0.2], [0.7, 0.7]]
    for _ in range(5):
        fitter.train_step()
    out = evaluate_fit(fitter.family, fitter.target, cfg.eval_samples, cfg.report_samples, rows)
    assert out["kl"] is None and "log Z unknown" in out["kl_note"]
    assert [row["context"] for row in out["kl_by_context"]] == [[0.2, 0.2], [0.7, 0.7]]
    assert out["report"]["kl_kind"].startswith("importance-sampled")
    assert all(math.isfinite(card["kl"]) for card in out["report"]["by_context"])


# -- the command line --------------------------------------------------------------------------
def test_the_support_flag_parses_into_the_config() -> None:
    args = build_parser().parse_args(["fit", "--support", "[[0, null], [-1, 1]]"])
    cfg = load_fit_config(overrides=_fit_overrides(args))
    assert cfg.target.support == [(0.0, None), (-1.0, 1.0)]
    args = build_parser().parse_args(["fit", "--support", "positive"])
    assert load_fit_config(overrides=_fit_overrides(args)).target.support == "positive"


def test_a_bad_support_flag_exits_2_with_the_reason(tmp_path, capsys) -> None:
    code = main(["fit", "--support", "negative", "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 2 and "target.support must be" in capsys.readouterr().err
    assert not Path(tmp_path / "r").exists()


def test_vilab_fit_takes_the_family_section_as_a_dict_and_refuses_other_types(tmp_path) -> None:
    """A dict for ``family`` is the config's family section (it used to be dropped
    silently, training the default family instead)."""
    res = vilab.fit(
        "U1",
        {"kind": "planar", "layers": 3},
        run_dir=tmp_path / "a",
        progress=False,
        steps=2,
        figures=False,
        eval_samples=2,
        report_samples=100,
    )
    # 3 planar layers (u, w ∈ R², b) on a mean-field base (loc, scale ∈ R²): 3·5 + 4
    assert res.metrics["family"] == "planar" and res.metrics["parameters"] == 19
    with pytest.raises(ValueError, match=r"family=3: accepted None, a kind"):
        vilab.fit("U1", 3, run_dir=tmp_path / "b", progress=False, steps=2)  # type: ignore[arg-type]
    assert not (tmp_path / "b").exists()
