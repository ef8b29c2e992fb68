"""Capped exponential backoff with "equal jitter": each delay is uniform in
[c/2, c] where c = min(cap, base × 2^attempt), so retries spread out but never
hammer at zero delay."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, *, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay_s(self) -> float:
        """The delay before the next attempt: uniform in [0, min(cap, base * 2^n)]."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0
