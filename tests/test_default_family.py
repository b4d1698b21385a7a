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
)
from vilab.config.family import SMALL_DIM, FlowConfig, default_stack
from vilab.flows import AffineAutoregressive, SplineAutoregressive, Sylvester
from vilab.flows.affine import FixedAffine
from vilab.flows.iaf import IAF
from vilab.train.fit import Fitter

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
