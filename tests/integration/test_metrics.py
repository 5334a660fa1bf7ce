"""/metrics tells the truth: run real jobs, scrape over HTTP, and check each counter moved by
exactly what happened (not just that it exists). The collector's queue gauges are checked
against consumer states we set up by hand, so every number is known in advance."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import get_args

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services import notify, samples, stages
from shared import bus, metrics, queue_metrics
from shared import messages as m
from shared.jobs import JobKind, JobStatus
from shared.runtime import Services, dead_letter
from tests.helpers import asset_event, eventually, final_job, running

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def metrics_url() -> Iterator[str]:
    server = metrics.serve("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()


def scrape(url: str) -> Series:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, frozenset(labels.items())), 0.0)


async def test_counters_move_by_exactly_the_jobs_that_ran(services: Services, metrics_url: str) -> None:
    photos = {f"uploads/m{i}.jpg": samples.photo(640 + 80 * i, 480, seed=i) for i in range(3)}
    for key, data in photos.items():
        await services.storage.put_bytes(key, data)
    await services.storage.put_bytes("uploads/bad.jpg", b"not an image at all")
    jobs = [f"metrics-{i}" for i in range(3)]
    chosen = [stages.load(name) for name in ("upload", "variant", "finalize")]

    async with running(services, chosen):
        before = scrape(metrics_url)  # after the workers primed their series
        for job, key in zip(jobs, photos, strict=True):
            await bus.publish(services.js, m.UPLOAD_ASSET, asset_event(key, event_id=job))
        await bus.publish(services.js, m.UPLOAD_ASSET, asset_event("uploads/bad.jpg", event_id="metrics-bad"))
        records = [await eventually(lambda j=j: final_job(services, j)) for j in [*jobs, "metrics-bad"]]
    after = scrape(metrics_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert [r.status for r in records] == ["ready", "ready", "ready", "failed"]
    expected = {
        ("upload", "ok"): 3, ("upload", "failed"): 1,
        ("variant", "ok"): 3, ("finalize", "ok"): 3,
    }
    for stage in ("upload", "variant", "finalize"):
        for outcome in metrics.OUTCOMES:
            want = expected.get((stage, outcome), 0)
            assert moved("jetmedia_messages_total", stage=stage, outcome=outcome) == want, (stage, outcome)
        handled = sum(n for (s, _o), n in expected.items() if s == stage)
        assert moved("jetmedia_processing_seconds_count", stage=stage) == handled
        assert moved("jetmedia_processing_seconds_bucket", stage=stage, le="+Inf") == handled
        assert moved("jetmedia_processing_seconds_sum", stage=stage) > 0
        assert value(after, "jetmedia_in_progress", stage=stage) == 0
        assert value(after, "jetmedia_last_success_timestamp_seconds", stage=stage) > 0

    # bytes: the variant stage read every source once and wrote exactly what KV lists as outputs
    assert moved("jetmedia_bytes_total", stage="variant", direction="in") == sum(len(d) for d in photos.values())
    written = sum(out.bytes or 0 for record in records for out in record.outputs)
    assert written > 0
    assert moved("jetmedia_bytes_total", stage="variant", direction="out") == written

    assert moved("jetmedia_jobs_total", kind="asset", status="running") == 4
    assert moved("jetmedia_jobs_total", kind="asset", status="ready") == 3
    assert moved("jetmedia_jobs_total", kind="asset", status="failed") == 1
    assert moved("jetmedia_job_seconds_count", kind="asset") == 3
    assert value(after, "jetmedia_build_info", version=metrics.__version__) == 1


async def test_collector_reports_the_webhooks_waiting(services: Services, metrics_url: str) -> None:
    """Webhook deliveries queue in JM_NOTIFY, outside the stages' streams: still on the dashboards."""
    assert queue_metrics.NOTIFY_CONSUMERS == (
        (notify.STAGE, "JM_EVENTS", notify.EVENTS_CONSUMER), (notify.DELIVER_CONSUMER, notify.STREAM,
                                                              notify.DELIVER_CONSUMER))
    assert queue_metrics.NOTIFY_STREAM == notify.STREAM
    await notify.ensure_layout(services.js, services.settings)
    await services.js.purge_stream(notify.STREAM)  # the stream outlives the test's wipe of the stages' layout
    for n in range(3):
        await services.js.publish(notify.SUBJECT, b"{}", headers={"Nats-Msg-Id": f"waiting-{n}"})
    await queue_metrics.poll(services.js)
    now = scrape(metrics_url)
    assert value(now, "jetmedia_queue_pending", stage="notify-deliver") == 3
    assert value(now, "jetmedia_queue_pending", stage="notify") == 0
    assert value(now, "jetmedia_stream_messages", stream="JM_NOTIFY") == 3
    await services.js.purge_stream(notify.STREAM)


