"""Bus throughput: raw nats-py fetch+ack vs a no-op stage through the jetmedia runtime.

Same embedded nats-server, same message count, measured side by side in one run. The no-op
stage does what every stage does around its work: decode the CloudEvent, read its job's record
(each job has one, created before the run, as upload does), publish the next message (with its
derived Nats-Msg-Id, awaiting the PubAck), then ack. CPU time of this process per message is
shown beside the rates: on a shared machine it moves less than wall time does.

A run is `--rounds` rounds (default 3) of the three paths, in a rotating order, in one process;
the table shows each path's median round and the median of the rounds' ratios to raw (a round
lasts ~1.3 s per path: one scheduler hiccup moved a single round's ratio by several points).
Each path is timed the same way: from its first pull to the moment its last ack is written
(raw: the loop's last `ack()` returns; stage: the runtime counts the message's outcome, which it
does after the ack); the stage's start-up (its pull subscriptions) is inside the timed part.

    .venv/bin/python bench/bus.py [--messages 20000] [--concurrency 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from nats.js.api import RetentionPolicy, StreamConfig
from rich.console import Console
from rich.table import Table

from shared import bus, metrics
from shared import messages as m
from shared.config import Settings
from shared.devstack import EmbeddedStack
from shared.jobs import new_job
from shared.runtime import Context, Emit, Services, Stage, run_stages


async def fill(services: Services, subject: str, count: int, job_prefix: str, records: bool = False) -> None:
    """`count` variant requests; with `records`, each job gets its KV record first (as every real
    job has: upload creates it), after the stage's process started watching the bucket."""
    window = 500
    for start in range(0, count, window):
        batch: list[Coroutine[Any, Any, object]] = []
        for i in range(start, min(start + window, count)):
            job = f"{job_prefix}{i}"
            if records:
                batch.append(services.jobs.create(new_job(job, "asset", status="running")))
            event = m.VariantRequested(id=m.derived_id(job, "variant"), subject=job, time=m.now(),
                                       data=m.VariantRequestedData(job=job, asset=job, bucket="b", key="k"))
            batch.append(bus.publish(services.js, subject, event))
        await asyncio.gather(*batch)


SERVER_PID = 0  # the embedded nats-server (its CPU is shown beside ours)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clocks() -> tuple[float, float, float]:
    return time.perf_counter(), time.process_time(), cpu_seconds(SERVER_PID)


def since(start: tuple[float, float, float]) -> tuple[float, float, float]:
    now = clocks()
    return now[0] - start[0], now[1] - start[1], now[2] - start[2]


async def raw_fetch_ack(services: Services, count: int, tag: str = "") -> tuple[float, float, float]:
    js = services.js
    await js.add_stream(StreamConfig(name="BENCH_RAW", subjects=["jetmedia.bench.raw"],
                                     retention=RetentionPolicy.WORK_QUEUE))
    await fill(services, "jetmedia.bench.raw", count, f"raw{tag}")
    sub = await js.pull_subscribe("jetmedia.bench.raw", durable="raw", stream="BENCH_RAW")
    started = clocks()
    seen = 0
    while seen < count:
        for msg in await sub.fetch(500, timeout=5):
            await msg.ack()
            seen += 1
    took = since(started)
    await js.delete_stream("BENCH_RAW")
    return took


async def noop_stage(event: m.VariantRequested, ctx: Context) -> list[Emit]:
    part = m.PartDone(id=m.derived_id(event.data.job, "variant", event.data.asset), subject=event.data.job,
                      data=m.PartData(job=event.data.job, asset=event.data.asset, part="variant"))
    return [Emit(m.FINALIZE_ASSET, part)]


