"""The stage registry: which stages exist, by name. The CLI wires them to the stack."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any

from shared.runtime import Services, Stage

# name -> module holding `STAGE`; imported lazily so `jetmedia worker upload` loads no libvips.
STAGE_MODULES: dict[str, str] = {
    "upload": "services.upload",
    "variant": "services.variant",
    "transcode": "services.transcode",
    "chunk": "services.chunk",
    "finalize": "services.finalize",
}

# name -> module holding `run(services, stopping)`: loops driven by time, not by messages (and notify,
# whose consumers the runtime cannot run: every event it handles belongs to a job that has ended).
PERIODIC_MODULES: dict[str, str] = {
    "cleanup": "services.cleanup",
    "notify": "services.notify",
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


def load_periodic(name: str) -> Callable[[Services, asyncio.Event], Coroutine[Any, Any, None]]:
    """A periodic service's `run(services, stopping)` by registry name."""
    run: Callable[[Services, asyncio.Event], Coroutine[Any, Any, None]]
    run = importlib.import_module(PERIODIC_MODULES[name]).run
    return run


def load_all() -> list[Stage]:
    return [load(name) for name in STAGE_MODULES]
