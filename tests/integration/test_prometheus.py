"""Every dashboard panel shows data for a running system.

The stack as compose runs it, on loopback: one `jetmedia worker STAGE` process per registered
stage (the services compose.yaml has), one `jetmedia collector` and one `jetmedia gateway` (asked
a few things over HTTP); a real Prometheus (Debian's
package) with the scrape config derived from grafana/prometheus.yml (only the targets rewritten
to this test's ports); real jobs through the pipeline; then every query of every panel of every
dashboard through Prometheus' HTTP API. A query that returns nothing, or only NaN, fails the
test and is named.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services import samples, stages
from shared import bus, promlocal
from shared import messages as m
from shared.config import Settings
from shared.devstack import EmbeddedStack, free_port
from shared.runtime import Services
from tests.gatewaykit import tokens_setting
from tests.helpers import asset_event, eventually, export_event, settings_env

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
STAGES = (*stages.STAGE_MODULES, *getattr(stages, "PERIODIC_MODULES", {}))  # one process each, as in compose
FLOW = ("upload", "variant", "chunk", "finalize")  # what the jobs below go through
# Grafana's built-in variables, as Grafana would expand them for a "last 5 minutes" view with
# a 1 s scrape interval. `$stage` gets the dashboard's own "All" value.
BUILTINS = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}


class Process:
    """A jetmedia process of the stack, logging to a file, stopped by its PID."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.out = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", *args], env=env,
                                     stdout=self.out, stderr=subprocess.STDOUT)

    def metrics_address(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(rb"metrics at http://([\d.]+:\d+)/metrics", self.log.read_bytes())
            if found:
                return found.group(1).decode()
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.proc.args} did not become ready:\n{self.log.read_text()[-3000:]}")

    def serving(self, port: int, timeout: float = 60.0) -> str:
        """host:port once the process answers /healthz there (the gateway: its metrics are on the API port)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    return f"127.0.0.1:{port}"
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"{self.proc.args} did not serve on {port}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()
        return self.proc.returncode


@pytest.fixture
def reader() -> tuple[str, str]:
    """JETMEDIA_GATEWAY_TOKENS with one read-only token, and that token."""
    setting, tokens, _names = tokens_setting({"reader": {"scopes": ["read"]}})
    return setting, tokens["reader"]


@pytest.fixture
def stack_processes(services: Services, settings: Settings, tmp_path: Path,
                    reader: tuple[str, str]) -> Iterator[dict[str, str]]:
    """job name in prometheus.yml -> host:port of its /metrics, for every process started."""
    env = {**os.environ, **settings_env(settings), "JETMEDIA_METRICS_PORT": "0",
           "JETMEDIA_QUEUE_POLL_INTERVAL": "0.5", "JETMEDIA_CONCURRENCY": "2"}
    processes = {stage: Process(["worker", stage], env, tmp_path / f"{stage}.log") for stage in STAGES}
    processes["collector"] = Process(["collector"], env, tmp_path / "collector.log")
    gateway_port = free_port()  # its /metrics is on the API's own port, as compose scrapes it
    processes["gateway"] = Process(["gateway"], {**env, "JETMEDIA_GATEWAY_PORT": str(gateway_port),
                                                 "JETMEDIA_GATEWAY_TOKENS": reader[0]}, tmp_path / "gateway.log")
    try:
        yield {job: process.metrics_address() if job != "gateway" else process.serving(gateway_port)
               for job, process in processes.items()}
        codes = {job: process.stop() for job, process in processes.items()}
        assert codes == dict.fromkeys(processes, 0), "SIGTERM should drain and exit 0"
    finally:
        for process in processes.values():
            process.stop()


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) for every target of every panel, rows included."""
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        panels = [p for top in dash["panels"] for p in [top, *top.get("panels", [])]]
        variables = {f"${v['name']}": v.get("allValue") or ".+" for v in dash["templating"]["list"]}
        for panel in panels:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for name, replacement in sorted({**BUILTINS, **variables}.items(), key=lambda kv: -len(kv[0])):
                    expr = expr.replace(name, replacement)
                out.append((path.name, panel["title"], expr))
    return out


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def has_data(result: dict[str, Any]) -> bool:
    if result["resultType"] == "vector":
        values = [float(sample["value"][1]) for sample in result["result"]]
    elif result["resultType"] == "scalar":
        values = [float(result["result"][1])]
    else:
        values = [float(v[1]) for series in result["result"] for v in series.get("values", [])]
    return any(math.isfinite(v) for v in values)


def test_every_dashboard_query_is_unique_and_uses_no_unknown_variable() -> None:
    queries = dashboard_queries()
    assert len(DASHBOARDS) >= 2 and len(queries) >= 20
    for dashboard, title, expr in queries:
        assert "$" not in expr, f"{dashboard} / {title}: unexpanded variable in {expr}"


