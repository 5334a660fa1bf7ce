"""A local Prometheus for `jetmedia up --prometheus` and the dashboard tests.

Runs whatever `prometheus` binary is installed (Debian's package, a release tarball) on loopback,
with a config derived from grafana/prometheus.yml: the production file names compose services
(`dns_sd_configs: [{names: [variant]}]`); here each kept job gets static loopback targets
instead. Stopped by the PID we started, like every server in shared/devstack.py.
"""

from __future__ import annotations

import copy
import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .devstack import LOCAL, _stop, start_http_process

log = logging.getLogger("jetmedia.prometheus")

PROMETHEUS_YML = Path(__file__).resolve().parent.parent / "grafana" / "prometheus.yml"


def binary() -> str | None:
    return shutil.which("prometheus")


def derive_config(
    source: dict[str, Any], targets: dict[str, list[str]], scrape_interval: str | None = None
) -> dict[str, Any]:
    """`source` with every scrape job in `targets` pointed at those host:port targets and every
    other job dropped (its service is not running here). Paths, relabelling and the rest of each
    job stay as written, so what is tested is the production file."""
    config = copy.deepcopy(source)
    kept = []
    for job in config.get("scrape_configs", []):
        name = job["job_name"]
        if name not in targets:
            continue
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": list(targets[name])}]
        if scrape_interval:
            job["scrape_interval"] = scrape_interval
            job.pop("scrape_timeout", None)
        kept.append(job)
    config["scrape_configs"] = kept
    if scrape_interval:
        config.setdefault("global", {}).update(scrape_interval=scrape_interval, evaluation_interval=scrape_interval)
        config["global"].pop("scrape_timeout", None)
    return config


def load_source(path: Path = PROMETHEUS_YML) -> dict[str, Any]:
    """The production file; its rule files (relative to it) made absolute, so a copy elsewhere loads them."""
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    if loaded.get("rule_files"):
        loaded["rule_files"] = [str((path.parent / rule).resolve()) for rule in loaded["rule_files"]]
    return loaded


@dataclass
class LocalPrometheus:
    """One prometheus process on 127.0.0.1 with its own data dir."""

    data_dir: Path
    config: dict[str, Any]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCAL}:{self.port}"

    def start(self, timeout: float = 30.0) -> LocalPrometheus:
        exe = binary()
        if exe is None:
            raise FileNotFoundError("prometheus not found on PATH (Debian: apt-get install prometheus)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_file = self.data_dir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.proc, self.port = start_http_process(
            lambda port: [exe, f"--config.file={config_file}", f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                          f"--web.listen-address={LOCAL}:{port}"],
            lambda port: f"http://{LOCAL}:{port}/-/ready", self.data_dir / "prometheus.log", timeout, self.port,
        )
        log.info("prometheus on %s", self.url)
        return self

    def stop(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
