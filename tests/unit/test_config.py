from __future__ import annotations

import pytest

from shared.config import Settings, settings_help


def test_reads_jetmedia_variables_with_types() -> None:
    settings = Settings.from_env({
        "JETMEDIA_NATS_URL": "nats://u:secret@10.0.0.1:4222", "JETMEDIA_CONCURRENCY": "8",
        "JETMEDIA_ACK_WAIT": "12.5", "JETMEDIA_RETRY_BACKOFF": "1, 2,4", "JETMEDIA_S3_SECRET_KEY": "hush",
        "OTHER": "ignored",
    })
    assert settings.concurrency == 8 and settings.ack_wait == 12.5
    assert settings.retry_backoff == (1.0, 2.0, 4.0)
    shown = settings.redacted()
    assert shown["s3_secret_key"] == "***" and "secret" not in shown["nats_url"]


def test_bad_values_say_which_variable() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Settings.from_env({"JETMEDIA_CONCURRENCY": "lots"})


def test_backoff_grows_then_holds() -> None:
    settings = Settings(retry_backoff=(1.0, 2.0, 4.0))
    assert [settings.backoff_for(n) for n in (1, 2, 3, 4, 9)] == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_help_lists_every_setting() -> None:
    names = [name for name, _ in settings_help()]
    assert len(names) == len(Settings.__struct_fields__)
    assert "JETMEDIA_NATS_URL" in names and "JETMEDIA_BUCKET" in names


def test_per_stage_concurrency_from_env() -> None:
    settings = Settings.from_env({"JETMEDIA_STAGE_CONCURRENCY": "variant=8, transcode=2"})
    assert settings.stage_concurrency == {"variant": 8, "transcode": 2}
    with pytest.raises(ValueError, match="name=value"):
        Settings.from_env({"JETMEDIA_STAGE_CONCURRENCY": "variant"})


def test_as_env_round_trips() -> None:
    settings = Settings(concurrency=3, retry_backoff=(0.5, 1.0), stage_concurrency={"variant": 8}, bucket="b")
    assert Settings.from_env(settings.as_env()) == settings
    assert "JETMEDIA_STAGE_CONCURRENCY" not in Settings().as_env()


def test_a_worker_with_impossible_stage_settings_stops_at_start_with_the_reason() -> None:
    import os
    import subprocess
    import sys

    for variable, value, reason in (
        ("JETMEDIA_VARIANT_PRESETS", "thumb:webp:abc", "stage variant"),
        ("JETMEDIA_TRANSCODE_AUDIO_PRESETS", "mp3,flac9000", "flac9000"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "services.cli", "worker", "variant", "transcode"],
            env={**os.environ, variable: value, "JETMEDIA_NATS_URL": "nats://127.0.0.1:1"},
            capture_output=True, text=True, timeout=60,
        )
        assert run.returncode == 2, run.stderr[-2000:]
        assert reason in run.stderr
