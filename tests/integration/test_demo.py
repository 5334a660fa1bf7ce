"""`make demo` runs `jetmedia demo`: a fresh embedded stack, every stage, sample media, exit 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_every_sample_to_its_expected_end(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--data-dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "demo OK" in output
    assert "variants/demo-landscape/thumb.webp" in output  # the download URL of a variant
    assert "unsupported file type" in output  # the broken sample failed, with its reason
    assert "webhook: jetmedia.export.ready.v1 (webhook-id demo-export:ready) delivered" in output  # notify, signed
    assert "signature verified" in output
    assert not list((tmp_path / "demo").rglob("*.ports")), "nats-server left running"
