"""Every Prometheus metric jetmedia exports, declared once (names per the design brief).

No ids in labels: stage, outcome, kind, status and direction are all small fixed sets.
`serve()` starts the /metrics endpoint of a process; several stages in one process share it.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

from . import __version__

log = logging.getLogger("jetmedia.metrics")

OUTCOMES = ("ok", "retry", "failed", "dead", "skipped")

messages_total = Counter(
    "jetmedia_messages", "Messages handled, by stage and outcome.", ["stage", "outcome"]
)
processing_seconds = Histogram(
    "jetmedia_processing_seconds",
    "Time a handler took per message.",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
bytes_total = Counter("jetmedia_bytes", "Media bytes read and written.", ["stage", "direction"])
in_progress = Gauge("jetmedia_in_progress", "Handlers running now.", ["stage"])
queue_pending = Gauge("jetmedia_queue_pending", "Messages waiting for a stage.", ["stage"])
queue_ack_pending = Gauge("jetmedia_queue_ack_pending", "Messages delivered, not yet acked.", ["stage"])
queue_redelivered = Gauge("jetmedia_queue_redelivered", "Messages redelivered at least once.", ["stage"])
dlq_messages = Gauge("jetmedia_dlq_messages", "Dead letters kept in JM_DLQ, by stage.", ["stage"])
jobs_total = Counter("jetmedia_jobs", "Jobs that reached a status.", ["kind", "status"])
export_seconds = Histogram(
    "jetmedia_export_seconds",
    "Time from export request to archive ready.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
)
last_success = Gauge(
    "jetmedia_last_success_timestamp_seconds", "When a stage last handled a message OK.", ["stage"]
)
build_info = Info("jetmedia_build", "jetmedia version.")
build_info.info({"version": __version__})


def prime(stage: str) -> None:
    """Create every labelled series of a stage at zero, so rate() and dashboards see them."""
    for outcome in OUTCOMES:
        messages_total.labels(stage, outcome)
    for direction in ("in", "out"):
        bytes_total.labels(stage, direction)
    in_progress.labels(stage)
    processing_seconds.labels(stage)


def serve(host: str, port: int) -> Any:
    """Start /metrics on a daemon thread; port 0 picks a free one (see `.server_port`)."""
    server, _thread = start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server
