"""The stage registry: which stages exist, by name. The CLI wires them to the stack."""

from __future__ import annotations

import importlib

from shared.runtime import Stage

# name -> module holding `STAGE`; imported lazily so `jetmedia worker upload` loads no libvips.
STAGE_MODULES: dict[str, str] = {
    "upload": "services.upload",
    "variant": "services.variant",
    "finalize": "services.finalize",
}


def load(name: str) -> Stage:
    """A stage by registry name, or any `package.module:ATTR` that holds a Stage (plugins, tests)."""
    if ":" in name:
        module_name, attr = name.split(":", 1)
        stage = getattr(importlib.import_module(module_name), attr)
    elif name in STAGE_MODULES:
        stage = importlib.import_module(STAGE_MODULES[name]).STAGE
    else:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(STAGE_MODULES)}")
    if not isinstance(stage, Stage):
        raise TypeError(f"{name} is not a Stage")
    return stage


def load_all() -> list[Stage]:
    return [load(name) for name in STAGE_MODULES]
