"""The 2-D figures: what the learned-density picture of each kind of family is."""

from __future__ import annotations

import torch

from vilab.families.base import AtContext
from vilab.families.gaussian import MeanFieldGaussian
from vilab.families.semi_implicit import SemiImplicit
from vilab.plots.density2d import learned_density, plot_run
from vilab.targets.energies import Banana

BOX = (-4.0, 4.0, -4.0, 4.0)


def _spy_log_q(monkeypatch) -> list[tuple[tuple[int, ...], int | None]]:
    """Records (z's shape, K) of every importance-sampled log q of a semi-implicit q."""
    calls: list[tuple[tuple[int, ...], int | None]] = []
    inner = SemiImplicit.log_prob_bounds

    def spy(self, z, context=None, eps0=None, k=None, chunk=50):
        calls.append((tuple(z.shape), k))
        return inner(self, z, context, eps0, k, chunk)

    monkeypatch.setattr(SemiImplicit, "log_prob_bounds", spy)
    return calls


def test_semi_implicit_picture_is_the_mixture_of_its_eps_draws(monkeypatch) -> None:
    torch.manual_seed(0)
    family = SemiImplicit(2, noise_dim=3, hidden=(16,)).double()
    calls = _spy_log_q(monkeypatch)
    img, title = learned_density(family, BOX, n=80)
    assert calls == [((80 * 80, 2), None)] and "importance-sampled estimate" in title
    # a density, not a histogram: it integrates to ~1 over a box holding q's mass
    assert img.shape == (80, 80) and abs(float(img.sum()) * (8 / 80) ** 2 - 1) < 0.01
    family.log_q_samples = 7
    spy_k = []
    real = SemiImplicit.mean
    monkeypatch.setattr(
        SemiImplicit, "mean", lambda s, e, *a: spy_k.append(e.shape[0]) or real(s, e, *a)
    )
    learned_density(family, BOX, n=20)
    assert spy_k == [7]  # one bank of K = log_q_samples draws of ε for the whole grid


def test_amortized_semi_implicit_picture_at_one_context(monkeypatch) -> None:
    torch.manual_seed(1)
    family = SemiImplicit(2, noise_dim=3, hidden=(16,), context_dim=1).double()
    calls = _spy_log_q(monkeypatch)
    img, _ = learned_density(AtContext(family, torch.tensor([[0.5]], dtype=torch.float64)), BOX, 40)
    assert calls == [((1600, 1, 2), None)]
    assert abs(float(img.sum()) * (8 / 40) ** 2 - 1) < 0.02


def test_exact_family_picture_is_its_density() -> None:
    family = MeanFieldGaussian(2).double()
    img, title = learned_density(family, BOX, n=50)
    assert title == "learned density q (exact)"
    assert abs(float(img.sum()) * (8 / 50) ** 2 - 1) < 0.01


def test_plot_run_scores_a_semi_implicit_grid_once_and_no_samples(monkeypatch, tmp_path) -> None:
    """The figures of a UIVI fit: one K-draw mixture on the grid (shared by the single
    picture and the summary); the sample panels draw samples without their log q."""
    torch.manual_seed(2)
    family = SemiImplicit(2, noise_dim=3, hidden=(16,))
    calls = _spy_log_q(monkeypatch)
    records = [{"step": s, "bound": -2.0 + s / 10, "kl": 1.0 / (s + 1)} for s in range(3)]
    plot_run(family, Banana(), records, tmp_path)
    assert calls == [((200 * 200, 2), None)]
    for name in ["true_density", "learned_density", "layers", "training", "summary"]:
        assert (tmp_path / f"{name}.png").is_file(), name
