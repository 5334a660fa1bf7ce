"""`--wait` as a person sees it when the wait itself ends before the jobs do (real NATS, a real job record)."""

from __future__ import annotations

import asyncio

import nats.errors
import pytest

from services.client import wait_for_jobs
from shared.jobs import new_job
from shared.runtime import Services


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
