"""grafana/alerts.yml is valid, loaded by grafana/prometheus.yml, and fires when it should
(`promtool test rules` evaluates it on synthetic series, no server needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"


def promtool(*args: str, cwd: Path = GRAFANA) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: run `make sysdeps` (Debian package `prometheus`)"
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False)


def test_prometheus_config_loads_the_alert_rules() -> None:
    assert yaml.safe_load((GRAFANA / "prometheus.yml").read_text())["rule_files"] == ["alerts.yml"]
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0 and "1 rules found" in checked.stdout, checked.stdout + checked.stderr


def test_dependency_down_fires_after_two_minutes_of_an_open_breaker_and_not_for_a_blip(tmp_path: Path) -> None:
    tests = {
        "rule_files": [str(GRAFANA / "alerts.yml")],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [
                # S3 down from minute 1 on in one process; a 30 s NATS blip in another
                {"series": 'jetmedia_dependency_up{dependency="s3", instance="variant-1"}', "values": "1x3 0x20"},
                {"series": 'jetmedia_dependency_up{dependency="s3", instance="variant-2"}', "values": "1x24"},
                {"series": 'jetmedia_dependency_up{dependency="nats", instance="variant-1"}', "values": "1x3 0x1 1x19"},
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "JetmediaDependencyDown", "exp_alerts": []},
                {"eval_time": "4m", "alertname": "JetmediaDependencyDown", "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "dependency": "s3"},
                    "exp_annotations": {
                        "summary": "jetmedia cannot reach s3",
                        "description": (
                            "The s3 breaker of at least one jetmedia process has been open for 2 minutes: work is "
                            "paused (and waits, it is not failed). Check the s3 service and the network between it "
                            "and the stages; processing resumes by itself once it answers."
                        ),
                    },
                }]},
            ],
        }],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
