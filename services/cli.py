"""`jetmedia` — the composition root: wires stages to the stack and gives people commands.

    jetmedia up              embedded stack (nats-server, local S3) + every stage, until Ctrl-C
    jetmedia demo            the embedded stack, sample media through every stage, results, exit
    jetmedia worker [STAGE]  run stages against JETMEDIA_NATS_URL / JETMEDIA_S3_ENDPOINT (compose)
    jetmedia collector       export queue depth and JetStream usage (one per deployment)
    jetmedia gateway         the HTTP API (uploads, jobs, live progress, S3 hooks) on JETMEDIA_GATEWAY_PORT
    jetmedia health          exit 0 when this host's jetmedia process is ready (compose health checks)
    jetmedia submit FILE...  upload files and start an asset job each (--wait draws progress bars)
    jetmedia export KEY...   one ZIP of many objects (--prefix, --wait prints the URL)
    jetmedia status JOB      a job's record (--follow until it ends)
    jetmedia jobs            job records, newest first (--status, --kind, --limit)
    jetmedia events          the events stream (--follow, --job, --since)
    jetmedia cancel JOB      cancel a job; running work stops at the next boundary
    jetmedia dlq [show ID]   dead letters, newest first; one whole, with its original message
    jetmedia dlq replay|purge  re-publish dead letters' originals / remove letters (--stage, --job, --since)
    jetmedia retry JOB       run a failed or cancelled job again from its dead letters
    jetmedia schemas         write schemas/*.json and schemas/asyncapi.yaml (--check: fail on drift)

People's commands (submit ... dlq) print data on stdout (`--json`: JSON, field names as in the
schemas) and messages on stderr. Exit codes: 0 ok, 1 a job failed (or is not there), 2 usage or
configuration, 3 NATS or S3 cannot be reached (within JETMEDIA_CONNECT_TIMEOUT), 130 interrupted.
No traceback reaches a person: `-v/--debug` shows it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import botocore.exceptions
import nats.errors
import nats.js.errors

from shared import bus, logs, metrics, queue_metrics
from shared.config import ConfigError, Settings, settings_help
from shared.devstack import EmbeddedStack
from shared.exportplan import TRANSFORM_EXTENSIONS
from shared.runtime import Services, run_stages
from shared.storage import Storage, StorageUnreachable

from . import stages
from .client import JOB_STATUSES, JobNotFound, UsageError

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
    held = contextlib.ExitStack()
    try:
        held.enter_context(_data_dir_lock(data_dir))
        await asyncio.to_thread(stack.start)
    except (OSError, RuntimeError) as exc:  # a binary missing, a server that would not start: one line, exit 2
        held.close()
        raise ConfigError(f"the embedded stack did not start: {exc}") from None
    except ConfigError:
        held.close()
        raise
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
        held.close()


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """One embedded stack per data dir: a second `up` on a running one's started a second
    nats-server on its JetStream files, then failed with "weed did not start; see weed.log",
    having overwritten the running weed's log. The lock goes with the process, however it ends."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    lock = (data_dir / "up.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        raise ConfigError(f"{data_dir} is in use by another jetmedia up{f' (pid {holder})' if holder else ''}; "
                          "stop it, or give this one its own --data-dir") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    try:
        yield
    finally:
        lock.close()


async def serve_stages(
    settings: Settings, names: Sequence[str], stopping: asyncio.Event, *, ready: str = "", collect: bool = False,
    create_bucket: bool = False,
) -> None:
    """Run stages in this process until `stopping`; metrics endpoint alongside (and the queue
    collector with `collect`, for the single-process stack). S3 is checked first: a wrong
    endpoint, secret or bucket stops here with one line (exit 2), not as a dead letter per message."""
    check_stage_names(names)
    if stopping.is_set():  # Ctrl-C while `up` started its stack: stop now, not after starting every stage
        return
    periodic = [n for n in names if n in stages.PERIODIC_MODULES] if names else list(stages.PERIODIC_MODULES)
    chosen = [stages.load(n) for n in names if n not in stages.PERIODIC_MODULES] if names else stages.load_all()
    for stage in chosen:
        stage.check_settings(settings)
    async with Storage(settings) as storage:  # before NATS: an S3 mistake is reported at once
        await storage.check(create=create_bucket)
    server = serve_metrics(settings)
    try:
        async with Services.open(settings, name=f"jetmedia-{'+'.join(s.name for s in chosen)}") as services:
            metrics.mark_ready(lambda: services.nc.is_connected)
            collector = (
                asyncio.create_task(queue_metrics.run(services.js, stopping, settings.queue_poll_interval))
                if collect else None
            )
            if ready and not stopping.is_set():  # Ctrl-C while it started: no banner of a stack that stops
                print(ready.format(metrics=f"http://{settings.metrics_host}:{server.server_port}/metrics"), flush=True)
            loops = [asyncio.create_task(stages.load_periodic(n)(services, stopping)) for n in periodic]
            await run_stages(services, chosen, stopping)
            await asyncio.gather(*loops)
            if collector:
                await collector
    finally:
        server.shutdown()


