"""Typed configuration: one pydantic model per stage, loaded from YAML, overridable by dotted keys.

Every error names the dotted key (``generate.n_patients``) and the problem.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from clinrisk.config.base import Section
from clinrisk.config.features import FeaturesConfig, LabelsConfig, SplitConfig
from clinrisk.config.generate import GenerateConfig
from clinrisk.config.modeling import (
    EvaluateConfig,
    SelectConfig,
    ThresholdConfig,
    TrackingConfig,
    TrainConfig,
)
from clinrisk.config.monitoring import ExperimentsConfig, MonitoringConfig, PromotionConfig
from clinrisk.config.pipeline import PipelineConfig, StepResources
from clinrisk.config.run import RunConfig
from clinrisk.config.serving import ServingConfig
from clinrisk.config.validate import ValidateConfig
from clinrisk.errors import ConfigError

__all__ = [
    "ClinriskConfig",
    "EvaluateConfig",
    "ExperimentsConfig",
    "FeaturesConfig",
    "GenerateConfig",
    "LabelsConfig",
    "MonitoringConfig",
    "PipelineConfig",
    "PromotionConfig",
    "RunConfig",
    "SelectConfig",
    "ServingConfig",
    "SplitConfig",
    "StepResources",
    "ThresholdConfig",
    "TrackingConfig",
    "TrainConfig",
    "ValidateConfig",
    "apply_overrides",
    "config_hash",
    "flatten_config",
    "load_config",
    "save_config",
]


class ClinriskConfig(Section):
    """The whole configuration of a clinrisk run."""

    run: RunConfig = Field(default_factory=RunConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    experiments: ExperimentsConfig = Field(default_factory=ExperimentsConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the use case's own parameters (validated by its UseCase.config_model)",
    )

    model_config = Section.model_config | {"populate_by_name": True}

    @model_validator(mode="before")
    @classmethod
    def _usecase_names(cls, data: Any) -> Any:
        """Settings the config leaves out come from the use case (``run.usecase``): registered model, MLflow
        experiment, KServe model / InferenceService name and namespace, the evaluation slices and top-k
        fractions."""
        if not isinstance(data, dict):
            return data
        run = data.get("run")
        name = run.get("usecase") if isinstance(run, dict) else None
        from clinrisk.usecases import DEFAULT_USECASE, REGISTRY, get

        if not isinstance(name, str) or name not in REGISTRY:
            name = DEFAULT_USECASE  # an unknown name fails below, in _check_usecase, with the known ones
        usecase = get(name)
        names = usecase.names
        data = dict(data)
        for section, defaults in (
            (
                "evaluate",
                {
                    "slice_columns": list(usecase.labels.slices),
                    "top_k_fractions": list(usecase.labels.top_k_fractions),
                },
            ),
            ("tracking", {"registered_model_name": names.model_name, "experiment_name": names.experiment}),
            ("serving", {"model_name": names.model_name, "namespace": names.namespace}),
        ):
            node = data.get(section)
            if node is None:
                node = {}
            if isinstance(node, dict):
                data[section] = {**defaults, **node}
        return data

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict with the YAML key names."""
        return self.model_dump(mode="json", by_alias=True)


def _problems(err: ValidationError, prefix: str = "") -> list[str]:
    """Each invalid value as ``<key>: <problem>``."""
    lines = []
    for item in err.errors():
        key = ".".join("validate" if p == "validate_" else str(p) for p in item["loc"]) or "<root>"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{prefix}{key}: {msg}")
    return lines


def _invalid(source: str, problems: list[str]) -> str:
    # One line, however many keys are wrong: the CLI's contract is one `error:` line naming each key.
    return f"invalid configuration ({source}): " + "; ".join(problems)


def _format_validation_error(err: ValidationError, source: str) -> str:
    return _invalid(source, _problems(err))


class _YamlWithoutDates(yaml.SafeLoader):
    """YAML as written, except that an unquoted ISO date stays a string.

    ``run.name=2026-12-03`` names a run, not a ``datetime.date``; the date-typed keys of a use case's params
    are pydantic ``date`` fields, which parse the string themselves.
    """


_YamlWithoutDates.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlWithoutDates)  # a SafeLoader subclass: no arbitrary objects


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(
            f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. generate.n_patients=1000"
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a raw config dict."""
    known = ClinriskConfig.model_fields
    aliases = {f.alias or name: name for name, f in known.items()}
    for text in overrides:
        path, value = _parse_override(text)
        if path[0] not in aliases:
            raise ConfigError(f"override {'.'.join(path)}: unknown section {path[0]!r}")
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {'.'.join(path)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ClinriskConfig:
    """Load, override and validate a config; errors name the key or the file."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {p}: not found")
        try:
            loaded = _load_yaml(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p}: not valid YAML ({exc})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: top level must be a mapping of sections")
        data = loaded
    if overrides:
        data = apply_overrides(data, list(overrides))
        source += " + overrides"
    try:
        cfg = ClinriskConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    _check_usecase(cfg, source)
    return cfg


def _check_usecase(cfg: ClinriskConfig, source: str) -> None:
    """``run.usecase`` names a registered use case and ``params`` validates against its config model."""
    from clinrisk.usecases import get

    usecase = get(cfg.run.usecase)
    if usecase.config_model is None:
        if cfg.params:
            raise ConfigError(_invalid(source, [f"params: use case {usecase.name!r} takes no params"]))
        return
    try:
        usecase.config_model.model_validate(cfg.params)
    except ValidationError as exc:
        raise ConfigError(_invalid(source, _problems(exc, prefix="params."))) from None


def save_config(cfg: ClinriskConfig, path: str | Path) -> Path:
    """Write the effective config as YAML (saved next to every output)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return p


def flatten_config(cfg: ClinriskConfig) -> dict[str, str]:
    """Flat ``section.key -> str(value)`` map (MLflow params)."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(node) if isinstance(node, list | tuple) else str(node)

    walk("", cfg.to_dict())
    return out


def config_hash(cfg: ClinriskConfig, sections: tuple[str, ...] | None = None) -> str:
    """Stable sha256 of the config (or of some sections), for provenance and cache keys."""
    d = cfg.to_dict()
    if sections is not None:
        d = {k: d[k] for k in sections}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
