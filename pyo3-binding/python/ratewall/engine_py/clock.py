"""Time in integer microseconds since the epoch."""

from __future__ import annotations

import time


class SystemClock:
    """Monotonic, anchored to the wall clock once (``core/src/clock.rs``'s ``SystemClock``)."""

    def __init__(self) -> None:
        self._wall = time.time_ns()
        self._mono = time.monotonic_ns()

    def __call__(self) -> int:
        return (self._wall + time.monotonic_ns() - self._mono) // 1_000
