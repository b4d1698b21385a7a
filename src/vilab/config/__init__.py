"""Typed, validated configuration: the only place that reads config files.

A run is described by a :class:`FitConfig` (``vilab fit``: 2-D / user targets) or a
:class:`TrainConfig` (``vilab train``: VAEs). Configs come from defaults, then an optional
YAML file, then ``key.sub=value`` overrides from the command line (values parsed as YAML
scalars/lists). Every error names the bad key and value and what is accepted. This package
imports nothing else of vilab: it describes runs, :mod:`vilab.build` builds them.
"""

from vilab.config.base import (
    FAMILY_KINDS,
    FLOW_KINDS,
    ConfigError,
    dump_config,
    parse_override,
    read_yaml,
)
from vilab.config.family import (
    FamilyConfig,
    FlowConfig,
    anneals_by_default,
    default_stack,
    preconditions,
    stl_by_default,
)
from vilab.config.fit import (
    FaultConfig,
    FitConfig,
    FitObjectiveConfig,
    OptimConfig,
    StopConfig,
    TargetConfig,
    load_fit_config,
)
from vilab.config.train import (
    DataConfig,
    EvalConfig,
    EvalRunConfig,
    NetConfig,
    ObjectiveConfig,
    PosteriorConfig,
    TrainConfig,
    TrainOptimConfig,
    load_train_config,
)

__all__ = [
    "FAMILY_KINDS",
    "FLOW_KINDS",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "EvalRunConfig",
    "FamilyConfig",
    "FaultConfig",
    "StopConfig",
    "FitConfig",
    "FitObjectiveConfig",
    "FlowConfig",
    "NetConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "PosteriorConfig",
    "TargetConfig",
    "TrainConfig",
    "TrainOptimConfig",
    "anneals_by_default",
    "default_stack",
    "preconditions",
    "stl_by_default",
    "dump_config",
    "load_fit_config",
    "load_train_config",
    "parse_override",
    "read_yaml",
]
