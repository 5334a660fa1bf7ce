"""The README is part of the product: every setting and both commands are documented."""

from __future__ import annotations

from pathlib import Path

from shared.config import settings_help

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [name for name, _ in settings_help() if name not in README]
    assert missing == [], f"README's configuration table lacks {missing}"


def test_the_two_commands_are_shown() -> None:
    assert "make demo" in README and "make test" in README
