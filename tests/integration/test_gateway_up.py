"""`jetmedia up` serves the HTTP API too: the banner names it and its token, a browser-shaped
client uploads through a presigned URL (bucket CORS answers the preflight), submits, follows the
job over SSE with the token in the query (as EventSource must), and downloads the result."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from services import samples
from shared.config import Settings
from tests.helpers import read_until

ENV = {**os.environ, "JETMEDIA_METRICS_PORT": "0", "JETMEDIA_GATEWAY_PORT": "0", "JETMEDIA_LOG_LEVEL": "WARNING"}
ORIGIN = "http://127.0.0.1:9"  # a page on another origin than the S3 endpoint


def test_up_serves_the_http_api(tmp_path: Path) -> None:
    up = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--data-dir", str(tmp_path / "stack")],
                          env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = read_until(up)
        found = re.search(r"gateway\s+(http://127\.0\.0\.1:\d+)\s.*token (jm_\S+) ", banner)
        assert found, banner
        url, token = found.groups()
        assert (tmp_path / "stack" / "gateway-token").read_text().strip() == token
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            assert http.get("/").status_code == 200  # the job page
            ticket = http.post("/v1/uploads", json={"filename": "dunes.jpg", "content_type": "image/jpeg"}).json()
            preflight = httpx.options(ticket["url"], headers={
                "Origin": ORIGIN, "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "content-type"})
            assert preflight.status_code == 200, preflight.text
            assert preflight.headers["access-control-allow-origin"] in (ORIGIN, "*")
            assert "PUT" in preflight.headers["access-control-allow-methods"]
            put = httpx.put(ticket["url"], content=samples.photo(800, 600),
                            headers={**ticket["headers"], "Origin": ORIGIN})
            assert put.status_code == 200 and put.headers["access-control-allow-origin"] in (ORIGIN, "*")
            accepted = http.post("/v1/assets", json={"key": ticket["key"]}, headers={"Idempotency-Key": "dunes"})
            assert accepted.status_code == 202, accepted.text

            views = []
            with httpx.stream("GET", url + accepted.json()["events_url"], params={"access_token": token},
                              timeout=120) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        views.append(json.loads(line[6:]))
            assert views[-1]["status"] == "ready", views[-1]
            thumb = next(o for o in views[-1]["outputs"] if o["name"] == "thumb")
            assert httpx.get(thumb["url"]).content[8:12] == b"WEBP"
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)


def test_gateway_alone_with_a_token_made_by_the_cli(settings: Settings, tmp_path: Path) -> None:
    """`jetmedia gateway token` prints a token once and its hashed entry; `jetmedia gateway` serves
    with that entry against an existing stack, refuses to start without tokens, stops on SIGTERM."""
    env = {**ENV, **settings.as_env(), "JETMEDIA_GATEWAY_PORT": "0", "JETMEDIA_LOG_LEVEL": "INFO"}
    made = subprocess.run([sys.executable, "-m", "services.cli", "gateway", "token", "web", "--scopes", "read"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    token = re.search(r"(jm_\S+)", made.stderr)
    assert token and token.group(1) not in made.stdout  # stdout holds only the hash
    entry = json.loads(made.stdout)
    assert entry["name"] == "web" and entry["scopes"] == ["read"] and len(entry["sha256"]) == 64

    refused = subprocess.run([sys.executable, "-m", "services.cli", "gateway"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and "JETMEDIA_GATEWAY_TOKENS" in refused.stderr, refused.stderr

    gateway = subprocess.Popen([sys.executable, "-m", "services.cli", "gateway"],
                               env={**env, "JETMEDIA_GATEWAY_TOKENS": json.dumps([entry])},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert gateway.stdout is not None
        found = re.search(r"gateway ready on (http://127\.0\.0\.1:\d+)", read_until(gateway, marker="ready on"))
        assert found
        answer = httpx.get(found.group(1) + "/v1/jobs", headers={"Authorization": f"Bearer {token.group(1)}"})
        assert answer.status_code == 200 and "dead_letters" in answer.json()
        assert httpx.post(found.group(1) + "/v1/uploads", json={"filename": "a"},
                          headers={"Authorization": f"Bearer {token.group(1)}"}).status_code == 403
        health = subprocess.run([sys.executable, "-m", "services.cli", "health", "--url", found.group(1) + "/metrics"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert health.returncode == 0, health.stderr
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
        assert token.group(1) not in gateway.stdout.read()  # never in the log
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait(10)
