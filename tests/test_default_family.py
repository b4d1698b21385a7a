"""vilab's default family, a rule by dimension (:func:`vilab.config.default_stack`): the
2-D stack for D ≤ 2, unchanged; affine autoregressive layers above, trained without
β-annealing unless asked (:func:`vilab.config.anneals_by_default`); a given stack wins in
every dimension; the rule is resolved when the family is built, so a stored config
(``stack: null``) rebuilds the same family."""

from __future__ import annotations

import pytest
import torch

from vilab.build import family_from_config, stack_for
from vilab.config import (
    FamilyConfig,
    FitConfig,
    anneals_by_default,
    dump_config,
    load_fit_config,
    stl_by_default,
)
from vilab.config.family import SMALL_DIM, FlowConfig, default_stack
from vilab.flows import AffineAutoregressive, SplineAutoregressive, Sylvester
from vilab.flows.affine import FixedAffine
from vilab.flows.iaf import IAF
from vilab.train.fit import Fitter
from vilab.train.schedule import LATE_STL, stl_now

#: the D ≤ 2 default as it was before the rule (benchmarks/peers2d.py's winner)
TWO_D = [
    FlowConfig(kind="sylvester_orthogonal", layers=16),
    FlowConfig(kind="spline_autoregressive", layers=3, hidden=[64, 64]),
    FlowConfig(kind="iaf", layers=2, hidden=[64, 64]),
]


def spelled(stack: list[FlowConfig]) -> list[tuple[str, int, list[int]]]:
    return [(f.kind, f.layers, f.hidden) for f in stack]


def test_the_rule_picks_the_2d_stack_up_to_two_dimensions_and_affine_ar_above() -> None:
    cfg = FitConfig().family
    assert cfg.kind == "stack" and cfg.stack is None  # not given: the rule decides
    assert SMALL_DIM == 2
    for dim in (1, 2):
        assert stack_for(cfg, dim) == default_stack(dim) == TWO_D
    for dim in (3, 10, 100):
        assert spelled(stack_for(cfg, dim)) == [("affine_autoregressive", 3, [64, 64])]
    assert default_stack() == TWO_D  # the argument's default is the 2-D one


def test_a_given_stack_is_used_in_every_dimension() -> None:
    mine = [{"kind": "iaf", "layers": 4, "hidden": [16]}]
    cfg = FamilyConfig(stack=mine)
    for dim in (2, 10):
        assert spelled(stack_for(cfg, dim)) == [("iaf", 4, [16])]


def test_the_2d_default_family_is_unchanged_parameter_for_parameter() -> None:
    """Built from the default config and from the old stack spelled out, with the same
    seed: the same modules and the same initial parameters, bit for bit."""
    torch.manual_seed(0)
    new = family_from_config(FamilyConfig(), 2)
    torch.manual_seed(0)
    old = family_from_config(FamilyConfig(stack=TWO_D), 2)
    assert [type(f) for f in new.flows] == [Sylvester, *[SplineAutoregressive] * 3, IAF, IAF]
    a, b = new.state_dict(), old.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_10d_target_gets_the_affine_autoregressive_family() -> None:
    fitter = Fitter(load_fit_config(overrides=["target.name=funnel10", "samples=8"]))
    *flows, affine = list(fitter.family.flows)
    assert [type(f) for f in flows] == [AffineAutoregressive] * 3
    assert [f.order[0] for f in flows] == [0, 9, 0]  # the orders alternate
    assert isinstance(affine, FixedAffine) and not affine.ready  # the pilot's, unset
    assert torch.isfinite(torch.tensor(fitter.train_step().values["bound"]))
    assert affine.ready and fitter.pilot is not None


def test_a_stored_config_keeps_the_rule(tmp_path) -> None:
    """``config.yaml`` says ``stack: null``, so a resumed 10-D run rebuilds the 10-D family
    (not the 2-D stack that a filled-in default would have pinned)."""
    cfg = load_fit_config(overrides=["target.name=funnel10"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    again = load_fit_config(path)
    assert again == cfg and again.family.stack is None
    assert stack_for(again.family, 10) == default_stack(10)


def test_anneals_by_default_only_spares_the_default_family_above_2d() -> None:
    assert anneals_by_default(FamilyConfig(), 2)
    assert not anneals_by_default(FamilyConfig(), 3)
    assert anneals_by_default(FamilyConfig(kind="iaf"), 10)
    assert anneals_by_default(FamilyConfig(stack=default_stack(10)), 10)  # spelled out: asked


def test_an_empty_stack_is_refused() -> None:
    with pytest.raises(ValueError, match="needs family.stack"):
        FamilyConfig(stack=[])


@pytest.mark.parametrize(
    ("target", "family", "annealed"),
    [
        ("U1", [], True),  # the 2-D default: annealed as ever
        ("funnel10", [], False),  # the D > 2 default: β = 1 from the start
        ("funnel10", ["family.kind=mean_field"], True),  # another family: annealed
        ("funnel10", ["family.stack=[{kind: affine_autoregressive, layers: 3}]"], True),
        ("funnel10", ["objective.beta_steps=50"], True),  # asked for: annealed
    ],
)
@pytest.mark.parametrize("auto", [True, False])
def test_the_d_above_2_default_is_not_annealed_unless_asked(target, family, annealed, auto):
    steps = [] if auto else ["steps=100"]
    cfg = load_fit_config(overrides=[f"target.name={target}", "samples=8", *steps, *family])
    fitter = Fitter(cfg)
    beta = fitter.train_step().values["beta"]
    assert (beta < 1.0) == annealed


def test_stl_late_by_default_only_for_the_default_family_above_2d() -> None:
    assert stl_by_default(FamilyConfig(), 3) == "late"
    assert stl_by_default(FamilyConfig(), 2) is False
    assert stl_by_default(FamilyConfig(kind="iaf"), 10) is False
    assert stl_by_default(FamilyConfig(stack=default_stack(10)), 10) is False
    assert not stl_now("late", LATE_STL - 1e-9) and stl_now("late", LATE_STL)
    assert stl_now("late", 0.0, lr_reduced=True)  # a fit that stops on convergence
    assert stl_now(True, 0.0) and not stl_now(False, 1.0, lr_reduced=True)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], [False] * 7 + [True] * 3),  # late: from 2/3 of the 100 s budget (70 s) on
        (["objective.stl=true"], [True] * 10),
        (["objective.stl=false"], [False] * 10),
        (["family.kind=mean_field"], [False] * 10),  # another family: off unless asked
        # stopping on convergence without a budget: the step cap is no progress, so off
        # until the first stall (which 10 steps do not reach)
        (["max_seconds=null", "steps=12", "stop.auto=true"], [False] * 10),
    ],
)
def test_late_stl_takes_stl_gradients_in_the_last_third_of_a_budgeted_fit(
    overrides, expected
) -> None:
    over = ["target.name=funnel10", "samples=16", "max_seconds=100", "budget.min_steps=null"]
    fitter = Fitter(load_fit_config(overrides=[*over, *overrides]))
    fitter.clock = lambda: 10.0 * fitter.step  # type: ignore[method-assign]  # 10 s a step
    seen: list[bool] = []
    sample = fitter.family.training_sample

    def recording(*args, stl: bool, **kwargs):
        seen.append(stl)
        return sample(*args, stl=stl, **kwargs)

    fitter.family.training_sample = recording  # type: ignore[method-assign]
    for _ in range(10):
        fitter.train_step()
    assert seen == expected
