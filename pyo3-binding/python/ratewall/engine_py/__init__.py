"""The pure-Python engine: the same semantics as the Rust core, in plain readable Python.

Select it with ``engine: python`` in the plugin config or ``RATEWALL_ENGINE=python``. It shares
the core's configuration validation (so both engines accept exactly the same configs) and
mirrors everything else: ``policy`` (plan and keys, ``core/src/config/compile.rs`` and
``key.rs``), ``algorithms`` (``algorithm/*.rs``), ``decision`` (``decision.rs``), ``headers``
(``headers.rs``), ``memory`` (the memory store) and ``redis_store`` (the core's Lua script
through redis-py asyncio). :class:`PythonEngine` answers with the Rust engine's tuple.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from .clock import SystemClock
from .decision import Decision
from .headers import render
from .memory import MemoryStore
from .policy import ContextError, Policy

__all__ = ["PythonEngine"]

_STORE: Optional[MemoryStore] = None
_STORE_LOCK = threading.Lock()
_CLOCK = SystemClock()


def _shared_store(max_keys: int) -> MemoryStore:
    """The process-wide memory store, created by the first engine with its ``max_keys`` (as the
    Rust engine's ``src/registry.rs``: one bounded store per process, cells keyed by prefix,
    tenant, algorithm, window, dimension and identity, so edits keep unchanged rules' usage)."""
    global _STORE
    with _STORE_LOCK:
        if _STORE is None:
            _STORE = MemoryStore(max_keys, _CLOCK)
        return _STORE


class PythonEngine:
    """Same interface as ``ratewall._ratewall.Engine``."""

    def __init__(
        self, compiled: dict, script: str = "", clock: Optional[Callable[[], int]] = None
    ) -> None:
        self.policy = Policy(compiled)
        self.headers = compiled["headers"]
        self.fail_mode = compiled["fail_mode"]
        self.algorithm = compiled["algorithm"]
        self.backend = compiled["backend"]
        self.per_server = self.policy.has_per_server
        self.memory: Optional[MemoryStore] = None
        self.redis = None
        self.store_max_keys = compiled["memory_max_keys"]
        if self.backend == "memory":
            if clock is not None:
                self.memory = MemoryStore(compiled["memory_max_keys"], clock)
            else:
                self.memory = _shared_store(compiled["memory_max_keys"])
                self.store_max_keys = self.memory.max_keys
        else:
            from .redis_store import RedisStore

            self.redis = RedisStore(
                compiled["redis"], compiled["algorithm"], script, clock or _CLOCK,
                manual_clock=clock is not None,
            )

    def _answer(self, d: Decision) -> tuple:
        h = dict(render(d, self.headers)) or None
        if d.allowed:
            if not d.dimensions:
                return (0, None, None)
            return (1, h, d.details() if d.shadow_denied else None)
        return (2, h, d.details())

    def _failed(self, err: BaseException) -> tuple:
        msg = f"Redis: {type(err).__name__}: {err}"
        if self.fail_mode == "closed":
            return (3, {"Retry-After": "1"}, msg)
        return (4, None, msg)

    def check(self, user, tenant, server, tool, per_server) -> tuple:
        if self.memory is None:
            raise RuntimeError("this engine uses the Redis backend: call check_async")
        try:
            plan = self.policy.plan(user, tenant, server, tool, per_server)
        except ContextError as e:
            return (5, None, (e.field, e.message))
        return self._answer(self.memory.check(plan, self.algorithm))

    async def check_async(self, _completer, user, tenant, server, tool, per_server) -> tuple:
        if self.memory is not None:
            return self.check(user, tenant, server, tool, per_server)
        try:
            plan = self.policy.plan(user, tenant, server, tool, per_server)
        except ContextError as e:
            return (5, None, (e.field, e.message))
        try:
            d = await self.redis.check(plan)
        except Exception as e:  # any Redis failure: fail_mode decides
            return self._failed(e)
        return self._answer(d)

    async def connect(self, _completer=None):
        return None

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    def close(self) -> None:
        pass

    def stats(self) -> tuple[int, int, int]:
        if self.memory is not None:
            return self.memory.stats()
        return (self.redis.round_trips, self.redis.round_trips, self.redis.errors)
