"""Gateway bench: one `jetmedia gateway` process, 200 SSE clients and a steady stream of submits.

  submits   `POST /v1/assets` at `--rate` per second (each its own Idempotency-Key), open loop: the
            clock starts at the request and stops at the 202
  progress  every accepted job's record in the jobs KV bucket is moved along by this bench as a
            transcode would move it (`--steps` percent revisions `--step-every` s apart, then
            ready), written with `JobStore.update` like the stages write it. The stages do not
            run: ffmpeg on the same 2 cores would measure ffmpeg, not the gateway
  clients   `--clients` SSE clients (plain asyncio streams, so the client side stays cheap), each
            following a running job's `/v1/jobs/{id}/events` until the gateway closes the stream
            after the final state, then another running job; on `--tokens` API tokens (1: all share
            one token, as browsers behind one web app would; the submits use the first)
  limits    the rate limit is raised out of the way (every request still spends a token from its
            KV bucket, only none is refused); the jobs-in-flight quota stays at its default
  lag       per SSE `job` event: when its `data:` line arrived minus the record's `updated` (stamped
            by `JobStore.update` just before the KV write), i.e. KV revision -> gateway watch -> SSE
            line -> client. The first event of each connection (the state at connect time) is no
            delivery and is not counted
  floor     the same revisions through a plain KV watch in this process, timed the same way: what
            nats-server and this loop cost without the gateway (side by side, same machine load)
  RSS       the gateway's VmRSS before any load, after the warm-up (the first 10 % of the run; every
            client connected) and at the end; flat = end within ±10 % of after-warm-up
  consumers the jobs bucket stream's consumer count, sampled each second: the gateway holds one
            watch for all its SSE streams, so it stays constant however many streams come and go

The clients, the submitter and the progress writer share this process's event loop (the table says
how late that loop ran), and on a 2-core machine all of it shares the cores with the gateway,
nats-server and SeaweedFS: lag includes waiting for a core. Targets: lag p95 <= 100 ms, RSS flat
(±10 %).

    .venv/bin/python bench/gateway.py                  # 200 clients, 10 submits/s, 60 s
    .venv/bin/python bench/gateway.py --seconds 15     # shorter
    .venv/bin/python bench/gateway.py --tokens 200     # every client its own token
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import msgspec
import nats.errors
from nats.js import JetStreamContext
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.samples import photo  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.devstack import EmbeddedStack, free_port  # noqa: E402
from shared.jobs import BUCKET, FINAL_STATUSES, Job, JobStore, decode_job, new_job  # noqa: E402
from shared.runtime import Services  # noqa: E402

SOURCE_KEY = "bench/gateway/photo.jpg"


class View(msgspec.Struct):
    """The part of a JobView an SSE client reads."""

    id: str
    status: str
    updated: datetime
    percent: float | None = None


_view = msgspec.json.Decoder(View)


@dataclass
class Results:
    submit_ms: list[float] = field(default_factory=list)
    submit_refused: Counter[str] = field(default_factory=Counter)
    lag_ms: list[float] = field(default_factory=list)
    events: int = 0
    connects: int = 0
    connect_refused: Counter[str] = field(default_factory=Counter)
    stream_errors: Counter[str] = field(default_factory=Counter)  # a stream broken off (client side sees)
    ended_on_final: int = 0
    out_of_order: int = 0  # an `id:` (KV revision) not above the previous one on the same stream
    percent_down: int = 0  # a percent below the previous one on the same stream
    direct_lag_ms: list[float] = field(default_factory=list)  # the same revisions via a KV watch in this process
    loop_lag_ms: list[float] = field(default_factory=list)  # this process's event loop: 50 ms sleeps' overshoot
    rss_kb: dict[str, int] = field(default_factory=dict)
    rss_max_kb: int = 0
    consumers: list[int] = field(default_factory=list)  # the jobs bucket stream's consumers, 1 s samples
    cpu_seconds: float = 0.0


@dataclass
class Load:
    client: httpx.AsyncClient  # for the submits
    port: int
    tokens: list[str]  # the SSE clients' (client i uses tokens[i % len]); the submits use the first
    jobs: JobStore
    results: Results
    until: float
    steps: int
    step_every: float
    running: list[str] = field(default_factory=list)  # job ids with a record, not yet final
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


# --- the gateway process ------------------------------------------------------------------------


def start_gateway(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "services.cli", "gateway"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)


async def wait_ready(client: httpx.AsyncClient, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gateway exited {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(httpx.TransportError):
            if (await client.get("/healthz")).status_code == 200:
                return
        await asyncio.sleep(0.2)
    raise SystemExit(f"gateway not ready in 60 s:\n{tail(log)}")


def tail(log: Path, size: int = 3000) -> str:
    return log.read_text(errors="replace")[-size:]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def sample_rss(pid: int, results: Results, until: float, js: JetStreamContext) -> None:
    """The gateway's RSS, and the consumers on the jobs bucket's stream (the gateway's SSE streams
    share one watch: the count must not follow the number of streams)."""
    while time.monotonic() < until:
        results.rss_max_kb = max(results.rss_max_kb, rss_kb(pid))
        with contextlib.suppress(Exception):
            results.consumers.append((await js.stream_info(f"KV_{BUCKET}")).state.consumer_count)
        await asyncio.sleep(1.0)


async def watch_loop(results: Results, until: float) -> None:
    """How late this process's own loop runs (it times the SSE lines and the submits)."""
    while time.monotonic() < until:
        started = time.perf_counter()
        await asyncio.sleep(0.05)
        results.loop_lag_ms.append((time.perf_counter() - started - 0.05) * 1000)


