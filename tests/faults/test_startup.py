"""Start-up against a NATS that is not there yet: workers wait for it (bounded), they do not die.

Compose, systemd or a scheduler often start the workers together with (or before) a fresh
3-node cluster; until it has elected its leaders, connecting and creating streams fail with
refused connections, timeouts and "no suitable peers". Every worker must come up regardless.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from shared.config import Settings
from shared.devstack import NatsServer, free_port
from shared.runtime import Services
from shared.storage import Storage
from tests.helpers import worker_process

STAGES = ("upload", "variant", "finalize")


def wait_for_line(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """Read a process's output until `marker` appears (or it exits); everything read so far."""
    assert proc.stdout is not None
    seen = b""
    for line in proc.stdout:
        seen += line
        if marker in line:
            return seen
    return seen + f"\n[exited {proc.wait(timeout)}]".encode()


async def test_workers_started_before_a_fresh_cluster_come_up_once_it_forms(settings: Settings, tmp_path: Path) -> None:
    async with Storage(settings) as storage:
        await storage.ensure_bucket()
    ports = [free_port() for _ in range(3)]
    routes = [free_port() for _ in range(3)]
    nodes = [NatsServer(tmp_path / f"n{i}", name=f"n{i}", cluster="jetmedia", cluster_port=routes[i], routes=routes,
                        port=ports[i]) for i in range(3)]
    clustered = settings.replace(nats_url=",".join(f"nats://127.0.0.1:{p}" for p in ports), replicas=3)
    workers = [worker_process(clustered, stage) for stage in STAGES]
    try:
        await asyncio.sleep(2)  # the workers are trying to connect to nothing
        assert all(w.poll() is None for w in workers), "a worker gave up before the cluster started"
        await asyncio.to_thread(nodes[0].start)
        await asyncio.sleep(6)  # connected to one node of three: no JetStream leader, every API call fails
        assert all(w.poll() is None for w in workers), "a worker gave up while the cluster was forming"
        for node in nodes[1:]:
            await asyncio.to_thread(node.start)
        outputs = await asyncio.gather(*(asyncio.to_thread(wait_for_line, w, b"worker ready", 90) for w in workers))
        for stage, output in zip(STAGES, outputs, strict=True):
            assert b"worker ready" in output, f"{stage}:\n{output.decode(errors='replace')[-3000:]}"
        async with Services.open(clustered, name="startup-check", layout=False) as services:
            info = await services.js.stream_info("JM_UPLOAD")
            assert info.config.num_replicas == 3
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait(10)
        for node in nodes:
            node.stop()
