"""`jetmedia` — the composition root: wires stages to the stack and gives people commands.

    jetmedia up              embedded stack (nats-server, local S3) + every stage, until Ctrl-C
    jetmedia demo            the embedded stack, sample media through every stage, results, exit
    jetmedia worker [STAGE]  run stages against JETMEDIA_NATS_URL / JETMEDIA_S3_ENDPOINT (compose)
    jetmedia collector       export queue depth and JetStream usage (one per deployment)
    jetmedia health          exit 0 when this host's jetmedia process is ready (compose health checks)
    jetmedia submit FILE     upload a file and start an asset job (--wait draws a progress bar)
    jetmedia status JOB      a job's record (--follow until it ends)
    jetmedia cancel JOB      cancel a job; running work stops at the next boundary
    jetmedia dlq             list dead letters
    jetmedia schemas         write schemas/*.json and schemas/asyncapi.yaml (--check: fail on drift)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from shared import bus, logs, metrics, queue_metrics
from shared.config import ConfigError, Settings, settings_help
from shared.devstack import EmbeddedStack
from shared.runtime import Services, run_stages
from shared.storage import Storage

from . import stages

log = logging.getLogger("jetmedia")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "concurrency", None):
        overrides["concurrency"] = args.concurrency
    return Settings.from_env(**overrides)


def _stop_on_signals(stopping: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)


@contextlib.asynccontextmanager
async def embedded(settings: Settings, data_dir: Path) -> AsyncIterator[tuple[EmbeddedStack, Settings]]:
    """Start nats-server and the local S3 endpoint; settings pointing at them; stop on exit."""
    stack = EmbeddedStack(data_dir, nats_binary=settings.nats_server, weed_binary=settings.weed)
    try:
        await asyncio.to_thread(stack.start)
    except (OSError, RuntimeError) as exc:  # a binary missing, a server that would not start: one line, exit 2
        raise ConfigError(f"the embedded stack did not start: {exc}") from None
    try:
        assert stack.nats and stack.s3
        local = settings.replace(
            nats_url=stack.nats.url, s3_endpoint=stack.s3.url,
            s3_access_key=stack.env()["JETMEDIA_S3_ACCESS_KEY"], s3_secret_key=stack.env()["JETMEDIA_S3_SECRET_KEY"],
            nats_user=stack.env()["JETMEDIA_NATS_USER"], nats_password=stack.env()["JETMEDIA_NATS_PASSWORD"],
        )
        yield stack, local
    finally:
        await asyncio.to_thread(stack.stop)


async def serve_stages(
    settings: Settings, names: Sequence[str], stopping: asyncio.Event, *, ready: str = "", collect: bool = False,
    create_bucket: bool = False,
) -> None:
    """Run stages in this process until `stopping`; metrics endpoint alongside (and the queue
    collector with `collect`, for the single-process stack). S3 is checked first: a wrong
    endpoint, secret or bucket stops here with one line (exit 2), not as a dead letter per message."""
    periodic = [n for n in names if n in stages.PERIODIC_MODULES] if names else list(stages.PERIODIC_MODULES)
    chosen = [stages.load(n) for n in names if n not in stages.PERIODIC_MODULES] if names else stages.load_all()
    for stage in chosen:
        stage.check_settings(settings)
    async with Storage(settings) as storage:  # before NATS: an S3 mistake is reported at once
        await storage.check(create=create_bucket)
    server = metrics.serve(settings.metrics_host, settings.metrics_port)
    try:
        async with Services.open(settings, name=f"jetmedia-{'+'.join(s.name for s in chosen)}") as services:
            metrics.mark_ready(lambda: services.nc.is_connected)
            collector = (
                asyncio.create_task(queue_metrics.run(services.js, stopping, settings.queue_poll_interval))
                if collect else None
            )
            if ready:
                print(ready.format(metrics=f"http://{settings.metrics_host}:{server.server_port}/metrics"), flush=True)
            loops = [asyncio.create_task(stages.load_periodic(n)(services, stopping)) for n in periodic]
            await run_stages(services, chosen, stopping)
            await asyncio.gather(*loops)
            if collector:
                await collector
    finally:
        server.shutdown()


# --- commands ---------------------------------------------------------------------------


async def cmd_up(args: argparse.Namespace) -> int:
    settings = _settings(args)
    stopping = asyncio.Event()
    _stop_on_signals(stopping)
    async with embedded(settings, Path(args.data_dir)) as (stack, local), \
            _local_prometheus(args, local, Path(args.data_dir)) as (local, prometheus_line):
        assert stack.nats and stack.s3
        banner = (
            f"jetmedia is up\n  NATS     {stack.nats.url}\n  S3       {stack.s3.url}  (bucket {local.bucket})\n"
            "  metrics  {metrics}\n" + prometheus_line.replace("{", "{{").replace("}", "}}")
            + _producer_line(stack).replace("{", "{{").replace("}", "}}")
            + "Point other processes here with:\n"
            + "".join(f"  export {k}={v}\n" for k, v in stack.env().items())
            + "Ctrl-C stops everything."
        )
        await serve_stages(local, args.stages, stopping, ready=banner, collect=True, create_bucket=True)
    return 0


def _producer_line(stack: EmbeddedStack) -> str:
    """The NATS credentials for systems that submit media (may publish jetmedia.upload.>, read
    events and job records; shared/natsauth.py)."""
    from shared.natsauth import PRODUCER_USER

    password = (stack.nats.passwords or {}).get(PRODUCER_USER) if stack.nats else None
    if not password:
        return ""
    return f"  producer NATS user {PRODUCER_USER}, password {password}  (submit + read events/jobs only)\n"


@contextlib.asynccontextmanager
async def _local_prometheus(
    args: argparse.Namespace, settings: Settings, data_dir: Path
) -> AsyncIterator[tuple[Settings, str]]:
    """`up --prometheus`: scrape this process with the Prometheus installed here, if there is one."""
    from shared import promlocal
    from shared.devstack import free_port

    if not args.prometheus:
        yield settings, ""
        return
    if promlocal.binary() is None:
        yield settings, "  prometheus  not installed (apt-get install prometheus); skipped\n"
        return
    port = settings.metrics_port or free_port()
    settings = settings.replace(metrics_port=port)
    config = {"global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
              "scrape_configs": [{"job_name": "jetmedia", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}
    server = promlocal.LocalPrometheus(data_dir / "prometheus", config)
    await asyncio.to_thread(server.start)
    try:
        yield settings, f"  prometheus  {server.url}  (PromQL over the metrics above)\n"
    finally:
        await asyncio.to_thread(server.stop)


async def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logging.getLogger("jetmedia").info("settings %s", settings.redacted())
    stopping = asyncio.Event()
    _stop_on_signals(stopping)
    await serve_stages(settings, args.stages, stopping, ready="worker ready; metrics at {metrics}")
    return 0


async def cmd_collector(args: argparse.Namespace) -> int:
    """Queue depth per stage for the whole deployment: run exactly one of these."""
    settings = _settings(args)
    stopping = asyncio.Event()
    _stop_on_signals(stopping)
    server = metrics.serve(settings.metrics_host, settings.metrics_port)
    try:
        nc = await bus.connect(settings, "jetmedia-collector")
        try:
            metrics.mark_ready(lambda: nc.is_connected)
            url = f"http://{settings.metrics_host}:{server.server_port}/metrics"
            print(f"collector ready; metrics at {url}", flush=True)
            await queue_metrics.run(nc.jetstream(), stopping, settings.queue_poll_interval)
        finally:
            await nc.close()
    finally:
        server.shutdown()
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    url = args.url or f"http://127.0.0.1:{Settings.from_env().metrics_port}/metrics"
    problems = metrics.check_health(url)
    for problem in problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 1 if problems else 0


async def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return await run_demo(_settings(args), Path(args.data_dir))


async def cmd_submit(args: argparse.Namespace) -> int:
    from .client import submit_files

    return await submit_files(_settings(args), [Path(p) for p in args.files], wait=args.wait)


async def cmd_status(args: argparse.Namespace) -> int:
    from .client import show_status

    return await show_status(_settings(args), args.job, follow=args.follow)


async def cmd_cancel(args: argparse.Namespace) -> int:
    from .client import cancel

    return await cancel(_settings(args), args.job)


async def cmd_dlq(args: argparse.Namespace) -> int:
    from .client import list_dead_letters

    return await list_dead_letters(_settings(args), args.stage, args.limit)


def cmd_schemas(args: argparse.Namespace) -> int:
    from shared import schemagen

    out = Path(args.out)
    if args.check:
        changed = schemagen.drift(out)
        if changed:
            print(f"schemas out of date: {', '.join(changed)}; run `jetmedia schemas`", file=sys.stderr)
            return 1
        print("schemas up to date")
        return 0
    for path in schemagen.write(out):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    env_table = "\n".join(f"  {name:<28} {default}" for name, default in settings_help())
    parser = argparse.ArgumentParser(
        prog="jetmedia",
        description="Event-driven media pipeline on NATS JetStream.",
        epilog="configuration (environment variable, default):\n" + env_table,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_dir = os.environ.get("JETMEDIA_DATA_DIR", ".jetmedia")

    up = sub.add_parser("up", help="start the embedded stack and every stage, until Ctrl-C")
    up.add_argument("stages", nargs="*", help="stages to run (default: all)")
    up.add_argument("--data-dir", default=data_dir, help="where nats-server keeps its data (default %(default)s)")
    up.add_argument("--concurrency", type=int, help="handlers in flight per stage")
    up.add_argument("--prometheus", action="store_true", help="also run the locally installed Prometheus on it")
    up.set_defaults(run=cmd_up)

    collector = sub.add_parser("collector", help="export queue depth per stage and JetStream usage (run one)")
    collector.set_defaults(run=cmd_collector)

    health = sub.add_parser("health", help="exit 0 if the jetmedia process on JETMEDIA_METRICS_PORT is ready")
    health.add_argument("--url", help="metrics URL to check (default http://127.0.0.1:$JETMEDIA_METRICS_PORT/metrics)")
    health.set_defaults(run=cmd_health)

    worker = sub.add_parser("worker", help="run stages against JETMEDIA_NATS_URL and JETMEDIA_S3_ENDPOINT")
    every = ", ".join([*stages.STAGE_MODULES, *stages.PERIODIC_MODULES])
    worker.add_argument("stages", nargs="*", help=f"stages to run (default: all of {every})"
                        "; also module:ATTR for a custom Stage")
    worker.add_argument("--concurrency", type=int, help="handlers in flight per stage")
    worker.set_defaults(run=cmd_worker)

    demo = sub.add_parser("demo", help="push sample media through a fresh embedded stack and print the results")
    demo.add_argument("--data-dir", default=os.path.join(data_dir, "demo"), help="scratch directory (wiped)")
    demo.set_defaults(run=cmd_demo)

    submit = sub.add_parser("submit", help="upload files to S3 and start an asset job for each")
    submit.add_argument("files", nargs="+")
    submit.add_argument("--wait", action="store_true", help="draw progress until every job ends")
    submit.set_defaults(run=cmd_submit)

    status = sub.add_parser("status", help="show a job's record")
    status.add_argument("job")
    status.add_argument("--follow", action="store_true", help="keep showing progress until the job ends")
    status.set_defaults(run=cmd_status)

    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job")
    cancel.set_defaults(run=cmd_cancel)

    dlq = sub.add_parser("dlq", help="list dead letters (newest last)")
    dlq.add_argument("--stage", help="only this stage's")
    dlq.add_argument("--limit", type=int, default=50)
    dlq.set_defaults(run=cmd_dlq)

    schemas = sub.add_parser("schemas", help="write JSON Schemas and the AsyncAPI file")
    schemas.add_argument("--out", default="schemas")
    schemas.add_argument("--check", action="store_true", help="exit 1 if the files differ from the code")
    schemas.set_defaults(run=cmd_schemas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"jetmedia: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    result = args.run(args)
    if asyncio.iscoroutine(result):
        try:
            result = asyncio.run(result)
        except KeyboardInterrupt:
            result = 130
        except ConfigError as exc:
            print(f"jetmedia: {exc}", file=sys.stderr)
            return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
