"""`jetmedia up` prints where everything is, serves jobs, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from services import samples
from tests.helpers import read_until

ENV = {**os.environ, "JETMEDIA_METRICS_PORT": "0", "JETMEDIA_LOG_LEVEL": "WARNING"}


@contextlib.contextmanager
def jetmedia_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`jetmedia up` in a subprocess, once it printed its banner; killed at the end if still running."""
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--data-dir", str(tmp_path / "stack")],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield up, read_until(up, "Ctrl-C stops everything.", timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)


def test_up_serves_a_submitted_file_then_stops_on_ctrl_c(tmp_path: Path) -> None:
    with jetmedia_up(tmp_path) as (up, banner):
        exports = dict(re.findall(r"export (JETMEDIA_\w+)=(\S+)", banner))
        assert {"JETMEDIA_NATS_URL", "JETMEDIA_S3_ENDPOINT"} <= set(exports)
        metrics_url = re.search(r"metrics\s+(http://127\.0\.0\.1:\d+/metrics)", banner)
        assert metrics_url, banner

        photo = tmp_path / "beach.jpg"
        photo.write_bytes(samples.photo(900, 600))
        submit = subprocess.run(
            [sys.executable, "-m", "services.cli", "submit", str(photo), "--wait"],
            env={**ENV, **exports}, capture_output=True, text=True, timeout=120,
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        assert "thumb.webp" in submit.stdout

        with urllib.request.urlopen(metrics_url.group(1), timeout=5) as resp:
            text = resp.read().decode()
        assert 'jetmedia_messages_total{outcome="ok",stage="variant"} 1.0' in text

        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    assert not list((tmp_path / "stack").rglob("*.ports")), "nats-server left running"


def test_servers_do_not_outlive_a_killed_up(tmp_path: Path) -> None:
    with jetmedia_up(tmp_path) as (up, _banner):
        children = _children_of(up.pid)
        assert len(children) >= 2, children  # nats-server and the S3 endpoint
        up.kill()  # no chance to clean up
        up.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.1)
        assert not [pid for pid in children if _alive(pid)], "servers outlived their parent"


def _children_of(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ctrl_c_while_up_starts_stops_it_without_a_banner(tmp_path: Path) -> None:
    up = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--data-dir", str(tmp_path / "stack")],
                          env={**ENV, "JETMEDIA_LOG_LEVEL": "INFO"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        read_until(up, "starting", timeout=60)  # nats-server is starting: the stack takes seconds more
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
        rest = up.stdout.read() if up.stdout else ""
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
    assert "jetmedia is up" not in rest and "Ctrl-C stops everything" not in rest, rest  # was printed, then it stopped
    assert "Traceback" not in rest
    assert not list((tmp_path / "stack").rglob("*.ports")), "nats-server left running"
