"""The lane arithmetic of shared/lanes.py: the bulk share and the interactive-first CPU pool."""

from __future__ import annotations

import threading

from shared.lanes import BulkShare, PriorityPool


def test_bulk_gets_one_start_in_four_while_both_lanes_wait() -> None:
    share = BulkShare(0.25)
    starts = []
    for _ in range(40):
        lane = "bulk" if share.quota(1) else "interactive"
        share.started(lane == "interactive", lane == "bulk")
        starts.append(lane)
    assert starts.count("bulk") == 10
    assert all("bulk" in starts[n:n + 4] for n in range(0, 40, 4))
    assert share.quota(8) == 2  # a batch of 8 free slots: 2 for bulk


def test_an_empty_bulk_lane_earns_no_credit() -> None:
    share = BulkShare(0.25)
    share.started(100, 0)
    share.bulk_empty()
    assert share.quota(1) == 0


def test_interactive_work_never_waits_for_running_bulk_work() -> None:
    pool = PriorityPool(2)
    release = threading.Event()
    running = threading.Semaphore(0)

    def bulk() -> None:
        running.release()
        release.wait(30)

    try:
        held = [pool.submit("bulk", bulk) for _ in range(3)]
        assert running.acquire(timeout=10) and running.acquire(timeout=10)
        assert not running.acquire(timeout=0.2)  # bulk runs on 2 threads, not 3
        assert pool.submit("interactive", lambda: "photo").result(timeout=10) == "photo"  # the extra thread
    finally:
        release.set()
        pool.shutdown()
    assert all(future.result(timeout=10) is None for future in held[:2])


def test_interactive_work_alone_uses_the_configured_threads() -> None:
    pool = PriorityPool(2)
    inside, most, lock = [0], [0], threading.Lock()
    gate = threading.Barrier(2, timeout=10)

    def work() -> None:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        gate.wait()  # two at a time meet here; a third would have to run beside them
        with lock:
            inside[0] -= 1

    try:
        for future in [pool.submit("interactive", work) for _ in range(6)]:
            future.result(timeout=20)
    finally:
        pool.shutdown()
    assert most[0] == 2
