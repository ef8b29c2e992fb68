"""Run blocking work (DuckDB, pyarrow, zstd, fsync) off the event loop, bounded.

One `BlockingPool` per kind of work: a fixed number of threads and a bounded number of
callers waiting for one. When the pool is saturated, `run` raises `PoolBusy` at once
instead of queueing without limit; the caller answers 503/429 or retries later.
Deadlines that must reach the engine (DuckDB `interrupt()`) are the callee's job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class PoolBusy(Exception):
    """Every thread is busy and the waiting room is full."""


class BlockingPool:
    def __init__(self, name: str, *, threads: int, waiting_max: int) -> None:
        if threads < 1 or waiting_max < 0:
            raise ValueError("threads >= 1 and waiting_max >= 0")
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._capacity = threads + waiting_max
        self._in_use = 0

    @property
    def in_use(self) -> int:
        return self._in_use

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._in_use >= self._capacity:
            raise PoolBusy(f"{self.name}: {self._in_use} calls running or waiting")
        self._in_use += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        finally:
            self._in_use -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
