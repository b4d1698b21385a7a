"""Draws of q per step sized to a ``max_seconds`` budget (vilab.train.budget)."""

from __future__ import annotations

import pytest
import torch

from vilab.config import load_fit_config
from vilab.core.checkpoint import encode_checkpoint, load_checkpoint
from vilab.train.budget import draws_for_budget
from vilab.train.fit import Fitter


def test_draws_shrink_in_proportion_to_the_shortfall_and_stay_within_bounds() -> None:
    # 0.5 s a step, 100 s left: 200 steps of the 1,000 asked for, so a fifth of the draws
    assert draws_for_budget(1000, 0.5, 100.0, 1000, 100) == 200
    assert draws_for_budget(1000, 0.05, 100.0, 1000, 100) == 1000  # 2,000 steps: enough
    assert draws_for_budget(1000, 5.0, 100.0, 1000, 100) == 100  # 20 steps: the floor
    assert draws_for_budget(1000, 0.5, -3.0, 1000, 100) == 100  # the budget is spent
    assert draws_for_budget(64, 0.0, 100.0, 1000, 100) == 64  # untimed: as configured


class _Counting:
    """N(0, I) in 2-D that records the batch size of every call."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.sizes.append(z.shape[0])
        return -0.5 * (z**2).sum(-1)


def _fitter(*extra: str) -> tuple[Fitter, _Counting]:
    target = _Counting()
    over = ["family.kind=mean_field", "samples=1000", "max_seconds=100", "steps=100000"]
    fitter = Fitter(load_fit_config(overrides=[*over, *extra]), target=target)
    fitter.clock = lambda: 0.5 * fitter.step  # type: ignore[method-assign]  # 0.5 s a step
    target.sizes.clear()  # (the checks of a user's callable when it is wrapped)
    return fitter, target


def test_a_budget_that_affords_too_few_steps_draws_fewer_per_step_after_the_probe(
    tmp_path,
) -> None:
    fitter, target = _fitter()
    for _ in range(14):
        fitter.train_step()
    # timed over steps 2-11 (0.5 s each); 94.5 s left afford 189 steps of the 1,000
    assert target.sizes[:11] == [1000] * 11 and target.sizes[11:] == [189] * 3
    assert fitter.budget == {"step_seconds": 0.5, "draws": 189, "at_step": 11}
    # a resumed run (or a rollback) draws as the checkpoint says, without probing again
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(encode_checkpoint(fitter.state_dict()))
    again, target_again = _fitter()
    again.load_state_dict(load_checkpoint(path))
    again.train_step()
    assert target_again.sizes[-1] == 189 and again.budget == fitter.budget


@pytest.mark.parametrize("extra", [["budget.min_steps=null"], ["max_seconds=null"]])
def test_without_a_budget_or_with_sizing_off_every_step_draws_samples(extra) -> None:
    fitter, target = _fitter(*extra)
    for _ in range(14):
        fitter.train_step()
    assert set(target.sizes) == {1000} and fitter.budget is None


def test_budget_keys_are_checked() -> None:
    with pytest.raises(ValueError, match="min_samples"):
        load_fit_config(overrides=["budget.min_samples=0"])
    with pytest.raises(ValueError, match="budget.min_samples .8. must be ≥ contexts .16."):
        load_fit_config(overrides=["target.name=banana_family", "budget.min_samples=8"])
