"""The transcode probe on audio as podcast hosts, Bandcamp and taggers deliver it."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.transcode.probe import probe, refuse_playlists
from services.transcode.samples import lavfi
from shared.runtime import Reject

NOTES = "Episode 42. Show notes at https://example.com/ep42, support us at https://example.com/support. " * 50


@pytest.mark.parametrize(("container", "tag"), [("mp3", "comment"), ("flac", "description"), ("ogg", "description")])
def test_audio_whose_tags_are_show_notes_with_links_is_media_not_a_text_file(
    tmp_path: Path, container: str, tag: str
) -> None:
    """4 KB of tags up front made the file "a text file with URLs in it" and it was refused."""
    path = tmp_path / f"episode.{container}"
    path.write_bytes(lavfi(container, 0.5, extra=["-id3v2_version", "3", "-metadata", f"{tag}={NOTES}"]))
    assert b"https://" in path.read_bytes()[:4096]
    facts = probe(str(path), path.stat().st_size)
    assert facts.audio is not None and facts.duration == pytest.approx(0.5, abs=0.1)


def test_text_with_links_is_still_refused() -> None:
    with pytest.raises(Reject, match="text file with URLs"):
        refuse_playlists(NOTES.encode())


def test_a_recording_with_a_header_and_no_samples_is_called_empty(tmp_path: Path) -> None:
    """It was "cannot tell the media's duration (no timestamps): damaged or not a media file"."""
    path = tmp_path / "empty.wav"
    path.write_bytes(lavfi("wav", 0.01, extra=["-af", "atrim=end_sample=0"]))
    with pytest.raises(Reject, match="the file is empty: its header names audio/video streams but no data follows"):
        probe(str(path), path.stat().st_size)
