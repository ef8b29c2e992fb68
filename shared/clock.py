"""Injectable clocks: the system clock for production, a manual clock for tests.

Code that decides on time (segment age, backoff, token expiry) takes a `Clock`
instead of calling `time` directly, so tests can move time without sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a monotonic scale, for durations and deadlines."""
        ...

    def time_ms(self) -> int:
        """Wall-clock milliseconds since the Unix epoch, for timestamps."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, *, monotonic_s: float = 1000.0, time_ms: int = 1_700_000_000_000) -> None:
        self._monotonic_s = monotonic_s
        self._time_ms = time_ms

    def monotonic(self) -> float:
        return self._monotonic_s

    def time_ms(self) -> int:
        return self._time_ms

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._monotonic_s += seconds
        self._time_ms += round(seconds * 1000)


SYSTEM_CLOCK: Clock = SystemClock()
