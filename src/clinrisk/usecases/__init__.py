"""Registry of use cases: name -> plugin (see ``clinrisk.usecases.base`` and docs/usecases.md).

Registering a use case is ONE line in :data:`REGISTRY`: its name and the ``module:attribute`` of its
:class:`~clinrisk.usecases.base.UseCase`. Plugins are imported on first use (no side effects at import,
no import of every use case's dependencies to run one of them).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from clinrisk.errors import ConfigError
from clinrisk.usecases.base import UseCase

DEFAULT_USECASE = "clinical"

REGISTRY: dict[str, str] = {
    "clinical": "clinrisk.usecases.clinical:USECASE",
    "leads": "clinrisk.usecases.leads:USECASE",
    "segmentation": "clinrisk.usecases.segmentation.usecase:USECASE",
}

# A use case whose model is not the shared one may bring its own commands: name -> ``"module:function"``, the
# function taking the root Typer app and mounting a sub-app on it (``clinrisk <name> ...``). The root app
# (clinrisk.cli.app) reads this by module name, so the shared CLI never imports a plugin module itself.
CLI_REGISTRY: dict[str, str] = {
    "segmentation": "clinrisk.usecases.segmentation.cli:register",
}

_loaded: dict[str, UseCase] = {}


def _module_present(target: str) -> bool:
    module = target.split(":", 1)[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def register(name: str, target: str) -> None:
    """Register ``name`` -> ``"module:attribute"`` at run time (plugins living outside this package)."""
    if ":" not in target:
        raise ConfigError(f"use case {name!r}: target {target!r} must be 'module:attribute'")
    REGISTRY[name] = target
    _loaded.pop(name, None)


def unregister(name: str) -> None:
    """Forget a run-time registration (and the loaded plugin)."""
    REGISTRY.pop(name, None)
    _loaded.pop(name, None)


def known() -> list[str]:
    """Names of the registered use cases whose code is installed, in registration order."""
    return [name for name, target in REGISTRY.items() if _module_present(target)]


def get(name: str) -> UseCase:
    """The use case called ``name``; an unknown name is a ConfigError listing the known ones."""
    if name in _loaded:
        return _loaded[name]
    target = REGISTRY.get(name)
    if target is None or not _module_present(target):
        raise ConfigError(f"unknown use case {name!r}; known: {', '.join(known())}")
    module, attr = target.split(":", 1)
    usecase = getattr(importlib.import_module(module), attr)
    if not isinstance(usecase, UseCase) or usecase.name != name:
        raise ConfigError(f"use case {name!r}: {target} is not a UseCase named {name!r}")
    _loaded[name] = usecase
    return usecase


def plugin_clis() -> list[Callable[[Any], None]]:
    """The CLI registrars of :data:`CLI_REGISTRY` whose module is installed, in registration order."""
    out = []
    for name, target in CLI_REGISTRY.items():
        if ":" not in target:
            raise ConfigError(f"use case {name!r}: CLI target {target!r} must be 'module:function'")
        if _module_present(target):
            module, attr = target.split(":", 1)
            out.append(getattr(importlib.import_module(module), attr))
    return out


__all__ = [
    "CLI_REGISTRY",
    "DEFAULT_USECASE",
    "REGISTRY",
    "UseCase",
    "get",
    "known",
    "plugin_clis",
    "register",
    "unregister",
]
