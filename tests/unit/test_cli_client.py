"""How the CLI turns a job record into progress, and people's input into values (no servers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from services.client import UsageError, _coarse, describe, fraction, job_id_arg, parse_since
from shared.jobs import new_job


def test_an_asset_bar_follows_the_running_transcode() -> None:
    video = new_job("v", "asset", status="running", stage="transcode", total=2, done=1)
    assert fraction(video) == 0.5  # the poster is done, the encode has not reported yet
    moving = msgspec.structs.replace(video, percent=40.0)
    assert fraction(moving) == pytest.approx(0.7)
    assert describe(moving) == "running (transcode) 40%"
    assert _coarse(msgspec.structs.replace(video, percent=47.3)) == "running (transcode) 40%"  # piped: 10 % steps
    assert fraction(msgspec.structs.replace(moving, percent=100.0)) == 0.99  # 100 % only once it is final
    assert fraction(msgspec.structs.replace(moving, status="ready")) == 1.0


def test_an_export_bar_counts_checked_then_archived_files() -> None:
    export = new_job("e", "export", status="running", stage="chunk", total=10, done=5)
    assert fraction(export) == pytest.approx(0.15)
    archiving = msgspec.structs.replace(export, done=10, missing_count=2, archived=4, archived_bytes=3_400_000,
                                        stage="finalize")
    assert fraction(archiving) == pytest.approx(0.3 + 0.7 * 4 / 8)
    assert describe(archiving) == "running (finalize) 4/10 files, 3.4 MB"


def test_since_takes_an_age_or_an_iso_time() -> None:
    assert abs(parse_since("15m") - (datetime.now(UTC) - timedelta(minutes=15))) < timedelta(seconds=5)
    assert parse_since("2026-01-31T12:00") == datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    assert parse_since("2026-01-31T12:00+01:00").utcoffset() == timedelta(hours=1)
    with pytest.raises(UsageError, match="ISO time"):
        parse_since("yesterday")


@pytest.mark.parametrize("bad", ["a b", "x:y", "", "a" * 201, "job.chunk.1", "..", "a/b"])
def test_job_ids_are_checked_before_connecting(bad: str) -> None:
    with pytest.raises(UsageError, match="is not a job id"):
        job_id_arg(bad)
    assert job_id_arg("photo-1.v2") == "photo-1.v2"
