"""A hostile corpus against every subject: each message gets exactly one answer, workers live on.

About 1,000 messages a producer (or anyone who can publish) might send: not JSON, NUL and binary
payloads near the max payload, JSON nested thousands deep, job ids KV refuses, bucket names S3
refuses and buckets that do not exist, unknown and misplaced types, work for jobs that have no
record, 10,000-key exports. A real `jetmedia worker` process runs every stage. Afterwards every
message was either acked (work that is legitimately fine) or terminated with exactly one dead
letter, the work streams are empty, the worker is alive and its RSS grew by at most 20 MB.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO

import msgspec

from shared import bus
from shared import messages as m
from shared.runtime import Services
from tests.helpers import eventually, final_job, settings_env

SUBJECTS = (m.UPLOAD_ASSET, m.UPLOAD_EXPORT, m.UPLOAD_CANCEL, "jetmedia.upload.other", m.CHUNK, m.VARIANT,
            m.TRANSCODE, m.FINALIZE_ASSET, m.FINALIZE_EXPORT, "jetmedia.finalize.other")
WORK = {"JM_UPLOAD": "upload", "JM_CHUNK": "chunk", "JM_VARIANT": "variant", "JM_TRANSCODE": "transcode",
        "JM_FINALIZE": "finalize"}
BAD_IDS = ("..", ".", "a.", ".a", "a..b", "a b", "a/b", "*", ">", "x" * 300, "ü", "", "hb-1.chunk.0")
BAD_BUCKETS = ("Not_A_Bucket!", "no-such-bucket-hostile", "a", "..", "x" * 80)
MAX_RSS_GROWTH = 20 * 1024 * 1024
TOTAL = 1000


def envelope(kind: str, event_id: str, data: object, subject: str | None = None) -> bytes:
    doc: dict[str, object] = {"specversion": "1.0", "type": kind, "id": event_id, "source": "hostile", "data": data}
    if subject is not None:
        doc["subject"] = subject
    return msgspec.json.encode(doc)


def corpus(max_payload: int) -> list[tuple[str, bytes, bool]]:
    """(subject, payload, must be dead-lettered) for every message, in a fixed random order."""
    rng = random.Random(10)
    near_max = max_payload - 2048
    out: list[tuple[str, bytes, bool]] = []
    for n in range(60):  # not JSON
        out.append((SUBJECTS[n % len(SUBJECTS)], rng.randbytes(rng.randint(1, 3000)), True))
    for n in range(20):  # NUL / binary / invalid UTF-8 near the max payload
        body = [b"\x00" * near_max, rng.randbytes(near_max), b"\xff" * near_max, b"\x01" * near_max][n % 4]
        out.append((SUBJECTS[n % len(SUBJECTS)], body, True))
    for n in range(80):  # nested thousands deep, in an unknown field (the decoder recurses to skip it)
        depth = rng.choice((1000, 5000, 20000))
        deep = b'{"a":' * depth + b"1" + b"}" * depth if n % 2 else b"[" * depth + b"]" * depth
        out.append((SUBJECTS[n % len(SUBJECTS)],
                    envelope("jetmedia.asset.uploaded.v1", f"deep-{n}", {"key": "k"})[:-2] + b',"x":' + deep + b"}}",
                    True))
    for n in range(120):  # job ids KV refuses: as a producer's job id, as an internal message's subject
        bad = BAD_IDS[n % len(BAD_IDS)]
        if n % 3 == 0:
            out.append((m.UPLOAD_ASSET, envelope("jetmedia.asset.uploaded.v1", f"badid-{n}",
                                                 {"key": "k.jpg", "job_id": bad}), True))
        elif n % 3 == 1:
            out.append((m.FINALIZE_ASSET, envelope("jetmedia.asset.part.v1", f"badid-{n}",
                                                   {"job": "ok", "asset": "a", "part": "variant"}, subject=bad), True))
        else:
            out.append((m.VARIANT, envelope("jetmedia.variant.requested.v1", f"badid-{n}",
                                            {"job": "ok", "asset": "a", "bucket": "b", "key": "k"}, subject=bad), True))
    for n in range(200):  # bad buckets, on every stage that reads S3
        bucket = BAD_BUCKETS[n % len(BAD_BUCKETS)]
        job = f"hb-{n}"
        kind = n % 5
        if kind == 0:
            payload = envelope("jetmedia.asset.uploaded.v1", job, {"key": "k.jpg", "bucket": bucket})
            out.append((m.UPLOAD_ASSET, payload, True))
        elif kind == 1:
            payload = envelope("jetmedia.export.requested.v1", job, {"keys": ["a", "b"], "bucket": bucket})
            out.append((m.UPLOAD_EXPORT, payload, True))
        elif kind == 2:
            payload = envelope("jetmedia.variant.requested.v1", job, {"job": job, "asset": job, "bucket": bucket,
                                                                      "key": "k.jpg"}, subject=job)
            out.append((m.VARIANT, payload, True))
        elif kind == 3:
            payload = envelope("jetmedia.transcode.requested.v1", job, {"job": job, "asset": job, "bucket": bucket,
                                                                        "key": "k.mp4"}, subject=job)
            out.append((m.TRANSCODE, payload, True))
        else:
            payload = envelope("jetmedia.export.chunk.v1", job, {"job": job, "chunk": 0, "bucket": bucket,
                                                                 "items": [{"key": "a"}]}, subject=job)
            out.append((m.CHUNK, payload, True))
    for n in range(150):  # unknown types, and known types on a subject whose stage does not take them
        if n % 2:
            out.append((SUBJECTS[n % len(SUBJECTS)], envelope(f"jetmedia.nope{n}.v1", f"unk-{n}", {}), True))
        else:
            ready = envelope("jetmedia.job.failed.v1", f"misplaced-{n}", {"job": "j", "stage": "s", "error": "e"})
            out.append((SUBJECTS[n % len(SUBJECTS)], ready, True))
    for n in range(150):  # work for jobs that have no record, cancels of jobs that do not exist
        job = f"norecord-{n}"
        kind = n % 4
        if kind == 0:
            out.append((m.FINALIZE_ASSET, envelope("jetmedia.asset.part.v1", job, {
                "job": job, "asset": job, "part": "variant"}, subject=job), True))
        elif kind == 1:
            out.append((m.FINALIZE_EXPORT, envelope("jetmedia.export.finalize.v1", job, {"job": job, "chunks": 3},
                                                    subject=job), True))
        elif kind == 2:
            out.append((m.CHUNK, envelope("jetmedia.export.chunk.v1", job, {
                "job": job, "chunk": 0, "bucket": "jetmedia-test", "items": [{"key": "a"}]}, subject=job), True))
        else:
            out.append((m.UPLOAD_CANCEL, envelope("jetmedia.job.cancel.v1", job, {"job": job}), True))
    for n in range(TOTAL - 3 - len(out)):  # the rest: well-formed requests for objects that do not exist, odd keys
        key = rng.choice(("missing.jpg", "a" * 1024, "../../etc/passwd", "sp ace/ü.mp4", "\u202e.jpg"))
        job = f"miss-{n}"
        if n % 3 == 0:
            out.append((m.UPLOAD_ASSET, envelope("jetmedia.asset.uploaded.v1", job, {"key": key}), True))
        elif n % 3 == 1:
            out.append((m.VARIANT, envelope("jetmedia.variant.requested.v1", job, {
                "job": job, "asset": job, "bucket": "jetmedia-test", "key": key}, subject=job), True))
        else:
            out.append((m.TRANSCODE, envelope("jetmedia.transcode.requested.v1", job, {
                "job": job, "asset": job, "bucket": "jetmedia-test", "key": key}, subject=job), True))
    keys = [f"k{i}" for i in range(10_000)]
    for n in range(3):  # 10,000-key exports: from buckets that do not exist (the last one: ours, all missing)
        bucket = "jetmedia-test" if n == 2 else BAD_BUCKETS[n]
        out.append((m.UPLOAD_EXPORT, envelope("jetmedia.export.requested.v1", f"big-{n}", {
            "keys": keys, "bucket": bucket}), n != 2))
    rng.shuffle(out)
    return out


def every_stage(services: Services, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """One `jetmedia worker` process running every stage, logging into `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "worker", "upload", "chunk", "variant", "transcode", "finalize"],
        env={**os.environ, **settings_env(services.settings)}, stdout=log, stderr=subprocess.STDOUT,
    )


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def idle(services: Services) -> bool:
    for stream, durable in WORK.items():
        info = await services.js.consumer_info(stream, durable)
        if info.num_pending or info.num_ack_pending or (await services.js.stream_info(stream)).state.messages:
            return False
    return True


async def test_hostile_corpus_gets_one_answer_per_message(services: Services, tmp_path: Path) -> None:
    messages = corpus(services.nc.max_payload)
    assert len(messages) == TOTAL
    log = open(tmp_path / "worker.log", "wb")  # closed below; a pipe nobody reads would fill up and block it
    worker = every_stage(services, log)
    sent: dict[tuple[str, int], bool] = {}
    started = time.monotonic()
    try:
        async def publish(batch: list[tuple[str, bytes, bool]], offset: int) -> None:
            for n, (subject, payload, hostile) in enumerate(batch, start=offset):
                ack = await services.js.publish(subject, payload, headers={bus.MSG_ID: f"hostile-{n}"}, timeout=10)
                sent[(ack.stream, ack.seq)] = hostile

        await publish(messages[:150], 0)  # warm up: imports, pools, buffers at their working size
        await eventually(lambda: idle(services), timeout=60, every=0.2)
        baseline = rss(worker.pid)
        await publish(messages[150:], 150)
        await eventually(lambda: idle(services), timeout=90, every=0.2)
        await asyncio.sleep(0.5)
        grown = rss(worker.pid) - baseline
        elapsed = time.monotonic() - started
        assert worker.poll() is None, "the worker died"
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        finally:
            log.close()
    assert worker.returncode == 0, (tmp_path / "worker.log").read_bytes()[-3000:]

    letters = [e for e in await bus.read_stream(services.js, "JM_DLQ") if isinstance(e, m.DeadLetter)]
    per_message = Counter((letter.data.stream, letter.data.stream_seq) for letter in letters)
    assert max(per_message.values()) == 1, [k for k, v in per_message.items() if v > 1][:10]
    unanswered = [key for key, hostile in sent.items() if hostile and per_message[key] != 1]
    assert not unanswered, f"{len(unanswered)} hostile messages without a dead letter, e.g. {unanswered[:5]}"
    assert not [k for k, hostile in sent.items() if not hostile and per_message[k]]
    assert all(letter.data.delivery_count == 1 for letter in letters if letter.data.permanent)
    for stream in WORK:
        assert (await services.js.stream_info(stream)).state.messages == 0, stream
    big = await final_job(services, "big-2")  # the one legitimate export: every source listed as missing
    assert big is not None and big.status == "ready" and big.missing_count == 10_000
    assert grown <= MAX_RSS_GROWTH, f"RSS grew by {grown / 2**20:.1f} MB"
    print(f"hostile corpus: {len(sent)} messages, {len(letters)} dead letters, {elapsed:.1f}s, "
          f"worker RSS +{grown / 2**20:.1f} MB")
