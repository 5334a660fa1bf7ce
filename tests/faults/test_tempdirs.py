"""A SIGKILLed transcode worker runs no `finally`: its temp dir (with the source in it) is removed
by the next process that makes one, and only when its owner is really gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from services.transcode import work
from shared.config import Settings

HOLDER = """
import asyncio, sys
from types import SimpleNamespace
from services.transcode.work import workspace
from shared.config import Settings

async def main():
    ctx = SimpleNamespace(settings=Settings(transcode_tmp_dir=sys.argv[1]))
    async with workspace(ctx) as folder:
        with open(folder + "/source", "wb") as out:
            out.write(b"x" * 4096)
        print(folder, flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


def holder(root: Path) -> tuple[subprocess.Popen[str], str]:
    """A process inside a transcode workspace (as a worker mid-job), and that workspace."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def exists(path: str | Path) -> bool:
    return os.path.exists(path)


async def test_killed_workers_temp_dir_is_reaped_at_the_next_start_and_live_ones_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "transcode-tmp"
    killed, left_behind = holder(root)
    alive, in_use = holder(root)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        assert exists(f"{left_behind}/source")  # what a SIGKILL leaves
        elsewhere = root / f"{work.WORKSPACE_PREFIX}{killed.pid}-another-host-abcd1234"
        elsewhere.mkdir()  # same pid on another host sharing the volume: not ours to judge
        unowned_old = root / f"{work.WORKSPACE_PREFIX}oldnaming"
        unowned_old.mkdir()
        old = time.time() - work.UNOWNED_AGE - 60
        os.utime(unowned_old, (old, old))

        work._reaped.discard(str(root))  # as in a freshly started process
        ctx = SimpleNamespace(settings=Settings(transcode_tmp_dir=str(root)))
        async with work.workspace(ctx) as mine:  # type: ignore[arg-type]
            assert exists(mine)
            assert not exists(left_behind), "the killed worker's temp dir survived"
            assert exists(in_use), "a live worker's temp dir was removed"
            assert exists(elsewhere) and not exists(unowned_old)
        assert not exists(mine)
    finally:
        for proc in (killed, alive):
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
