"""Configuration: defaults, YAML files, overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vilab.config import ConfigError, FitConfig, dump_config, load_fit_config, parse_override


def test_defaults_are_valid_and_round_trip(tmp_path) -> None:
    cfg = load_fit_config()
    assert isinstance(cfg, FitConfig) and cfg.samples == 1000
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_fit_config(path) == cfg


def test_file_then_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("target: {name: U3}\nfamily: {kind: planar, layers: 8}\nsteps: 77\n")
    cfg = load_fit_config(path, ["family.layers=16", "optim.lr=1e-2", "family.hidden=[8, 8]"])
    assert (cfg.target.name, cfg.family.kind, cfg.family.layers, cfg.steps) == (
        "U3",
        "planar",
        16,
        77,
    )
    assert cfg.optim.lr == 1e-2 and cfg.family.hidden == [8, 8]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["steps=0"], "steps: Input should be greater than or equal to 1 (got 0)"),
        (["family.kind=maf"], "unknown family 'maf'"),
        (["family.hidden=[]"], "non-empty list"),
        (["optim.schedule=linear"], "optim.schedule"),
        (["nonsense=1"], "nonsense: unknown key"),
        (["family.layrs=3"], "family.layrs: unknown key"),
        (["steps"], "must look like key.sub=value"),
        (["steps=[1"], "not valid YAML"),
        (["steps.x=1"], "steps: Input should be a valid integer"),
        (["steps=3", "steps.x=1"], "'steps' is not a section"),
        (["samples=4", "contexts=8", "target.name=banana_family"], "must be ≥ contexts"),
    ],
)
def test_bad_overrides_name_the_key_and_value(overrides, message) -> None:
    with pytest.raises(ConfigError) as err:
        load_fit_config(overrides=overrides)
    assert message in str(err.value)


def test_bad_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_fit_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_fit_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_fit_config(bad)
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError):
        load_fit_config(bad)


def test_parse_override_reads_yaml_scalars() -> None:
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=U1") == ("a", "U1")
    assert parse_override("a=") == ("a", None)


@pytest.mark.parametrize("key", ["stl=true", "beta_steps=5", "beta_start=0.1"])
def test_old_fit_keys_are_refused_with_their_new_spelling(key, tmp_path) -> None:
    old = key.partition("=")[0]
    with pytest.raises(ConfigError, match=f"{old}: {old} was renamed objective.{old}"):
        load_fit_config(overrides=[key])
    path = tmp_path / "old.yaml"
    path.write_text(f"{old}: {key.partition('=')[2]}\n")
    with pytest.raises(ConfigError, match=f"{old} was renamed objective.{old}"):
        load_fit_config(path)


def test_old_vae_warm_up_key_is_refused_with_its_new_spelling() -> None:
    from vilab.config import load_train_config

    with pytest.raises(ConfigError, match="kl_warmup_steps was renamed objective.beta_steps"):
        load_train_config(overrides=["objective.kl_warmup_steps=10"])


def test_fits_and_vaes_spell_beta_and_stl_alike() -> None:
    from vilab.config import load_train_config

    fit = load_fit_config(overrides=["objective.beta_steps=7", "objective.stl=true"]).objective
    assert (fit.beta_start, fit.beta_steps, fit.stl) == (0.01, 7, True)
    assert load_fit_config().objective.beta_steps is None  # 40% of the run
    vae = load_train_config(overrides=["objective.beta_start=0.2", "objective.beta_steps=7"])
    obj = vae.objective
    assert (obj.beta_start, obj.beta_steps, obj.stl) == (0.2, 7, False)
    assert load_train_config().objective.beta_steps == 0  # off
    with pytest.raises(ConfigError, match="posterior.kind=uivi trains with objective.kind=elbo"):
        load_train_config(overrides=["posterior.kind=uivi", "objective.kind=iwae"])


def test_fit_cli_flags_map_to_the_objective_section() -> None:
    from vilab.cli import _fit_overrides, build_parser

    args = build_parser().parse_args(["fit", "--beta-steps", "0", "--stl"])
    cfg = load_fit_config(overrides=_fit_overrides(args))
    assert cfg.objective.beta_steps == 0 and cfg.objective.stl


PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads(path: Path) -> None:
    """Every file in configs/ validates as the config it is (a fit has a target)."""
    from vilab.config import load_train_config

    raw = path.read_text()
    config = load_fit_config(path) if "\ntarget:" in f"\n{raw}" else load_train_config(path)
    assert config.model_dump()


@pytest.mark.parametrize(
    "path", [p for p in PRESETS if "freyfaces" in p.stem], ids=lambda p: p.stem
)
def test_freyfaces_presets_build_for_28_by_20_faces(path: Path) -> None:
    """The Frey Faces presets build their VAE for (1, 28, 20) images and score a batch."""
    import torch

    from vilab.config import load_train_config
    from vilab.vae import build_vae

    vae = build_vae(load_train_config(path), image_shape=(1, 28, 20))
    x = torch.randint(0, 256, (2, 560)).float() / 255  # images are served flattened
    assert torch.isfinite(vae.log_weights(x, 3)).all()
