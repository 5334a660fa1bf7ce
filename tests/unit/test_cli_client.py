"""How the CLI turns a job record into progress, and people's input into values (no servers)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from rich.console import Console

from services import client
from services.cli import build_parser, main
from services.client import UsageError, _coarse, describe, fraction, job_id_arg, parse_since
from shared.jobs import Job, Part, new_job
from shared.messages import OutputFile


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
    assert describe(export) == "running (chunk) 5/10 checked"
    assert describe(archiving) == "running (finalize) 4/10 archived, 3.4 MB"  # not "10/10 files", then "4/10 files"


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


def test_many_jobs_share_one_bar_that_counts_them() -> None:
    jobs: list[Job | None] = [new_job(f"j{n}", "asset", status="ready") for n in range(3)]
    jobs += [new_job("f", "asset", status="failed"), None]
    assert client._tally(jobs) == "1 queued, 1 failed, 3 ready"
    assert client._mean_percent(jobs) == pytest.approx(80.0)  # 4 ended of 5, the one without a record at 0


def test_what_still_runs_names_ten_jobs_and_counts_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    client._say_still_running([f"job-{n}" for n in range(25)], "stopped watching")
    said = capsys.readouterr().err.splitlines()
    assert said[0] == ("stopped watching; still running: " + " ".join(f"job-{n}" for n in range(10))
                       + " and 15 more (jetmedia jobs --status running)")
    assert said[1:] == ["  follow: jetmedia status --follow job-0", "  cancel: jetmedia cancel job-0"]


def test_an_empty_file_is_refused_before_any_upload(tmp_path: Path) -> None:
    empty, fine = tmp_path / "empty.jpg", tmp_path / "fine.jpg"
    empty.write_bytes(b"")
    fine.write_bytes(b"\xff\xd8\xff")
    client.check_files([fine])
    with pytest.raises(UsageError, match=r"empty\.jpg: empty \(0 bytes\)"):
        client.check_files([fine, empty])


@pytest.mark.parametrize(("argv", "said"), [
    (["jobs", "--limit", "0"], "0 is less than 1"), (["dlq", "--limit", "-1"], "-1 is less than 1"),
    (["events", "--limit", "x"], "'x' is not a whole number")])
def test_a_limit_below_its_least_is_a_usage_error(argv: list[str], said: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2 and said in capsys.readouterr().err  # was an IndexError (`jobs --limit 0`)
    assert build_parser().parse_args(["events", "--limit", "0"]).limit == 0  # --follow with new events only


def test_a_narrow_terminal_gets_each_job_as_a_record(monkeypatch: pytest.MonkeyPatch) -> None:
    job = new_job("cli-narrow-1", "asset", status="ready", media="image", parts={"variant": Part(outputs=[
        OutputFile(preset="thumb", key="variants/cli-narrow-1/thumb.webp", format="webp", bytes=236)])})
    for width in (40, 120):
        out = io.StringIO()
        monkeypatch.setattr(client, "output_console", lambda: Console(file=out, width=width))  # noqa: B023
        client.print_jobs([job])
        text = out.getvalue()
        assert "…" not in text and "cli-narrow-1" in text
        assert ("┏" in text) == (width >= client.NARROW)  # a table only where its six columns fit


def test_health_of_a_page_that_is_not_metrics_is_unhealthy_not_a_crash(capsys: pytest.CaptureFixture[str]) -> None:
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<!doctype html><title>docs</title>")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert main(["health", "--url", f"http://127.0.0.1:{server.server_port}/docs"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    assert "does not answer with Prometheus metrics" in capsys.readouterr().err  # was "unexpected error: ValueError"
    assert main(["health", "--url", "localhost:9464"]) == 2
    assert "give the metrics URL" in capsys.readouterr().err


def test_a_token_name_the_gateway_would_refuse_is_refused_first(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway", "token", "bad name"]) == 2
    said = capsys.readouterr()
    assert said.out == "" and "letters, digits, - and _ only" in said.err
    assert main(["gateway", "token", "web-1"]) == 0 and '"name": "web-1"' in capsys.readouterr().out


def test_a_path_that_cannot_be_written_is_named_with_exit_2(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert main(["schemas", "--out", str(tmp_path / "file" / "schemas")]) == 2
    said = capsys.readouterr().err
    assert said == f"jetmedia: {tmp_path / 'file' / 'schemas'}: Not a directory\n"  # was "unexpected error: ..."


def test_purging_every_dead_letter_takes_all(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "purge"]) == 2  # refused before connecting: nothing listens on the default URL here
    assert "name them with --stage, --job or --since, or pass --all" in capsys.readouterr().err
    assert build_parser().parse_args(["dlq", "purge", "--all"]).all
