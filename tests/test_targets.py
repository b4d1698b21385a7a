"""Targets: definitions, log-normalizers against REFERENCE.md, user targets, bad targets."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch

from vilab.targets import (
    BUILTIN_TARGETS,
    Banana,
    BananaFamily,
    default_eval_contexts,
    resolve_target,
)
from vilab.targets.base import validate_box
from vilab.targets.energies import u1, u2, u3, u4
from vilab.targets.grid import grid_log_z
from vilab.targets.user import CallableTarget

REFERENCE_LOG_Z = {"U1": 1.877502, "U2": 2.082089, "U3": 2.641705, "U4": 2.710698, "banana": 0.0}


@pytest.mark.parametrize("name", list(REFERENCE_LOG_Z))
def test_grid_log_z_matches_reference(name: str) -> None:
    target = BUILTIN_TARGETS[name]()
    assert grid_log_z(target) == pytest.approx(REFERENCE_LOG_Z[name], abs=1e-4)
    assert target.log_z == pytest.approx(REFERENCE_LOG_Z[name], abs=1e-6)


def test_grid_log_z_of_gaussian_is_exact() -> None:
    def logp(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((z / torch.tensor([0.7, 1.3], dtype=z.dtype)) ** 2).sum(-1)

    target = CallableTarget(logp, 2, box=(-9, 9, -12, 12))
    assert grid_log_z(target) == pytest.approx(math.log(2 * math.pi * 0.7 * 1.3), abs=1e-8)


def _w1(z1: float) -> float:
    return math.sin(2 * math.pi * z1 / 4)


def test_energies_match_reference_formulas_pointwise() -> None:
    """Scalar transcriptions of REFERENCE.md §1 (no walls inside the box) at a few points."""
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    for z1, z2 in [(0.3, -1.2), (1.7, 0.4), (-2.2, 2.5), (3.1, -0.7)]:
        w1 = _w1(z1)
        w2 = 3 * math.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
        w3 = 3 * sig((z1 - 1) / 0.3)
        r = math.hypot(z1, z2)
        e1 = 0.5 * ((r - 2) / 0.4) ** 2 - math.log(
            math.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + math.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)
        )
        e2 = 0.5 * ((z2 - w1) / 0.4) ** 2
        e3 = -math.log(
            math.exp(-0.5 * ((z2 - w1) / 0.35) ** 2) + math.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2)
        )
        e4 = -math.log(
            math.exp(-0.5 * ((z2 - w1) / 0.4) ** 2) + math.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2)
        )
        z = torch.tensor([z1, z2], dtype=torch.float64)
        wall = math.log1p(math.exp(10 * (abs(z1) - 4)))
        assert float(u1(z)) == pytest.approx(e1, rel=1e-12)
        assert float(u2(z)) == pytest.approx(e2 + wall, rel=1e-12)
        assert float(u3(z)) == pytest.approx(e3 + wall, rel=1e-12)
        assert float(u4(z)) == pytest.approx(e4 + wall, rel=1e-12)


def test_energies_are_stable_far_out() -> None:
    z = torch.tensor([[40.0, -30.0], [-50.0, 60.0]], dtype=torch.float64)
    for u in (u1, u2, u3, u4):
        assert torch.isfinite(u(z)).all()


def test_banana_is_normalized_gaussian_after_unit_jacobian_map() -> None:
    g = torch.Generator().manual_seed(0)
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    x = torch.randn(1000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    z = torch.stack([x[:, 0], x[:, 1] - x[:, 0] ** 2 - 1.0], dim=-1)
    ref = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov).log_prob(
        x
    )
    torch.testing.assert_close(Banana().log_prob(z), ref)


@pytest.mark.parametrize("c", [0.5, 0.83, 1.5])
def test_banana_family_log_z_is_zero_at_every_curvature(c: float) -> None:
    fam = BananaFamily()
    fixed = fam.at(torch.tensor([c], dtype=torch.float64))
    assert grid_log_z(fixed, box=Banana(c).quad_box) == pytest.approx(0.0, abs=1e-4)
    z = torch.randn(7, 3, 2, dtype=torch.float64)
    ctx = torch.full((3, 1), c, dtype=torch.float64)
    torch.testing.assert_close(fam.log_prob(z, ctx), Banana(c).log_prob(z))


def test_banana_family_contexts_in_range() -> None:
    c = BananaFamily(0.5, 1.5).sample_context(1000)
    assert c.shape == (1000, 1) and c.min() >= 0.5 and c.max() <= 1.5


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    src = textwrap.dedent(
        """
        import torch
        def good(z):
            return -0.5 * (z ** 2).sum(-1)
        def good_ctx(z, c):
            return -0.5 * ((z - c) ** 2).sum(-1)
        def wrong_shape(z):
            return -0.5 * z ** 2
        def nan(z):
            return torch.where(z[..., 0] > 0, torch.nan, 0.0 * z[..., 0])
        def pos_inf(z):
            return torch.full(z.shape[:-1], float('inf'))
        def neg_inf(z):
            return torch.full(z.shape[:-1], float('-inf'))
        def raises(z):
            raise RuntimeError('boom')
        def numpy_out(z):
            return (z ** 2).sum(-1).numpy()
        not_callable = 3
        """
    )
    (tmp_path / "usertargets.py").write_text(src)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_user_target_by_module_and_by_file(user_module) -> None:
    t = resolve_target("usertargets:good", dim=3)
    assert t.dim == 3 and t.log_prob(torch.zeros(4, 3)).shape == (4,)
    t2 = resolve_target(f"{user_module / 'usertargets.py'}:good", box=(-8, 8, -8, 8))
    assert grid_log_z(t2) == pytest.approx(math.log(2 * math.pi), abs=1e-6)


def test_user_target_family(user_module) -> None:
    t = resolve_target("usertargets:good_ctx", context_dim=2, context_range=(-1, 1))
    assert t.sample_context(5).shape == (5, 2)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("wrong_shape", "expected a tensor of shape (256,)"),
        ("nan", "NaN"),
        ("pos_inf", "+inf"),
        ("neg_inf", "every probe point"),
        ("raises", "RuntimeError"),
        ("numpy_out", "expected a tensor"),
        ("not_callable", "no callable"),
        ("missing", "no callable"),
        ("good_ctx", "context_dim"),
    ],
)
def test_bad_user_targets_are_refused_clearly(user_module, name: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        resolve_target(f"usertargets:{name}")
    assert message in str(err.value)


def test_unknown_target_names() -> None:
    with pytest.raises(ValueError, match="unknown target 'U9'"):
        resolve_target("U9")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_target("no/such/file.py:f")
    with pytest.raises(ValueError, match="cannot import module"):
        resolve_target("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="has dim 2"):
        resolve_target("U1", dim=3)


@pytest.mark.parametrize("box", [(1, 0, 0, 1), (0, 1), ("a", 1, 0, 1), (0, float("inf"), 0, 1)])
def test_bad_boxes(box) -> None:
    with pytest.raises(ValueError, match="box"):
        validate_box(box)


def test_default_eval_contexts_are_interior_points_of_the_context_range(user_module) -> None:
    """c_k = lo + (k + 0.37)/4 · (hi − lo), one value per context dimension."""
    rows = default_eval_contexts(BananaFamily(0.5, 1.5))
    assert [r[0] for r in rows] == pytest.approx([0.5 + (k + 0.37) / 4 for k in range(4)])
    assert all(len(r) == 1 for r in rows)
    user = resolve_target("usertargets:good_ctx", context_dim=2, context_range=(-1, 1))
    rows = default_eval_contexts(user)
    assert len(rows) == 4 and all(len(r) == 2 and r[0] == r[1] and -1 < r[0] < 1 for r in rows)
    assert rows[0][0] == pytest.approx(-1 + 2 * 0.37 / 4)