async def through_runtime(services: Services, count: int, cancellable: bool,
                          tag: str = "") -> tuple[float, float, float]:
    await services.js.purge_stream("JM_FINALIZE")
    await fill(services, m.VARIANT, count, f"rt{int(cancellable)}-{tag}", records=True)
    stage = Stage(name="variant", stream="JM_VARIANT", handle=noop_stage, accepts=(m.VariantRequested,),
                  cancellable=cancellable)
    stopping = asyncio.Event()
    handled = metrics.messages_total.labels("variant", "ok")._value  # bench only: read without a scrape
    done = handled.get() + count
    started = clocks()
    task = asyncio.create_task(run_stages(services, [stage], stopping))
    while handled.get() < done:  # noqa: ASYNC110 (a 5 ms poll of a number: no hook in the runtime to wait on)
        await asyncio.sleep(0.005)  # the last message is acked (its outcome is counted after its ack)
    took = since(started)
    while True:  # untimed: the server has every ack
        info = await services.js.consumer_info("JM_VARIANT", "variant")
        if info.num_pending == 0 and info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.02)
    stopping.set()
    await task
    emitted = (await services.js.stream_info("JM_FINALIZE")).state.messages
    assert emitted == count, f"expected {count} emitted, found {emitted}"
    return took


PATHS = (
    "raw nats-py fetch(500)+ack",
    "no-op stage via runtime (decode, job record, publish next, ack)",
    "same, stage cancellable (skips cancelled jobs' work)",
)


async def measure(services: Services, path: int, count: int, tag: str) -> tuple[float, float, float]:
    if path == 0:
        return await raw_fetch_ack(services, count, tag)
    return await through_runtime(services, count, cancellable=path == 2, tag=tag)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    global SERVER_PID
    rounds: list[list[tuple[float, float, float]]] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedStack(Path(tmp)) as stack:
        assert stack.nats and stack.s3 and stack.nats.proc
        SERVER_PID = stack.nats.proc.pid
        stack_env = {k.removeprefix("JETMEDIA_").lower(): v for k, v in stack.env().items()}
        settings = Settings.from_env({}, **stack_env, concurrency=args.concurrency, log_level="WARNING")
        async with Services.open(settings, name="bench") as services:
            for n in range(args.rounds):
                order = [(path + n) % len(PATHS) for path in range(len(PATHS))]  # each path first once in 3
                took: dict[int, tuple[float, float, float]] = {}
                for path in order:
                    took[path] = await measure(services, path, args.messages, f"r{n}-")
                rounds.append([took[path] for path in range(len(PATHS))])
    rate = [[args.messages / got[path][0] for path in range(len(PATHS))] for got in rounds]
    per_round = Table(title=f"rounds (msgs/s; vs raw in the same round), {args.messages} messages each")
    for column in ("round", "order", *("raw", "stage", "vs raw", "cancellable", "vs raw")):
        per_round.add_column(column, justify="right")
    for n, r in enumerate(rate):
        order = " ".join(("raw", "stage", "canc")[(path + n) % 3] for path in range(3))
        per_round.add_row(str(n + 1), order, f"{r[0]:,.0f}", f"{r[1]:,.0f}", f"{r[1] / r[0]:.2f}x",
                          f"{r[2]:,.0f}", f"{r[2] / r[0]:.2f}x")
    table = Table(title=f"bus throughput, {args.messages} messages, one process, concurrency {args.concurrency}, "
                        f"median of {len(rounds)} round(s)")
    for column in ("path", "msgs/s", "vs raw", "CPU µs/msg: client", "nats-server"):
        table.add_column(column, justify="right")
    for path, name in enumerate(PATHS):
        ratio = statistics.median(r[path] / r[0] for r in rate)
        cpu = statistics.median(got[path][1] for got in rounds) / args.messages * 1e6
        server = statistics.median(got[path][2] for got in rounds) / args.messages * 1e6
        table.add_row(name, f"{statistics.median(r[path] for r in rate):,.0f}", f"{ratio:.2f}x",
                      f"{cpu:.0f}", f"{server:.0f}")
    console = Console(width=120)
    console.print(per_round)
    console.print(table)


if __name__ == "__main__":
    asyncio.run(main())
