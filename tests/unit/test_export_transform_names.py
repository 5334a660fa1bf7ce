"""Archive names under a per-item transform: the output's extension, still unique and safe."""

from __future__ import annotations

from shared.exportplan import NameRegistry, sanitise, with_extension


def test_with_extension_replaces_or_appends() -> None:
    assert with_extension("song.wav", "mp3") == "song.mp3"
    assert with_extension("albums/one/track 01.FLAC", "mp3") == "albums/one/track 01.mp3"
    assert with_extension("README", "webp") == "README.webp"
    assert with_extension(".hidden", "opus") == ".hidden.opus"
    assert with_extension("a.b.c.jpg", "webp") == "a.b.c.webp"
    assert with_extension("x.averyveryverylongextension", "mp3") == "x.averyveryverylongextension.mp3"


def test_renamed_names_stay_unique_and_safe() -> None:
    names = NameRegistry()
    wanted = ["song.wav", "song.flac", "SONG.ogg", "../../etc/passwd", "song.mp3"]
    got = [names.add(with_extension(sanitise(w), "mp3")) for w in wanted]
    assert got == ["song.mp3", "song (1).mp3", "SONG (2).mp3", "etc/passwd.mp3", "song (3).mp3"]
