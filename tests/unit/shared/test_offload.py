import asyncio
import threading

import pytest

from shared.offload import BlockingPool, PoolBusy


async def test_work_runs_off_the_event_loop_thread() -> None:
    pool = BlockingPool("test", threads=1, waiting_max=0)
    try:
        name = await pool.run(lambda: threading.current_thread().name)
        assert name.startswith("test")
        assert name != threading.current_thread().name
    finally:
        pool.shutdown()


async def test_a_saturated_pool_refuses_at_once() -> None:
    pool = BlockingPool("busy", threads=1, waiting_max=1)
    release = threading.Event()
    try:
        first = asyncio.ensure_future(pool.run(release.wait, 5))
        second = asyncio.ensure_future(pool.run(release.wait, 5))
        await asyncio.sleep(0)
        assert pool.in_use == 2
        with pytest.raises(PoolBusy):
            await pool.run(release.wait, 5)
        release.set()
        assert await first is True
        assert await second is True
        assert pool.in_use == 0
    finally:
        pool.shutdown()
