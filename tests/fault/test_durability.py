"""Durability scenarios (docs/RELIABILITY.md): DUR-01 kill loop, DUR-03 crash-point
matrix, DUR-05 SIGTERM drain — the node a real `python -m edgemq node` process, S3 a
real moto server, the control plane a real `edgemq control`.

kill -9 tests recovery, not fsync: the killed process's page cache still reaches disk
(power cuts are the PWR scenarios). Seeds: EDGEMQ_TEST_SEED replays kill instants.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from tests.fault.harness import (
    OK,
    Harness,
    failed_statuses,
    long_tier,
    percentile,
)
from tests.support.moto_server import MotoServer
from tests.support.processes import NodeChild

DUR01_CYCLES = 30
DUR01_LONG_CYCLES = 300
KILL_INSTANT_S = (0.05, 1.0)
CRASH_EXIT = 137  # shared/failpoints.py: os._exit(137), like kill -9


# ------------------------------------------------------------------------ DUR-01
async def _kill_loop(tmp_path: Path, moto: MotoServer, seed: int, cycles: int) -> None:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    async with Harness(tmp_path, moto, "DUR-01", seed=seed) as h:
        await h.start_node()
        assert h.node is not None
        recoveries: list[float] = []
        instants: list[float] = []
        async with h.traffic(writers=2) as t:
            for _ in range(cycles):
                await t.more_acked(5)
                instant_s = rng.uniform(*KILL_INSTANT_S)
                await asyncio.sleep(instant_s)  # the seeded kill instant, mid-stream
                assert await h.node.kill() == -9
                instants.append(round(instant_s, 3))
                restarted = loop.time()
                h.node.start()
                recoveries.append(await t.ok_after(restarted))
            await t.more_acked(10)
        drain_s = await h.drain()
        result = await h.reconcile()
        h.report(
            result,
            cycles=cycles,
            kills=len(instants),
            recovery_p50_s=percentile(recoveries, 50),
            recovery_p95_s=percentile(recoveries, 95),
            recovery_max_s=round(max(recoveries), 3),
            drain_s=round(drain_s, 2),
            recoveries_cutting_a_torn_tail=h.node_log_count("WAL recovery:"),
            outcomes=dict(failed_statuses(t.outcomes)),
        )
        h.assert_clean(result)
        assert h.node.starts == cycles + 1
        assert result.ok >= cycles * 5 * 20, result.line()


async def test_dur01_thirty_kill_nine_cycles_under_http_load_lose_no_acknowledged_record(
    tmp_path: Path, moto: MotoServer, seed: int
) -> None:
    await _kill_loop(tmp_path, moto, seed, DUR01_CYCLES)


@pytest.mark.slow
@long_tier
@pytest.mark.timeout(3600)
async def test_dur01_long_three_hundred_kill_nine_cycles_lose_no_acknowledged_record(
    tmp_path: Path, moto: MotoServer, seed: int
) -> None:
    await _kill_loop(tmp_path, moto, seed, DUR01_LONG_CYCLES)