def check_stage_names(names: Sequence[str]) -> None:
    """Unknown stage names stop here with the whole list (exit 2), not as a KeyError."""
    known = [*stages.STAGE_MODULES, *stages.PERIODIC_MODULES]
    for name in names:
        if ":" not in name and name not in known:
            raise ConfigError(f"unknown stage {name!r}; known: {', '.join(known)} (or module:ATTR for a custom Stage)")


def serve_metrics(settings: Settings):  # type: ignore[no-untyped-def]
    """The /metrics endpoint; a port in use is a configuration problem with a named fix."""
    try:
        return metrics.serve(settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {exc.strerror or exc}; "
            "set JETMEDIA_METRICS_PORT to a free port (0 = any free port)") from None


# --- commands ---------------------------------------------------------------------------


async def cmd_up(args: argparse.Namespace) -> int:
    check_stage_names(args.stages)  # before the stack starts (3 s), not after
    settings = _settings(args)
    stopping = asyncio.Event()
    _stop_on_signals(stopping)
    async with embedded(settings, Path(args.data_dir)) as (stack, local), \
            _local_prometheus(args, local, Path(args.data_dir)) as (local, prometheus_line), \
            _local_gateway(local, Path(args.data_dir)) as gateway_line:
        assert stack.nats and stack.s3
        banner = (
            f"jetmedia is up\n  NATS     {stack.nats.url}\n  S3       {stack.s3.url}  (bucket {local.bucket})\n"
            "  metrics  {metrics}\n" + prometheus_line.replace("{", "{{").replace("}", "}}")
            + gateway_line.replace("{", "{{").replace("}", "}}")
            + _producer_line(stack).replace("{", "{{").replace("}", "}}")
            + "Point other processes here with:\n"
            + "".join(f"  export {k}={v}\n" for k, v in stack.env().items())
            + "Ctrl-C stops everything."
        )
        await serve_stages(local, args.stages, stopping, ready=banner, collect=True, create_bucket=True)
    return 0


def _producer_line(stack: EmbeddedStack) -> str:
    """The NATS credentials for systems that submit media (may publish jetmedia.upload.* and its lanes, read
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
    check_stage_names(args.stages)
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
    server = serve_metrics(settings)
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


@contextlib.asynccontextmanager
async def _local_gateway(settings: Settings, data_dir: Path) -> AsyncIterator[str]:
    """`up` serves the HTTP API too: on JETMEDIA_GATEWAY_PORT, or any free port when that one is
    taken (several stacks on one machine); with no JETMEDIA_GATEWAY_TOKENS, a token of this data
    directory (every scope) that the banner shows."""
    from services.gateway import auth, server
    from shared.devstack import free_port

    tokens = auth.load_tokens(settings)
    line_token = ""
    if not tokens:
        token = auth.local_token(data_dir)
        tokens = auth.local_tokens(settings, token)
        line_token = f"; token {token} (every scope)"
    if settings.gateway_port and not server.port_free(settings.gateway_host, settings.gateway_port):
        settings = settings.replace(gateway_port=free_port())
    stopping = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(server.serve(settings, stopping, tokens=tokens, on_ready=ready.set_result))
    try:
        await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        if not ready.done():
            await task  # raises why it did not start
        yield f"  gateway  {ready.result()}  (HTTP API, job page, docs at /docs{line_token})\n"
    finally:
        stopping.set()
        await task


async def cmd_gateway(args: argparse.Namespace) -> int:
    """The HTTP gateway (services/gateway); `gateway token NAME` makes an API token."""
    from services.gateway import auth, server

    if args.action == "token":
        if not re.fullmatch(auth.TOKEN_NAME, args.name):  # the gateway would refuse the entry at its next start
            raise UsageError(f"token name {args.name!r}: letters, digits, - and _ only (at most 64)")
        token = auth.new_token()
        scopes = [part.strip() for part in args.scopes.split(",") if part.strip()]
        unknown = sorted(set(scopes) - set(auth.SCOPES))
        if unknown:
            raise UsageError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(auth.SCOPES)}")
        print(f"token (shown once; give it to the client): {token}", file=sys.stderr)
        print(auth.token_entry(args.name, token, scopes, args.prefix))
        return 0
    settings = _settings(args)
    stopping = asyncio.Event()
    _stop_on_signals(stopping)
    await server.serve(settings, stopping, on_ready=lambda url: print(f"gateway ready on {url}", flush=True))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the process on `url` says it is ready; a `--url` that is not http(s) is a usage
    error, and a page that is not Prometheus text (the gateway's /docs) is unhealthy, not a crash."""
    url = args.url or f"http://127.0.0.1:{Settings.from_env().metrics_port}/metrics"
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {url!r}: give the metrics URL, e.g. http://127.0.0.1:9464/metrics")
    try:
        problems = metrics.check_health(url)
    except ValueError as exc:  # prometheus_client's parser: "invalid metric name:<!doctype html>"
        problems = [f"{url} does not answer with Prometheus metrics ({_shorten(str(exc), 60)})"]
    for problem in problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 1 if problems else 0