async def test_collector_reports_queue_depth_redeliveries_and_dead_letters(
    services: Services, metrics_url: str
) -> None:
    js = services.js
    for i in range(5):
        request = m.VariantRequested(
            id=f"queued-{i}", source="test", time=m.now(), subject=f"queued-{i}",
            data=m.VariantRequestedData(job=f"queued-{i}", asset=f"queued-{i}", bucket="b", key=f"k{i}"),
        )
        await bus.publish(js, m.VARIANT, request)
    await queue_metrics.poll(js)
    now = scrape(metrics_url)
    assert value(now, "jetmedia_queue_pending", stage="variant") == 5
    assert value(now, "jetmedia_queue_ack_pending", stage="variant") == 0
    assert value(now, "jetmedia_queue_pending", stage="upload") == 0
    assert value(now, "jetmedia_stream_messages", stream="JM_VARIANT") == 5
    assert value(now, "jetmedia_stream_bytes", stream="JM_VARIANT") > 0

    # A replica takes two messages: two in flight, three still waiting.
    sub = await js.pull_subscribe_bind(durable="variant", stream="JM_VARIANT")
    taken = await sub.fetch(2, timeout=5)
    await queue_metrics.poll(js)
    now = scrape(metrics_url)
    assert value(now, "jetmedia_queue_pending", stage="variant") == 3
    assert value(now, "jetmedia_queue_ack_pending", stage="variant") == 2
    assert value(now, "jetmedia_queue_redelivered", stage="variant") == 0

    # It takes the rest and hands one back: that one comes again on delivery 2 and stays unacked.
    taken += await sub.fetch(3, timeout=5)
    await taken[0].nak()
    await services.nc.flush()
    again = await sub.fetch(1, timeout=5)
    assert again[0].metadata.num_delivered == 2
    await queue_metrics.poll(js)
    now = scrape(metrics_url)
    assert value(now, "jetmedia_queue_pending", stage="variant") == 0
    assert value(now, "jetmedia_queue_ack_pending", stage="variant") == 5
    assert value(now, "jetmedia_queue_redelivered", stage="variant") == 1

    for stage, count in (("variant", 2), ("upload", 1)):
        for n in range(count):
            await dead_letter(
                services, stage=stage, job=None, error_class="Reject", error="test", permanent=True,
                delivery=1, stream="JM_TEST", seq=100 * len(stage) + n, subject="x", payload=b"{}",
            )
    await queue_metrics.poll(js)
    now = scrape(metrics_url)
    assert value(now, "jetmedia_dlq_messages", stage="variant") == 2
    assert value(now, "jetmedia_dlq_messages", stage="upload") == 1
    assert ("jetmedia_dlq_messages", frozenset({("stage", "finalize")})) in now  # a visible zero
    assert value(now, "jetmedia_dlq_messages", stage="finalize") == 0
    assert value(now, "jetmedia_jetstream_storage_bytes") > 0
    for msg in [*taken[1:], again[0]]:
        await msg.ack()
    await sub.unsubscribe()



def test_primed_job_series_match_the_job_record_types() -> None:
    """Workers create every jobs series at 0 up front; the label sets must be the real ones."""
    assert metrics.JOB_KINDS == get_args(JobKind)
    assert metrics.JOB_STATUSES == get_args(JobStatus)