async def test_prometheus_gets_data_for_every_panel(
    services: Services, stack_processes: dict[str, str], stack: EmbeddedStack, tmp_path: Path,
    reader: tuple[str, str],
) -> None:
    assert promlocal.binary(), "prometheus is not installed: run `make sysdeps` (Debian package `prometheus`)"
    port = free_port()
    assert stack.s3  # the S3 server's own metrics, as compose's `seaweedfs` job scrapes them
    targets = {**{job: [address] for job, address in stack_processes.items()}, "prometheus": [f"127.0.0.1:{port}"],
               "seaweedfs": [f"127.0.0.1:{stack.s3.ports['metricsPort']}"]}
    config = promlocal.derive_config(promlocal.load_source(), targets, scrape_interval="1s")
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)  # every job we run is in the file

    with promlocal.LocalPrometheus(tmp_path / "prometheus", config, port=port) as prom:
        async def all_targets_up() -> bool:
            data = await asyncio.to_thread(api, prom.url, "query", query="up")
            return {s["metric"]["job"] for s in data["result"] if s["value"][1] == "1"} == set(targets)

        await eventually(all_targets_up, timeout=60, every=0.5)

        # Real jobs: three photos, one file that is not an image (a failure and a dead letter),
        # and an export of the three photos as one ZIP.
        photos = [f"uploads/p{i}.jpg" for i in range(3)]
        for i, key in enumerate(photos):
            await services.storage.put_bytes(key, samples.photo(800, 600, seed=i))
            await bus.publish(services.js, m.UPLOAD_ASSET, asset_event(key, event_id=f"prom-{i}"))
        await services.storage.put_bytes("uploads/bad.jpg", b"definitely not a JPEG")
        await bus.publish(services.js, m.UPLOAD_ASSET, asset_event("uploads/bad.jpg", event_id="prom-bad"))
        await bus.publish(services.js, m.UPLOAD_EXPORT, export_event("prom-export", keys=photos))
        expected = {"prom-0": "ready", "prom-1": "ready", "prom-2": "ready", "prom-bad": "failed",
                    "prom-export": "ready"}

        async def done() -> dict[str, str] | None:
            jobs = {j: await services.jobs.get(j) for j in expected}
            if all(job is not None and job.final for job in jobs.values()):
                return {j: str(job.status) for j, job in jobs.items() if job}
            return None

        assert await eventually(done, timeout=90, every=0.2) == expected

        async def prometheus_saw_it() -> bool:
            ok = await asyncio.to_thread(
                api, prom.url, "query", query='sum(jetmedia_messages_total{stage="finalize",outcome="ok"})')
            export = await asyncio.to_thread(
                api, prom.url, "query", query='sum(jetmedia_job_seconds_count{kind="export"})')
            dlq = await asyncio.to_thread(api, prom.url, "query", query='max(jetmedia_dlq_messages{stage="upload"})')
            return bool(ok["result"] and float(ok["result"][0]["value"][1]) >= 4
                        and export["result"] and float(export["result"][0]["value"][1]) >= 1
                        and dlq["result"] and float(dlq["result"][0]["value"][1]) >= 1)

        gateway = f"http://{stack_processes['gateway']}"  # what the HTTP panels show: a few reads

        def ask_the_gateway() -> None:
            for path in ("/v1/jobs?limit=5", "/v1/jobs/prom-0", "/healthz"):
                request = urllib.request.Request(gateway + path, headers={"Authorization": f"Bearer {reader[1]}"})
                with urllib.request.urlopen(request, timeout=10) as resp:
                    assert resp.status == 200, (path, resp.status)

        await asyncio.to_thread(ask_the_gateway)
        await eventually(prometheus_saw_it, timeout=30, every=0.5)
        await asyncio.to_thread(ask_the_gateway)  # again inside the last rate() window
        await asyncio.sleep(2)  # a couple more scrapes, so every rate() window holds the movement

        empty = []
        queries = dashboard_queries()
        for dashboard, title, expr in queries:
            result = await asyncio.to_thread(api, prom.url, "query", query=expr)
            if not has_data(result):
                empty.append(f"{dashboard} / {title}: {expr} -> {result['result']}")
        assert not empty, "panels without data:\n" + "\n".join(empty)

        for path in DASHBOARDS:
            for variable in json.loads(path.read_text())["templating"]["list"]:
                found = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
                assert found, variable
                values = await asyncio.to_thread(api, prom.url, f"label/{found[2]}/values", **{"match[]": found[1]})
                assert set(FLOW) <= set(values), (path.name, variable["name"], values)

    # the compose health check, against a real worker and against nothing
    def health(url: str) -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "services.cli", "health", "--url", url]
        return subprocess.run(command, capture_output=True, timeout=60, check=False)

    ok = await asyncio.to_thread(health, f"http://{stack_processes['variant']}/metrics")
    assert ok.returncode == 0, ok.stderr
    down = await asyncio.to_thread(health, f"http://127.0.0.1:{free_port()}/metrics")
    assert down.returncode == 1 and b"unreachable" in down.stderr