async def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return await run_demo(_settings(args), Path(args.data_dir))


async def cmd_submit(args: argparse.Namespace) -> int:
    from .client import submit_files

    return await submit_files(
        _settings(args), [Path(p) for p in args.files], wait=args.wait, as_json=args.json,
        presets=args.preset or None, job_id=args.job_id, key=args.key, bucket=args.bucket,
        priority=args.priority, callback_url=args.callback_url,
    )


async def cmd_export(args: argparse.Namespace) -> int:
    from .client import start_export

    return await start_export(
        _settings(args), args.keys, prefix=args.prefix, name=args.name, transform=args.transform,
        job_id=args.job_id, bucket=args.bucket, wait=args.wait, as_json=args.json,
        priority=args.priority, callback_url=args.callback_url,
    )


async def cmd_status(args: argparse.Namespace) -> int:
    from .client import show_status

    return await show_status(_settings(args), args.job, follow=args.follow, as_json=args.json)


async def cmd_jobs(args: argparse.Namespace) -> int:
    from .client import list_jobs

    return await list_jobs(_settings(args), status=args.status, kind=args.kind, limit=args.limit, as_json=args.json)


async def cmd_events(args: argparse.Namespace) -> int:
    from .client import show_events

    return await show_events(_settings(args), follow=args.follow, job=args.job, since=args.since, limit=args.limit,
                             as_json=args.json)


async def cmd_cancel(args: argparse.Namespace) -> int:
    from .client import cancel

    return await cancel(_settings(args), args.job, as_json=args.json)


async def cmd_dlq(args: argparse.Namespace) -> int:
    from .client import list_dead_letters, show_dead_letter

    if args.action == "show":
        return await show_dead_letter(_settings(args), args.id, as_json=args.json)
    if args.action in ("replay", "purge", "retry"):
        return await _dlq_act(args)
    return await list_dead_letters(_settings(args), args.stage, args.limit, as_json=args.json)


async def _dlq_act(args: argparse.Namespace) -> int:
    """`dlq replay|purge` and `retry JOB` (issue 12): shared/dlq.py does the work."""
    from shared import dlq

    from .client import connected, emit_json, job_id_arg, parse_since

    job = job_id_arg(args.job) if getattr(args, "job", None) else None
    which = dlq.Which(stage=getattr(args, "stage", None), job=job,
                      since=parse_since(args.since) if getattr(args, "since", None) else None)
    if args.action == "purge" and not (which.stage or which.job or which.since or args.all):
        raise UsageError("dlq purge removes letters for good: name them with --stage, --job or --since, "
                         "or pass --all")
    async with connected(_settings(args)) as services:
        if args.action == "purge":
            removed = await dlq.purge(services, which)
            emit_json({"purged": removed}) if args.json else print(f"{removed} dead letter(s) removed")
            return 0
        if args.action == "retry":
            try:
                done = await dlq.retry(services, args.job)
            except LookupError as exc:  # a job cancelled while it ran has no letters: say how from here
                raise JobNotFound(f"{exc} (from here: jetmedia submit FILE --job-id {args.job}, or jetmedia "
                                  f"export ... --job-id {args.job})") from None
        else:
            done = await dlq.replay(services, which)
    if args.json:
        emit_json({"replayed": done.replayed, "skipped": [{"id": i, "why": why} for i, why in done.skipped]})
    else:
        for letter_id in done.replayed:
            print(f"replayed {letter_id}")
        for letter_id, why in done.skipped:
            print(f"skipped {letter_id}: {why}", file=sys.stderr)
        print(f"{len(done.replayed)} replayed, {len(done.skipped)} skipped")
    return 0 if done.replayed or not done.skipped else 1


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


