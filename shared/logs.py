"""Structured logs: one `key=value` line per event, the same shape in every service."""

from __future__ import annotations

import logging
import sys

from .config import ConfigError

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Libraries that talk a lot at INFO. pyvips forwards every libvips GLib message, ~50 per image
# ("threadpool completed with 1 workers"): 93 % of a `jetmedia up` log. They speak again at DEBUG.
CHATTY = ("pyvips",)
NOISY = ("botocore", "aiobotocore", "boto3", "urllib3", "werkzeug", "nats")


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} level={record.levelname.lower()} "
            f"logger={record.name} msg={record.getMessage()!r}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def level_of(name: str) -> int:
    """`JETMEDIA_LOG_LEVEL` as a logging level; ConfigError (exit 2) naming the choices otherwise."""
    upper = name.strip().upper()
    if upper not in LEVELS:
        raise ConfigError(f"JETMEDIA_LOG_LEVEL={name!r} is not a log level; use one of {', '.join(LEVELS)}")
    return int(getattr(logging, upper))


def setup(level: str = "INFO") -> None:
    numeric = level_of(level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for chatty in CHATTY:
        logging.getLogger(chatty).setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)
