"""Configuration: defaults, YAML files, overrides, and clear errors."""

from __future__ import annotations

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