async def cmd_webhooks(args: argparse.Namespace) -> int:
    """`jetmedia webhooks test URL`: one signed sample event through the same checks and client
    as the notify stage; prints the answer. Exit 0 on 2xx, 1 otherwise (2 if it may not be sent)."""
    from .notify import send_sample, signing

    settings = _settings(args)
    secret = args.secret or settings.webhook_secret
    if not secret:
        raise ConfigError("no secret to sign with: pass --secret whsec_... or set JETMEDIA_WEBHOOK_SECRET")
    try:
        signing.check(secret)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    answer = await send_sample(settings, args.url, secret)
    if answer.refused:
        raise ConfigError(f"{args.url}: {answer.error}")
    shown = f"HTTP {answer.status}" if answer.status is not None else answer.error
    print(f"{args.url}: {shown} in {answer.seconds * 1000:.0f} ms")
    if answer.body:
        print(answer.body)
    return 0 if answer.status is not None and 200 <= answer.status < 300 else 1


def count(least: int) -> Callable[[str], int]:
    """`--limit N`: a whole number of at least `least`, else argparse's usage line and exit 2
    (`jobs --limit 0` died of an IndexError, a negative limit printed an empty table as if none)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is less than {least}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    env_table = "\n".join(f"  {name:<28} {default}" for name, default in settings_help())
    parser = argparse.ArgumentParser(
        prog="jetmedia",
        description="Event-driven media pipeline on NATS JetStream.",
        epilog="exit codes: 0 ok, 1 a job failed (or is not there), 2 usage or configuration, "
               "3 NATS or S3 unreachable, 130 interrupted\n\nconfiguration (environment variable, default):\n"
               + env_table,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jetmedia {_version()}")
    parser.add_argument("-v", "--debug", action="store_true", help="debug logs, and a traceback with any error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON (field names as in schemas/) instead")
    as_json_too = argparse.ArgumentParser(add_help=False)  # a sub-action's copy: `dlq --json show ID` keeps it
    as_json_too.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead")
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("-v", "--debug", action="store_true", default=argparse.SUPPRESS,
                       help="debug logs, and a traceback with any error")
    data_dir = os.environ.get("JETMEDIA_DATA_DIR", ".jetmedia")

    up = sub.add_parser("up", help="start the embedded stack and every stage, until Ctrl-C")
    up.add_argument("stages", nargs="*", help="stages to run (default: all)")
    up.add_argument("--data-dir", default=data_dir, help="where nats-server keeps its data (default %(default)s)")
    up.add_argument("--concurrency", type=int, help="handlers in flight per stage")
    up.add_argument("--prometheus", action="store_true", help="also run the locally installed Prometheus on it")
    up.set_defaults(run=cmd_up)

    collector = sub.add_parser("collector", help="export queue depth per stage and JetStream usage (run one)")
    collector.set_defaults(run=cmd_collector)

    gateway = sub.add_parser("gateway", help="serve the HTTP API on JETMEDIA_GATEWAY_HOST:PORT until Ctrl-C")
    gateway.set_defaults(run=cmd_gateway, action="serve")
    gateway_actions = gateway.add_subparsers(dest="action", metavar="ACTION")
    token = gateway_actions.add_parser("token", help="make an API token: prints it once, and its "
                                                     "JETMEDIA_GATEWAY_TOKENS entry (hashed) on stdout")
    token.add_argument("name", help="the token's name (letters, digits, - and _): keys its rate limit and quota")
    token.add_argument("--scopes", default="submit,read", help="comma-separated: submit, read, cancel, admin, hook "
                                                                "(default %(default)s)")
    token.add_argument("--prefix", default="", help="S3 key prefix the token is limited to")

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

    people = [as_json, debug]
    routing = argparse.ArgumentParser(add_help=False)
    routing.add_argument("--priority", choices=["interactive", "bulk"],
                         help="the job's lane (default: interactive for assets, bulk for exports)")
    routing.add_argument("--callback-url", metavar="URL",
                         help="POST the job's final event here, signed (README: Webhooks)")
    submit = sub.add_parser("submit", parents=[*people, routing],
                            help="upload files to S3 and start an asset job for each",
                            epilog="a file whose name starts with '-': jetmedia submit --wait -- -x.jpg")
    submit.add_argument("files", nargs="+", metavar="FILE")
    submit.add_argument("--wait", action="store_true", help="draw progress until every job ends (exit 1 if one fails)")
    submit.add_argument("--preset", action="append", metavar="NAME",
                        help="variant preset to make (repeat; default: every configured one)")
    submit.add_argument("--job-id", help="the job id (one file; default: derived from the event id)")
    submit.add_argument("--key", help="the S3 key to upload to (one file; default: uploads/<random>/<file name>)")
    submit.add_argument("--bucket", help="the bucket to upload to (default: JETMEDIA_BUCKET)")
    submit.set_defaults(run=cmd_submit)

    export = sub.add_parser("export", parents=[*people, routing], help="start an export: one ZIP of many objects")
    export.add_argument("keys", nargs="*", metavar="KEY", help="objects to export, in this order")
    export.add_argument("--prefix", help="also every object under this prefix")
    export.add_argument("--name", help="archive file name without .zip (default: export-<job>)")
    export.add_argument("--transform", default="original", choices=list(TRANSFORM_EXTENSIONS),
                        help="per-file transform (default: %(default)s)")
    export.add_argument("--job-id", help="the job id (default: derived from the event id)")
    export.add_argument("--bucket", help="where the objects are (default: JETMEDIA_BUCKET)")
    export.add_argument("--wait", action="store_true", help="draw progress, then print the download URL")
    export.set_defaults(run=cmd_export)

    job_help = "the job id, as `submit` and `jobs` print it"
    status = sub.add_parser("status", parents=people, help="show a job's record",
                            epilog="exit 1 when the job failed or is not there")
    status.add_argument("job", help=job_help)
    status.add_argument("--follow", action="store_true",
                        help="show progress until the job ends (--json: one line per change)")
    status.set_defaults(run=cmd_status)

    jobs = sub.add_parser("jobs", parents=people, help="list job records, newest first")
    jobs.add_argument("--status", choices=JOB_STATUSES)
    jobs.add_argument("--kind", choices=["asset", "export"])
    jobs.add_argument("--limit", type=count(1), default=50, help="at most this many (default %(default)s)")
    jobs.set_defaults(run=cmd_jobs)

    events = sub.add_parser("events", parents=people, help="show the events stream (ready, failed, ...)")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events until Ctrl-C")
    events.add_argument("--job", help="only this job's events")
    events.add_argument("--since", help="from this time (ISO, UTC) or age (90s, 15m, 2h, 1d)")
    events.add_argument("--limit", type=count(0), default=20, help="past events to show (default %(default)s)")
    events.set_defaults(run=cmd_events)

    cancel = sub.add_parser("cancel", parents=people, help="cancel a job",
                            epilog="exit 1 when the job had ended already or is not there")
    cancel.add_argument("job", help=job_help)
    cancel.set_defaults(run=cmd_cancel)

    dlq = sub.add_parser("dlq", parents=people, help="list dead letters (newest first); `dlq show ID` for one")
    dlq.add_argument("--stage", help="only this stage's")
    dlq.add_argument("--limit", type=count(1), default=50, help="the newest this many (default %(default)s)")
    dlq.set_defaults(run=cmd_dlq, action="list")
    dlq_actions = dlq.add_subparsers(dest="action", metavar="ACTION")
    dlq_show = dlq_actions.add_parser("show", parents=[as_json_too, debug],
                                      help="one dead letter whole, with its original message")
    dlq_show.add_argument("id", help="the letter id, as `jetmedia dlq` lists it (dlq:STREAM:SEQ)")
    for action, text in (("replay", "re-publish the originals (new msg id) and remove the letters"),
                         ("purge", "remove dead letters")):
        act = dlq_actions.add_parser(action, parents=[as_json_too, debug], help=text)
        act.add_argument("--stage", help="only this stage's")
        act.add_argument("--job", help="only this job's")
        act.add_argument("--since", help="only newer: an ISO time (UTC) or an age (90s, 15m, 2h, 1d)")
        if action == "purge":
            act.add_argument("--all", action="store_true", help="every dead letter (needed when no filter is given)")

    retry = sub.add_parser("retry", parents=people, help="run a failed or cancelled job again from its dead letters")
    retry.add_argument("job", help=job_help)
    retry.set_defaults(run=cmd_dlq, action="retry")

    schemas = sub.add_parser("schemas", help="write JSON Schemas and the AsyncAPI file")
    schemas.add_argument("--out", default="schemas")
    schemas.add_argument("--check", action="store_true", help="exit 1 if the files differ from the code")
    schemas.set_defaults(run=cmd_schemas)

    webhooks = sub.add_parser("webhooks", help="signed webhooks (README \"Webhooks\"): `webhooks test URL`")
    webhook_actions = webhooks.add_subparsers(dest="action", metavar="ACTION", required=True)
    webhook_test = webhook_actions.add_parser("test", help="POST one signed sample event to URL, print the answer")
    webhook_test.add_argument("url")
    webhook_test.add_argument("--secret", help="whsec_... to sign with (default: JETMEDIA_WEBHOOK_SECRET)")
    webhooks.set_defaults(run=cmd_webhooks)
    return parser


PEOPLE_COMMANDS = frozenset({"submit", "export", "status", "jobs", "events", "cancel", "dlq", "retry"})
NATS_DOWN = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
             nats.errors.ConnectionReconnectingError, nats.errors.StaleConnectionError,
             nats.errors.NoServersError, nats.js.errors.ServiceUnavailableError)
S3_DOWN = (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
           botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectionClosedError)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jetmedia")
    except PackageNotFoundError:
        return "0.1.0"


def _log_level(args: argparse.Namespace, settings: Settings) -> str:
    """Services log at JETMEDIA_LOG_LEVEL; people's commands only warnings (their output is the
    answer), unless -v/--debug."""
    if getattr(args, "debug", False):
        return "DEBUG"
    level = settings.log_level
    if args.command in PEOPLE_COMMANDS and logs.level_of(level) < logging.WARNING:
        return "WARNING"
    return level


def _fail(message: str, code: int, debug: bool) -> int:
    """The one line a person sees (the traceback first with --debug)."""
    if debug:
        import traceback

        traceback.print_exc()
    print(f"jetmedia: {message}", file=sys.stderr, flush=True)
    return code


def _reader_gone() -> int:
    """The reader of our output left (`jetmedia jobs | head -1`): stop quietly with 141, as `git log
    | head` does (SIGPIPE), not "unexpected error: BrokenPipeError"; stdout goes to /dev/null so the
    interpreter's last flush does not complain either."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _nats_where() -> str:
    from shared.config import _strip_userinfo

    return _strip_userinfo(os.environ.get("JETMEDIA_NATS_URL") or Settings().nats_url)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        settings = Settings.from_env()
        logs.setup(_log_level(args, settings))
        result = args.run(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        sys.stdout.flush()  # here, not at exit: a reader gone (`| head`) is caught below
        return int(result or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()
    except (bus.Unreachable, StorageUnreachable) as exc:
        return _fail(str(exc), 3, debug)
    except (ConfigError, UsageError) as exc:
        return _fail(str(exc), 2, debug)
    except ValueError as exc:
        if "JETMEDIA_" in str(exc):  # Settings.from_env: a setting of the wrong type
            return _fail(str(exc), 2, debug)
        return _fail(f"unexpected error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1, debug)
    except JobNotFound as exc:
        return _fail(str(exc), 1, debug)
    except nats.js.errors.NotFoundError as exc:  # `events`, `dlq` on a NATS no jetmedia stage has set up
        what = getattr(exc, "description", None) or "not found"
        return _fail(f"NATS at {_nats_where()}: {what}; no jetmedia stage has made its streams there yet "
                     "(`jetmedia worker` or `up` does), or JETMEDIA_NATS_URL names another server", 2, debug)
    except NATS_DOWN as exc:
        cause = str(exc).strip() or type(exc).__name__
        return _fail(f"NATS at {_nats_where()} did not answer ({cause}); is it running, with JetStream?", 3, debug)
    except S3_DOWN as exc:
        return _fail(f"S3 did not answer: {str(exc).splitlines()[0]}", 3, debug)
    except Exception as exc:
        if isinstance(exc, OSError) and exc.filename:  # a path of ours (--out, --data-dir, a file): exit 2, named
            return _fail(f"{exc.filename}: {exc.strerror or exc}", 2, debug)
        return _fail(f"unexpected error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1, debug)


if __name__ == "__main__":
    sys.exit(main())
