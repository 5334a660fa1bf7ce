"""The CLI where NATS is not what it expects: a wait that ends before the jobs do, a connection lost
mid-wait, a server without the jetmedia streams (real NATS, real job records)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nats.errors
import pytest

from services import client
from services.client import wait_for_jobs
from shared.devstack import NatsServer, free_port
from shared.jobs import new_job
from shared.runtime import Services

JETMEDIA = shutil.which("jetmedia", path=str(Path(sys.executable).parent))
COMMAND = [JETMEDIA] if JETMEDIA else [sys.executable, "-m", "services.cli"]


async def test_a_wait_that_runs_out_says_the_job_still_runs(services: Services,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    await services.jobs.create(new_job("slow-one", "asset", status="running", stage="transcode"))
    [record] = await wait_for_jobs(services.jobs, ["slow-one"], timeout=0.5)
    assert record.status == "running"
    said = capsys.readouterr().err  # was silent: submit --wait then exited 1 as if the job had failed
    assert "stopped waiting after 0.5 s; still running: slow-one" in said
    assert "jetmedia status --follow slow-one" in said


async def test_nats_lost_mid_wait_names_the_jobs_still_running(services: Services,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    await services.jobs.create(new_job("cut-off", "asset", status="running", stage="transcode"))
    waiting = asyncio.create_task(wait_for_jobs(services.jobs, ["cut-off"], timeout=60))
    await asyncio.sleep(0.5)
    await services.nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError):  # cli.py: exit 3, "NATS ... did not answer"
        await waiting
    assert "stopped watching; still running: cut-off" in capsys.readouterr().err


def test_a_nats_without_the_jetmedia_streams_is_named_not_an_unexpected_error(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", port=free_port()).start()
    try:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("JETMEDIA_")},
               "JETMEDIA_NATS_URL": server.url}
        for command in (["events"], ["dlq"]):
            done = subprocess.run([*COMMAND, *command], env=env, capture_output=True, text=True, timeout=60,
                                  check=False)
            assert done.returncode == 2, (command, done.stderr)  # was 1, "unexpected error: NotFoundError"
            assert "stream not found; no jetmedia stage has made its streams there yet" in done.stderr
    finally:
        server.stop()


async def test_a_wait_for_a_job_no_worker_takes_asks_whether_one_runs(
        services: Services, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "NO_RECORD_HINT", 0.3)
    assert await wait_for_jobs(services.jobs, ["never-taken"], timeout=1.0) == []
    said = capsys.readouterr().err  # was nothing at all piped, and a "queued" bar on a terminal
    assert "no record yet of 1 job(s) after 0.3 s (never-taken, ...): is a worker running" in said
