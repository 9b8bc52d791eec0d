"""The in-process store: a dict of cell states under one lock, all-or-nothing per request.

Cells of every algorithm share one store (each key names its algorithm); the caller passes the
plan's algorithm.

Same decisions as the Rust ``MemoryStore`` (it reads "now" after taking the lock, peeks every
cell at its own cost, and commits the cells that ``Decision.commits``: all-or-nothing over the
enforced cells). Bounded by ``max_keys``: an insertion into a full
store first drops expired cells (which never changes a decision), then the oldest inserted one.
"""

from __future__ import annotations

import threading
from typing import Callable

from .algorithms import ALGORITHMS
from .decision import Decision
from .policy import Plan


class MemoryStore:
    def __init__(self, max_keys: int, clock: Callable[[], int]) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self.cells: dict[str, list] = {}  # key -> [state, expires_at]
        self.lock = threading.Lock()
        self.reclaimed = 0
        self.evictions = 0

    def _make_room(self, now: int) -> None:
        expired = [k for k, (_, exp) in self.cells.items() if exp <= now]
        for k in expired:
            del self.cells[k]
        self.reclaimed += len(expired)
        if len(self.cells) >= self.max_keys:
            del self.cells[next(iter(self.cells))]
            self.evictions += 1

    def check(self, plan: Plan, algorithm: str) -> Decision:
        alg = ALGORITHMS[algorithm]
        with self.lock:
            now = self.clock()
            if not plan.cells:
                return Decision(allowed=True, now=now)
            states = []
            for c in plan.cells:
                entry = self.cells.get(c.key)
                states.append(None if entry is None else entry[0])
            outcomes = [
                alg.peek(s, now, c.cost, c.count, c.window_us)
                for s, c in zip(states, plan.cells)
            ]
            decision = Decision.combine(plan.cells, now, plan.cost, outcomes)
            if decision.allowed:
                for i, (s, c) in enumerate(zip(states, plan.cells)):
                    if not decision.commits(i, c):
                        continue
                    new = alg.commit(s, now, c.cost, c.count, c.window_us)
                    expires = alg.expires_at(new, c.count, c.window_us)
                    if s is None and len(self.cells) >= self.max_keys:
                        self._make_room(now)
                    self.cells[c.key] = [new, expires]
            return decision

    def stats(self) -> tuple[int, int, int]:
        return len(self.cells), self.reclaimed, self.evictions
