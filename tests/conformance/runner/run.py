"""Running a scenario: every driver that can express it, concurrently, against one ``t0``.

Each driver gets its own key prefix (``redis_key_prefix``, which every store puts in front of
every key, memory stores included), so drivers that share a Redis or a process never share a
counter, and every step of a scenario lands at the same offset from ``t0`` in every packaging.
A scenario whose steps name a packaging (``via``) is a cross-packaging scenario: it runs once,
step by step through the named drivers, all on one Redis with one prefix, so they must share
every counter.
"""

from __future__ import annotations

import math
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

from .drivers import Driver
from .scenario import TIME_TOLERANCE, Observation, Scenario, Step, diffs

_NONCE = f"{os.getpid() % 100000}{int(time.time()) % 100000}"


@dataclass
class Result:
    driver: str
    t0: int = 0
    seen: list[tuple[Step, Observation, str]] = field(default_factory=list)  # (step, obs, via)
    error: Optional[str] = None

    def failures(self, drivers: dict[str, Driver]) -> list[str]:
        if self.error:
            return [self.error]
        out = []
        for i, (step, obs, via) in enumerate(self.seen):
            d = drivers[via]
            tol = 0 if d.manual_clock else TIME_TOLERANCE
            for msg in diffs(step, obs, self.t0, tol, d.http_names):
                out.append(f"request {i} ({via}, {step.request}): {msg}\n    saw: {obs.raw!r}"[:900])
        return out


def config_for(scenario: Scenario, driver: Driver, prefix: str, redis_url: Callable[[Driver], str]) -> dict:
    cfg = dict(scenario.policy)
    cfg["redis_key_prefix"] = prefix
    if driver.backend != "memory":
        cfg.update(backend="redis", redis_url=redis_url(driver), redis_timeout_ms=1000)
        if driver.backend == "redis-cluster":
            cfg["redis_cluster"] = True
    return cfg


def _sleep_until(t: float) -> None:
    while True:
        d = t - time.time()
        if d <= 0:
            return
        time.sleep(min(d, 0.05))


def _t0(align: int) -> int:
    # 0.3 s for the threads to start; a multiple of `align` (a window starts there)
    return int(math.ceil((time.time() + 0.3) / align) * align)


def run_parallel(scenario: Scenario, drivers: list[Driver], redis_url, stop_redis) -> dict[str, Result]:
    """Every driver in its own thread, all starting at the same aligned t0."""
    results = {d.name: Result(d.name) for d in drivers}
    shared = {}
    barrier = threading.Barrier(len(drivers) + 1, action=lambda: shared.__setitem__("t0", _t0(scenario.align)))

    def worker(d: Driver):
        res = results[d.name]
        prepared = False
        try:
            d.prepare(scenario, config_for(scenario, d, f"cf{_NONCE}-{scenario.name[:24]}-{d.name}", redis_url))
            prepared = True
        except Exception:
            res.error = f"prepare failed:\n{traceback.format_exc()}"
        barrier.wait()
        if not prepared:
            return
        res.t0 = t0 = shared["t0"]
        at = 0.0
        try:
            for step in scenario.steps:
                if step.at is not None:
                    at = step.at
                    _sleep_until(t0 + at)
                if step.stop_redis:
                    continue
                obs = d.send(step.request, int(round((t0 + at) * 1_000_000)))
                res.seen.append((step, obs, d.name))
        except Exception:
            res.error = f"request {len(res.seen)} failed:\n{traceback.format_exc()}"
        finally:
            try:
                d.finish()
            except Exception:
                res.error = res.error or f"finish failed:\n{traceback.format_exc()}"

    threads = [threading.Thread(target=worker, args=(d,), name=d.name) for d in drivers]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = shared["t0"]
    for step in scenario.steps:
        if step.stop_redis:
            _sleep_until(t0 + step.at)
            stop_redis()
    for t in threads:
        t.join(120)
    return results


def run_cross(scenario: Scenario, by_name: dict[str, Driver], redis_url, stop_redis) -> Result:
    """One thread; each request through the driver its step names; one prefix for all."""
    res = Result("cross")
    names = []
    for s in scenario.requests:
        if s.via not in by_name:
            res.error = f"step via {s.via!r}: no such driver (known: {sorted(by_name)})"
            return res
        if s.via not in names:
            names.append(s.via)
    prefix = f"cf{_NONCE}-{scenario.name[:40]}"
    prepared = []
    try:
        for n in names:
            by_name[n].prepare(scenario, config_for(scenario, by_name[n], prefix, redis_url))
            prepared.append(by_name[n])
        res.t0 = t0 = _t0(scenario.align)
        at = 0.0
        for step in scenario.steps:
            if step.at is not None:
                at = step.at
                _sleep_until(t0 + at)
            if step.stop_redis:
                stop_redis()
                continue
            d = by_name[step.via]
            res.seen.append((step, d.send(step.request, int(round((t0 + at) * 1_000_000))), d.name))
    except Exception:
        res.error = f"failed after {len(res.seen)} requests:\n{traceback.format_exc()}"
    finally:
        for d in prepared:
            d.finish()
    return res
