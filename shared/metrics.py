"""Every Prometheus metric jetmedia exports, declared once (names per the design brief).

No ids in labels: stage, outcome, kind, status, direction and stream are all small fixed sets.
`serve()` starts the /metrics endpoint of a process; several stages in one process share it.

Who sets what: the worker runtime counts messages, time, bytes and in-progress per stage; the
job store counts status changes and times jobs; the queue and JetStream gauges are set only by
the collector (shared/queue_metrics.py), which runs once per deployment, so replicas of a stage
never report the same queue twice. Dashboards read those gauges with `max by (...)`, so even two
collectors (say `jetmedia up` beside compose) show the true depth instead of double it.
"""

from __future__ import annotations

import bisect
import logging
import math
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from . import __version__

log = logging.getLogger("jetmedia.metrics")

OUTCOMES = ("ok", "retry", "failed", "dead", "skipped", "error")  # error: the failure itself could not be recorded
JOB_KINDS = ("asset", "export")  # = shared.jobs.JobKind (metrics sits below jobs; a test keeps them equal)
JOB_STATUSES = ("queued", "running", "ready", "failed", "cancelled", "expired")  # = shared.jobs.JobStatus

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
queue_waiting = Gauge(
    "jetmedia_queue_waiting", "Pull requests waiting at a stage's consumer (0 = no idle worker).", ["stage"]
)
queue_lane_pending = Gauge(
    "jetmedia_queue_lane_pending", "Messages waiting for a stage, by priority lane (interactive, bulk).",
    ["stage", "lane"],
)
queue_lane_ack_pending = Gauge(
    "jetmedia_queue_lane_ack_pending", "Messages of a lane delivered, not yet acked.", ["stage", "lane"]
)
queue_wait_seconds = Histogram(
    "jetmedia_queue_wait_seconds",
    "Time a message waited in its stream before a handler started it, by stage and priority lane.",
    ["stage", "lane"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
LANES = ("interactive", "bulk")  # = shared.bus.LANES (metrics sits below bus)
dlq_messages = Gauge("jetmedia_dlq_messages", "Dead letters kept in JM_DLQ, by stage.", ["stage"])
stream_messages = Gauge("jetmedia_stream_messages", "Messages stored in a JetStream stream.", ["stream"])
stream_bytes = Gauge("jetmedia_stream_bytes", "Bytes stored in a JetStream stream.", ["stream"])
jetstream_storage_bytes = Gauge("jetmedia_jetstream_storage_bytes", "File storage JetStream uses (account).")
jetstream_memory_bytes = Gauge("jetmedia_jetstream_memory_bytes", "Memory storage JetStream uses (account).")
collector_polls = Counter("jetmedia_collector_polls", "Queue-depth polls of JetStream, by result.", ["result"])
collector_last_poll = Gauge(
    "jetmedia_collector_last_poll_timestamp_seconds", "When the collector last read JetStream successfully."
)
jobs_total = Counter("jetmedia_jobs", "Jobs that reached a status.", ["kind", "status"])
job_seconds = Histogram(
    "jetmedia_job_seconds",
    "Time from a job's creation to `ready`, by kind (asset, export).",
    ["kind"],
    buckets=(0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
last_success = Gauge(
    "jetmedia_last_success_timestamp_seconds", "When a stage last handled a message OK.", ["stage"]
)
build_info = Info("jetmedia_build", "jetmedia version.")
build_info.info({"version": __version__})
for _kind in JOB_KINDS:  # every process starts every job series at zero (see `prime`)
    job_seconds.labels(_kind)
    for _status in JOB_STATUSES:
        jobs_total.labels(_kind, _status)

dependency_up = Gauge(
    "jetmedia_dependency_up",
    "1 while this process reaches the dependency (s3, nats); 0 while its breaker is open and probes fail.",
    ["dependency"],
)
s3_fast_fallbacks_total = Counter(
    "jetmedia_s3_fast_fallbacks",
    "Requests the hand-signed S3 path (shared/fasts3.py) handed back to botocore, which repeats them: "
    "by operation and reason (status: S3 answered other than 200; error: the request failed midway).",
    ["op", "reason"],
)
FAST_OPS = ("get", "put", "head", "open", "part")
for _op in FAST_OPS:
    for _reason in ("status", "error"):
        s3_fast_fallbacks_total.labels(_op, _reason)
WEBHOOK_OUTCOMES = ("delivered", "retry", "gone", "refused", "dead", "deferred")  # per delivery (services/notify)
webhook_deliveries_total = Counter(
    "jetmedia_webhook_deliveries", "Webhook delivery attempts, by outcome.", ["outcome"]
)
webhook_seconds = Histogram(
    "jetmedia_webhook_seconds",
    "Time of one webhook attempt, connect to answer (or to the error).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)
for _outcome in WEBHOOK_OUTCOMES:
    webhook_deliveries_total.labels(_outcome)
ready = Gauge("jetmedia_ready", "1 once this process is connected and serving; health checks read it.")
nats_connected = Gauge("jetmedia_nats_connected", "1 while this process's NATS connection is up.")


def prime(stage: str) -> None:
    """Create every labelled series of a stage at zero, so rate() and dashboards see them.

    A series that first appears at 3 has no earlier sample: rate()/increase() never count those
    first 3. (The job series, which any process may move, are created at import, above.)"""
    for outcome in OUTCOMES:
        messages_total.labels(stage, outcome)
    for direction in ("in", "out"):
        bytes_total.labels(stage, direction)
    in_progress.labels(stage)
    processing_seconds.labels(stage)
    for lane in LANES:
        queue_wait_seconds.labels(stage, lane)


def observer(child: Any) -> Callable[[float], None]:
    """`child.observe` of a labelled histogram series, for a per-message path: the same bucket and
    sum updates, found with one bisect instead of prometheus_client's per-call checks and linear
    walk over the buckets (~1 µs a call at bus speed). Falls back to `observe` when the series
    does not have the internals this reads (another prometheus_client)."""
    bounds: Any = getattr(child, "_upper_bounds", None)
    buckets: Any = getattr(child, "_buckets", None)
    total: Any = getattr(child, "_sum", None)
    if not (isinstance(bounds, list) and isinstance(buckets, list) and len(bounds) == len(buckets)
            and bounds and bounds[-1] == math.inf and hasattr(total, "inc")
            and all(hasattr(bucket, "inc") for bucket in buckets)):
        return child.observe  # type: ignore[no-any-return]
    incs = [bucket.inc for bucket in buckets]
    add = total.inc

    def observe(amount: float) -> None:
        if amount != amount:  # NaN: prometheus_client counts it in no bucket
            child.observe(amount)
            return
        add(amount)
        incs[bisect.bisect_left(bounds, amount)](1)

    return observe


def serve(host: str, port: int) -> Any:
    """Start /metrics on a daemon thread; port 0 picks a free one (see `.server_port`)."""
    server, _thread = start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server


def job_finished(kind: str, seconds: float) -> None:
    """A job reached `ready` after `seconds` (called by the job store on that transition)."""
    job_seconds.labels(kind).observe(max(seconds, 0.0))


def mark_ready(is_connected: Callable[[], bool]) -> None:
    """This process is serving: `jetmedia health` passes while NATS stays connected."""
    nats_connected.set_function(lambda: 1.0 if is_connected() else 0.0)
    ready.set(1)


def check_health(url: str, timeout: float = 3.0) -> list[str]:
    """Problems seen on a process's /metrics endpoint; empty means healthy.

    Healthy = the endpoint answers, the process says it is ready, and its NATS connection is up.
    This is what the compose health checks run (`jetmedia health`)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return [f"metrics endpoint {url} unreachable: {exc}"]
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, sample.value)
    problems = []
    if values.get("jetmedia_ready") != 1:
        problems.append("process not ready (still connecting to NATS/S3?)")
    connected = values.get("jetmedia_nats_connected", math.nan)
    if connected != 1:
        problems.append("NATS connection down" if connected == 0 else "process reports no NATS connection")
    return problems
