"""Each stage scales on its own only if no stage runs another's code: nothing in services/ imports
another stage (read from the source's import statements), except the composition root that wires
them all (the CLI, the registry, the demo). What two stages share lives in shared/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from services import stages

SERVICES = Path(stages.__file__).parent
COMPOSITION_ROOT = {"cli", "stages", "demo"}  # services/{name}.py: may load every stage
STAGES = {module.split(".")[1] for module in (*stages.STAGE_MODULES.values(), *stages.PERIODIC_MODULES.values())}


def imported(path: Path, text: str | None = None) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved); `text`: parse
    this instead of the file, as if it were there."""
    parts = list(path.relative_to(SERVICES.parent).with_suffix("").parts)
    package = parts[:-1]  # services/x/__init__.py is package services.x; services/x/y.py is in it too
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def owner(module: str) -> str | None:
    """The stage a `services.x...` module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "services" and parts[1] in STAGES else None


def test_no_stage_imports_another_stage() -> None:
    crossings = []
    for path in sorted(SERVICES.rglob("*.py")):
        home = path.relative_to(SERVICES).parts[0].removesuffix(".py")
        if home in COMPOSITION_ROOT:
            continue
        for name in sorted(imported(path)):
            stage = owner(name)
            if stage is not None and stage != home:
                crossings.append(f"{path.relative_to(SERVICES.parent)} imports {name}")
    assert crossings == []
    assert {"chunk", "transcode", "variant", "upload", "finalize"} <= STAGES  # the check checks something


def test_the_parser_sees_a_crossing() -> None:
    """The check itself: the old chunk's imports are found, relative ones too."""
    old = "from services.transcode.work import transcode_file\nfrom .variant import images\nimport services.upload\n"
    found = {name for name in imported(SERVICES / "chunk.py", old) if owner(name)}
    assert found == {"services.transcode.work", "services.transcode.work.transcode_file", "services.variant",
                     "services.variant.images", "services.upload"}
    inside = imported(SERVICES / "transcode" / "work.py", "from . import presets\nfrom ..variant import images\n")
    assert {"services.transcode.presets", "services.variant.images"} <= inside


def test_chunk_loads_neither_ffmpeg_nor_libvips() -> None:
    """Importing the chunk stage pulls in no transcode/variant code and no media library."""
    probe = ("import sys, services.chunk; print(sorted(m for m in sys.modules if m.startswith("
             "('services.transcode', 'services.variant', 'pyvips', 'imageio_ffmpeg', 'av'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          cwd=SERVICES.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