async def watch_directly(jobs: JobStore, results: Results, since: float, until: float) -> None:
    """The floor under the gateway's lag: the same revisions through a plain KV watch here
    (nats-server -> this process), measured the same way."""
    watcher = await jobs.kv.watchall()
    try:
        while time.monotonic() < until:  # ends by itself: nats-py's watcher can swallow a cancel
            try:
                entry = await watcher.updates(timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            arrived = time.time()
            if entry is None or not entry.value:
                continue
            updated = decode_job(entry.value).updated.timestamp()
            if updated >= since:
                results.direct_lag_ms.append((arrived - updated) * 1000)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(watcher.stop(), 5)


# --- load ---------------------------------------------------------------------------------------


async def submit_loop(load: Load, rate: float, run: str) -> None:
    """Open loop: one POST every 1/rate s whether or not earlier ones have answered."""
    interval, due, n = 1.0 / rate, time.monotonic(), 0
    while due < load.until:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        n += 1
        load.spawn(submit_one(load, f"{run}-{n}"))
        due += interval


async def submit_one(load: Load, key: str) -> None:
    started = time.perf_counter()
    try:
        resp = await load.client.post("/v1/assets", json={"key": SOURCE_KEY}, headers={"Idempotency-Key": key})
    except httpx.HTTPError as exc:
        load.results.submit_refused[type(exc).__name__] += 1
        return
    if resp.status_code != 202:
        load.results.submit_refused[str(resp.status_code)] += 1
        return
    load.results.submit_ms.append((time.perf_counter() - started) * 1000)
    await drive(load, resp.json()["job_id"])


async def drive(load: Load, job_id: str) -> None:
    """Move the job along as a transcode does: percent revisions, then ready."""
    await load.jobs.create(new_job(job_id, "asset", status="running", stage="transcode", percent=0.0))
    load.running.append(job_id)
    try:
        for step in range(1, load.steps + 1):
            await asyncio.sleep(load.step_every)
            percent = 100.0 * step / load.steps

            def progress(job: Job, percent: float = percent) -> Job:
                return msgspec.structs.replace(job, status="running", stage="transcode", percent=percent)

            await load.jobs.update(job_id, progress)
        await asyncio.sleep(load.step_every)
        await load.jobs.update(job_id, lambda job: msgspec.structs.replace(job, status="ready", stage="finalize"))
    finally:
        load.running.remove(job_id)


async def client_loop(load: Load, token: str) -> None:
    while time.monotonic() < load.until:
        if not load.running:
            await asyncio.sleep(0.05)
            continue
        try:
            await follow(load, random.choice(load.running), token)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            load.results.stream_errors[type(exc).__name__] += 1
            await asyncio.sleep(2.0)  # as EventSource does (the gateway's `retry: 2000`)


async def follow(load: Load, job_id: str, token: str) -> None:
    """One SSE connection, read with asyncio streams: an HTTP client library costs more CPU per
    line than the gateway under test (httpx with 200 streams held this loop up for seconds)."""
    results = load.results
    reader, writer = await asyncio.open_connection("127.0.0.1", load.port)
    try:
        writer.write(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{load.port}\r\n"
                     f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode())
        status = int((await reader.readline()).split()[1])
        chunked = False
        while (header := await reader.readline()) not in (b"\r\n", b""):
            chunked |= header.lower().startswith(b"transfer-encoding:") and b"chunked" in header.lower()
        if status != 200:
            results.connect_refused[str(status)] += 1
            await asyncio.sleep(0.2)
            return
        results.connects += 1
        first, last_id, last_percent, pending = True, -1, -1.0, b""
        while True:
            if chunked:
                size_line = await reader.readline()
                if not size_line:
                    raise ConnectionResetError("the gateway closed the stream mid-response")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    return
                data = (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return
            arrived = time.time()
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if line.startswith(b"id:"):
                    revision = int(line[3:])
                    results.out_of_order += revision <= last_id
                    last_id = revision
                elif line.startswith(b"data:"):
                    view = _view.decode(line[5:])
                    results.events += 1
                    if not first:
                        results.lag_ms.append((arrived - view.updated.timestamp()) * 1000)
                    first = False
                    if view.percent is not None:
                        results.percent_down += view.percent < last_percent
                        last_percent = view.percent
                    if view.status in FINAL_STATUSES:
                        results.ended_on_final += 1
    finally:
        writer.close()


# --- the run ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, stack: EmbeddedStack, tmp: Path) -> Results:
    tokens = [secrets.token_urlsafe(24) for _ in range(args.tokens)]
    stack_env = stack.env()
    settings = Settings.from_env({}, **{k.removeprefix("JETMEDIA_").lower(): v for k, v in stack_env.items()},
                                 log_level="WARNING")
    port = free_port()
    env = {
        **os.environ, **stack_env,
        "JETMEDIA_GATEWAY_PORT": str(port),
        "JETMEDIA_GATEWAY_TOKENS": json.dumps([{
            "name": f"bench-{i}", "sha256": hashlib.sha256(token.encode()).hexdigest(),
            "scopes": ["submit", "read", "cancel", "admin"]} for i, token in enumerate(tokens)]),
        "JETMEDIA_GATEWAY_RATE": "1000000", "JETMEDIA_GATEWAY_BURST": "1000000",  # counted, never refused
        "JETMEDIA_METRICS_PORT": "0", "JETMEDIA_LOG_LEVEL": "INFO",
    }
    results = Results()
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with Services.open(settings, name="bench-gateway") as services, httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {tokens[0]}"}, limits=limits,
        timeout=30.0,
    ) as client:
        await services.storage.ensure_bucket()
        await services.storage.put_bytes(SOURCE_KEY, photo(64, 48), "image/jpeg")
        log = tmp / "gateway.log"
        proc = start_gateway(env, log)
        try:
            await wait_ready(client, proc, log)
            await asyncio.sleep(1.0)
            results.rss_kb["start (idle)"] = rss_kb(proc.pid)
            cpu_before = cpu_seconds(proc.pid)
            began = time.monotonic()
            load = Load(client, port, tokens, services.jobs, results, began + args.seconds, args.steps, args.step_every)
            sampler = asyncio.create_task(sample_rss(proc.pid, results, load.until, services.js))
            looper = asyncio.create_task(watch_loop(results, load.until))
            direct = asyncio.create_task(watch_directly(services.jobs, results, time.time(), load.until))
            submitter = asyncio.create_task(submit_loop(load, args.rate, secrets.token_hex(4)))
            clients = [asyncio.create_task(client_loop(load, tokens[i % len(tokens)])) for i in range(args.clients)]
            await asyncio.sleep(args.seconds * 0.1)
            results.rss_kb["after warm-up (10 %)"] = rss_kb(proc.pid)
            await asyncio.sleep(max(0.0, load.until - time.monotonic()))
            results.rss_kb["end (under load)"] = rss_kb(proc.pid)
            results.cpu_seconds = cpu_seconds(proc.pid) - cpu_before
            for task in (*clients, submitter, sampler, looper, *load.tasks):
                task.cancel()
            await asyncio.gather(*clients, submitter, sampler, looper, direct, *load.tasks, return_exceptions=True)
            await asyncio.sleep(3.0)
            results.rss_kb["3 s after (idle)"] = rss_kb(proc.pid)
            if results.stream_errors or results.connect_refused or results.submit_refused:
                errors = [line for line in tail(log, 200_000).splitlines() if "rror" in line or "xception" in line]
                print("gateway log, errors (last 15):", *errors[-15:], sep="\n", file=sys.stderr)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return results


def report(args: argparse.Namespace, results: Results, load_before: float, load_after: float) -> None:
    table = Table(title=f"gateway: 1 process, {args.clients} SSE clients on {args.tokens} token(s), "
                        f"{args.rate:g} submits/s, "
                        f"{args.seconds:g} s (load average {load_before:.1f} -> {load_after:.1f} on "
                        f"{os.cpu_count()} cores)")
    for column, justify in (("measure", "left"), ("value", "right"), ("target", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    submits = results.submit_ms
    table.add_row("submits accepted (202)", f"{len(submits)}", "")
    table.add_row("submits refused", ", ".join(f"{k}: {v}" for k, v in results.submit_refused.items()) or "0", "0")
    table.add_row("submit latency p50 / p95",
                  f"{percentile(submits, 0.5):.1f} / {percentile(submits, 0.95):.1f} ms", "")
    table.add_row("SSE connections / refused", f"{results.connects} / "
                  f"{', '.join(f'{k}: {v}' for k, v in results.connect_refused.items()) or 0}", "")
    table.add_row("SSE streams broken off", ", ".join(f"{k}: {v}" for k, v in results.stream_errors.items()) or "0",
                  "0")
    table.add_row("SSE events received / streams ended on the final state",
                  f"{results.events} / {results.ended_on_final}", "")
    table.add_row("out of order (revision or percent going back)",
                  f"{results.out_of_order} / {results.percent_down}", "0 / 0")
    lags = results.lag_ms
    table.add_row("event lag p50 / p95 / p99 / max (KV revision -> SSE line)",
                  f"{percentile(lags, 0.5):.1f} / {percentile(lags, 0.95):.1f} / {percentile(lags, 0.99):.1f}"
                  f" / {max(lags, default=float('nan')):.1f} ms ({len(lags)} events)", "p95 <= 100 ms")
    direct = results.direct_lag_ms
    table.add_row("  floor: KV watch in the bench, no gateway (p50 / p95)",
                  f"{percentile(direct, 0.5):.1f} / {percentile(direct, 0.95):.1f} ms ({len(direct)} revisions)", "")
    loop = results.loop_lag_ms
    table.add_row("bench's own event loop late, p95 / max", f"{percentile(loop, 0.95):.1f} / "
                  f"{max(loop, default=float('nan')):.1f} ms", "")
    for name, kb in results.rss_kb.items():
        table.add_row(f"gateway RSS {name}", f"{kb / 1024:.1f} MiB", "")
    warm, end = results.rss_kb.get("after warm-up (10 %)"), results.rss_kb.get("end (under load)")
    if warm and end:
        table.add_row("gateway RSS end vs after warm-up", f"{(end / warm - 1) * 100:+.1f} %", "±10 %")
    table.add_row("gateway RSS max (1 s samples)", f"{results.rss_max_kb / 1024:.1f} MiB", "")
    if results.consumers:
        table.add_row("consumers on the jobs bucket's stream, min / max (1 s samples)",
                      f"{min(results.consumers)} / {max(results.consumers)}", "constant")
    table.add_row("gateway CPU during the load", f"{results.cpu_seconds:.1f} s "
                  f"({results.cpu_seconds / args.seconds * 100:.0f} % of a core)", "")
    Console(width=140).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="submits per second")
    parser.add_argument("--tokens", type=int, default=1,
                        help="API tokens the SSE clients spread over (1: all share one; 200: each its own)")
    parser.add_argument("--steps", type=int, default=10, help="percent revisions per job before ready")
    parser.add_argument("--step-every", type=float, default=0.5, help="seconds between a job's revisions")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, EmbeddedStack(Path(tmp) / "stack") as stack:
        results = asyncio.run(run(args, stack, Path(tmp)))
    report(args, results, load_before, os.getloadavg()[0])


if __name__ == "__main__":
    main()
