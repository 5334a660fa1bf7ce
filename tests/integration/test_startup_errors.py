"""S3 that cannot work stops `jetmedia worker` / `jetmedia up` at start-up: exit 2 and one line that
names the endpoint and the cause, no traceback (not a dead letter per message later)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import Settings
from shared.devstack import free_port
from tests.helpers import settings_env

CASES = {
    "wrong secret": ({"JETMEDIA_S3_SECRET_KEY": "not-the-secret"}, "rejected the secret key", "SignatureDoesNotMatch"),
    "unknown access key": ({"JETMEDIA_S3_ACCESS_KEY": "nobody"}, "does not know access key 'nobody'",
                           "InvalidAccessKeyId"),
    "S3 down": ({"JETMEDIA_S3_ENDPOINT": "http://127.0.0.1:{port}"}, "cannot connect to S3 endpoint", "running"),
    "missing bucket": ({"JETMEDIA_BUCKET": "jetmedia-no-such-bucket"},
                       "bucket 'jetmedia-no-such-bucket' does not exist", "JETMEDIA_BUCKET"),
}


def jetmedia(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True,
                          timeout=90, check=False)


@pytest.mark.parametrize("case", list(CASES))
def test_worker_exits_2_with_one_line_naming_endpoint_and_cause(settings: Settings, case: str) -> None:
    change, reason, hint = CASES[case]
    port = free_port()
    change = {k: v.format(port=port) for k, v in change.items()}
    env = {**os.environ, **settings_env(settings), "JETMEDIA_LOG_LEVEL": "WARNING", **change}
    done = jetmedia("worker", "upload", env=env)
    endpoint = change.get("JETMEDIA_S3_ENDPOINT", settings.s3_endpoint)
    assert done.returncode == (3 if case == "S3 down" else 2), done.stdout + done.stderr  # 3: cannot reach
    assert done.stdout == "" and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("jetmedia: ") and f"{endpoint}" in lines[0], lines[0]
    assert reason in lines[0] and hint in lines[0], lines[0]


def test_up_exits_2_with_one_line_when_its_s3_cannot_start(tmp_path: Path) -> None:
    env = {**os.environ, "JETMEDIA_WEED": "/bin/false", "JETMEDIA_METRICS_PORT": "0", "JETMEDIA_LOG_LEVEL": "WARNING"}
    done = jetmedia("up", "--data-dir", str(tmp_path / "stack"), env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "the embedded stack did not start: SeaweedFS (weed) did not start" in lines[0]
    assert str(tmp_path / "stack" / "s3" / "weed.log") in lines[0]
