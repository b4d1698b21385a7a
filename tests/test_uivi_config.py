"""The semi-implicit family's log q sizing from the config: ``family.log_q_stderr`` and
``family.max_log_q_samples`` validated, stored, built into the family, and a KL
bracket's notes covering only its own estimates."""

from __future__ import annotations

import pytest
import torch

from vilab.build import build_family, family_from_config
from vilab.config import ConfigError, dump_config, load_fit_config, load_train_config
from vilab.evaluation.fit import kl_bracket
from vilab.train.rundir import config_changes
from vilab.vae import build_vae


def test_defaults_size_a_fit_and_keep_a_vae_fixed() -> None:
    fam = load_fit_config().family
    assert (fam.log_q_stderr, fam.max_log_q_samples) == (0.05, 128_000)
    assert load_train_config().posterior.log_q_stderr is None  # images × samples estimates


def test_log_q_keys_round_trip(tmp_path) -> None:
    sets = ["family.kind=uivi", "family.log_q_stderr=0.02", "family.max_log_q_samples=4000"]
    cfg = load_fit_config(overrides=sets)
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    again = load_fit_config(path)
    assert again == cfg and again.family.log_q_stderr == 0.02
    fixed = load_fit_config(overrides=["family.log_q_stderr=null"])
    assert fixed.family.log_q_stderr is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("family.log_q_stderr=0", "family.log_q_stderr: Input should be greater than 0 (got 0)"),
        ("family.log_q_stderr=-0.1", "family.log_q_stderr: Input should be greater than 0"),
        ("family.log_q_stderr=.nan", "family.log_q_stderr: Input should be a finite number"),
        ("family.log_q_stderr=small", "family.log_q_stderr: Input should be a valid number"),
        ("family.max_log_q_samples=0", "family.max_log_q_samples: Input should be greater"),
        ("family.max_log_q_samples=2.5", "family.max_log_q_samples: Input should be a valid"),
        (
            "family.max_log_q_samples=500",
            "family.max_log_q_samples: must be ≥ log_q_samples (1000), the K the sizing "
            "starts from (got 500)",
        ),
    ],
)
def test_a_bad_log_q_setting_is_refused_with_its_key(override, message) -> None:
    with pytest.raises(ConfigError) as err:
        load_fit_config(overrides=[override])
    assert message in str(err.value)


def test_a_start_above_the_default_cap_is_refused_at_the_cap() -> None:
    with pytest.raises(ConfigError, match=r"family.max_log_q_samples: must be ≥ log_q_samples"):
        load_fit_config(overrides=["family.log_q_samples=200000"])
    cfg = load_fit_config(
        overrides=["family.log_q_samples=200000", "family.max_log_q_samples=200000"]
    )
    assert cfg.family.max_log_q_samples == 200_000


def test_the_built_family_carries_the_settings() -> None:
    cfg = load_fit_config(
        overrides=["family.kind=uivi", "family.log_q_stderr=0.2", "family.max_log_q_samples=3000"]
    )
    q = family_from_config(cfg.family, 2)
    assert (q.log_q_stderr, q.max_log_q_samples, q.log_q_samples) == (0.2, 3000, 1000)
    assert build_family("uivi", 2, log_q_stderr=None).log_q_stderr is None
    assert build_family("uivi", 2).log_q_stderr == 0.05


def test_a_vae_posterior_carries_its_settings() -> None:
    sets = ["data.name=tiny", "latent_dim=5", "encoder.kind=identity", "posterior.kind=uivi"]
    sets += ["posterior.hidden=[32]", "posterior.log_q_stderr=0.1"]
    vae = build_vae(load_train_config(overrides=[*sets, "posterior.max_log_q_samples=5000"]))
    q = vae.posterior.family
    assert (q.log_q_stderr, q.max_log_q_samples) == (0.1, 5000)


def test_resuming_an_older_run_ignores_the_new_evaluation_keys() -> None:
    cfg = load_fit_config(overrides=["family.kind=uivi"])
    stored = cfg.model_dump(mode="json")
    del stored["family"]["log_q_stderr"], stored["family"]["max_log_q_samples"]
    assert config_changes(stored, cfg) == []


def test_kl_bracket_notes_cover_only_its_own_estimates() -> None:
    """An earlier estimate with a larger K is forgotten: the bracket's K is its own."""
    torch.manual_seed(0)
    q = build_family("uivi", 2, noise_dim=2, hidden=[8], log_q_stderr=None)
    q.log_q_samples = 400
    q.rsample_and_log_q_bounds(20)
    assert q.log_q_summary()["log_q_draws"] == 400
    q.log_q_samples = 50

    class Gauss:
        def log_prob(self, z, context=None):
            return -0.5 * (z * z).sum(-1)

    out = kl_bracket(q, Gauss(), 0.0, 40)  # type: ignore[arg-type]
    assert out["log_q_draws"] == 50 and "K=50 prior draws" in out["kl_note"]
    assert q.log_q_summary()["log_q_estimates"] == 40
