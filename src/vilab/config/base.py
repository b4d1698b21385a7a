"""Config machinery shared by every run type: strict models, YAML and overrides."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

FLOW_KINDS = (
    "planar",
    "radial",
    "iaf",
    "affine_autoregressive",
    "sylvester_orthogonal",
    "sylvester_householder",
    "sylvester_triangular",
    "affine_coupling",
    "spline_coupling",
    "spline_autoregressive",
    "naf",
)
FAMILY_KINDS = ("mean_field", "full_rank", *FLOW_KINDS, "stack", "uivi")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


M = TypeVar("M", bound=BaseModel)


def _positive_widths(v: list[int]) -> list[int]:
    if not v or any(h < 1 for h in v):
        raise ValueError(f"hidden must be a non-empty list of positive widths, got {v}")
    return v


Widths = Annotated[list[int], AfterValidator(_positive_widths)]


def _one_of(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    return value


def _device_spec(v: str) -> str:
    """The form of a device setting (the machine is checked when the run starts, by
    :func:`vilab.core.device.resolve_device`, which reads the same forms)."""
    spec = v.strip().lower()
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec) is None:
        raise ValueError(f"device {v!r}: accepted auto, cpu, cuda, cuda:N")
    return spec


#: A ``device`` setting: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``;
#: checked for form here and against the machine when the run starts
#: (:func:`vilab.core.device.resolve_device`).
DeviceSpec = Annotated[str, AfterValidator(_device_spec)]


class ConfigError(ValueError):
    """A config file or override that does not validate; the message says what and why."""


def _format_validation(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(config)"
        given = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg} (got {given!r})")
    return "invalid configuration:\n" + "\n".join(lines)


def validated(model: type[M], **values: Any) -> M:
    """``model`` from keyword values (a section built in Python), a
    :class:`ConfigError` naming each bad key and value if they do not validate."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise ConfigError(_format_validation(err)) from None


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``"family.layers=32"`` -> ``("family.layers", 32)``; the value is read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
    return key.strip(), value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, with clear errors for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping, got {type(data).__name__}")
    return data


def _load(
    model: type[M],
    path: str | Path | None,
    overrides: list[str] | None,
    base: dict[str, Any] | None,
) -> M:
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = merge(data, read_yaml(path))
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation(err)) from None


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` updated by ``b``, section by section (nested dicts merge, other values
    replace)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (what the run directory stores)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
