"""Parity: the Rust engine and the pure-Python engine give identical answers (decision,
headers, details) on seeded random request sequences with a controlled clock, for every
algorithm, 1 and 3 dimensions, enforced and global shadow mode, memory and Redis; and the Python
engine's memory store and its Redis store (the core's script) agree on plans with per-cell costs
(0 included) and shadow cells."""

from __future__ import annotations

import asyncio
import copy
import json
import random

import pytest

from ratewall._ratewall import Engine, ManualClock, compile_config, redis_script
from ratewall.engine_py import PythonEngine
from ratewall.gateway import _completer
from rw_support import RedisServer

ALGORITHMS = ["fixed_window", "sliding_window", "sliding_window_counter", "token_bucket", "gcra"]
T0 = 1_700_000_000_123_456

CONFIGS = {
    1: {"by_user": "3/s"},
    3: {"by_user": "6/3s", "by_tenant": "9/5s", "by_tool": {"Search": "3/s", "echo": "5/2s"}},
}
HEADERS = {1: "both", 3: "both"}


def sequence(seed: int, n: int):
    rng = random.Random(seed)
    users = ["alice", "bob", " alice ", "c" * 70]
    tenants = ["acme", "globex", None] if seed % 2 else ["acme", "globex"]
    tools = ["search", "SEARCH", "echo", "other"]
    steps = [0, 0, 0, 1_000, 5_000, 37_000, 120_000]
    jumps = [999_999, 1_700_000, 6_000_000]
    for _ in range(n):
        dt = rng.choice(jumps) if rng.random() < 0.03 else rng.choice(steps)
        yield (
            dt + rng.randrange(0, 500),
            rng.choice(users),
            rng.choice(tenants),
            rng.choice(tools),
        )


def engines(config: dict, clock: ManualClock):
    text = json.dumps(config)
    compiled = json.loads(compile_config(text))
    script = redis_script() if config.get("backend") == "redis" else ""
    return Engine(text, clock), PythonEngine(compiled, script, clock.now_micros)


def would_deny(answer) -> bool:
    """Denied, or (shadow mode) allowed although a limit would have denied it."""
    return answer[0] == 2 or (answer[0] == 1 and answer[2] is not None and answer[2]["shadow_denied"])


@pytest.mark.parametrize("shadow", [False, True])
@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_memory_parity(algorithm, dims, shadow):
    clock = ManualClock(T0)
    cfg = dict(CONFIGS[dims], algorithm=algorithm, headers=HEADERS[dims], shadow_mode=shadow)
    rust, py = engines(cfg, clock)
    denied = 0
    for i, (dt, user, tenant, tool) in enumerate(sequence(ALGORITHMS.index(algorithm) * 10 + dims, 400)):
        clock.advance_micros(dt)
        a = rust.check(user, tenant, None, tool, True)
        b = py.check(user, tenant, None, tool, True)
        assert a == b, f"step {i}: rust {a} != python {b}"
        assert a[0] != 2 or not shadow, f"step {i}: shadow mode denied {a}"
        denied += would_deny(a)
    assert denied > 10  # the sequences do exercise (would-be) denials


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("shadow", [False, True])
@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_redis_parity(redis_server, algorithm, dims, shadow):
    clock = ManualClock(T0)
    base = dict(CONFIGS[dims], algorithm=algorithm, headers=HEADERS[dims], backend="redis",
                redis_url=redis_server.url, redis_timeout_ms=2000, redis_negative_cache_keys=0,
                shadow_mode=shadow)
    tag = f"{algorithm}-{dims}-{shadow}"
    rust = Engine(json.dumps(dict(base, redis_key_prefix=f"pr-{tag}")), clock)
    py_cfg = dict(base, redis_key_prefix=f"pp-{tag}")
    py = PythonEngine(json.loads(compile_config(json.dumps(py_cfg))), redis_script(), clock.now_micros)
    mem_cfg = CONFIGS[dims] | {"algorithm": algorithm, "headers": HEADERS[dims], "shadow_mode": shadow}
    mem = Engine(json.dumps(mem_cfg), clock)
    comp = _completer()
    denied = 0
    try:
        for i, (dt, user, tenant, tool) in enumerate(sequence(100 + ALGORITHMS.index(algorithm) * 10 + dims, 200)):
            clock.advance_micros(dt)
            a = await rust.check_async(comp, user, tenant, None, tool, True)
            b = await py.check_async(None, user, tenant, None, tool, True)
            m = mem.check(user, tenant, None, tool, True)
            assert a == b, f"step {i}: rust {a} != python {b}"
            assert a == m, f"step {i}: redis {a} != memory {m}"
            assert a[0] != 2 or not shadow, f"step {i}: shadow mode denied {a}"
            denied += would_deny(a)
    finally:
        rust.close()
        await py.aclose()
    assert denied > 5


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_memory_parity_sliding_log_partly_expired(seed):
    """The Python sliding log drops its expired head lazily (once it is half the log): decisions,
    headers and retry instants stay the Rust engine's while the head is partly expired, and the
    log stays bounded."""
    clock = ManualClock(T0)
    cfg = {"by_user": "20/s", "by_tenant": "50/3s", "algorithm": "sliding_window", "headers": "both"}
    rust, py = engines(cfg, clock)
    rng = random.Random(seed)
    denied = 0
    for i in range(3000):
        clock.advance_micros(rng.choice([0, 1_000, 20_000, 45_000, 90_000, 400_000]))
        user = rng.choice(["alice", "bob"])
        a = rust.check(user, "acme", None, "search", True)
        b = py.check(user, "acme", None, "search", True)
        assert a == b, f"step {i}: rust {a} != python {b}"
        denied += a[0] == 2
    assert denied > 10
    logs = [state for state, _ in py.memory.cells.values()]
    assert logs and all(len(log) <= 2 * 50 + 1 for log in logs)


@pytest.mark.asyncio
@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_python_stores_agree_on_per_cell_cost_and_shadow(redis_server, algorithm):
    """Per-cell costs (0 ..= 3) and shadow cells: the Python memory store and the core's Lua script
    driven by the Python Redis store (the same ARGV contract as the Rust store) decide alike, and
    follow the one commit rule (a shadow cell that would deny, or a cost-0 cell, is not charged)."""
    from ratewall.engine_py.memory import MemoryStore
    from ratewall.engine_py.redis_store import RedisStore

    cfg = dict(CONFIGS[3], algorithm=algorithm, backend="redis", redis_url=redis_server.url,
               redis_timeout_ms=2000, redis_key_prefix=f"pc-{algorithm}")
    compiled = json.loads(compile_config(json.dumps(cfg)))
    clock = ManualClock(T0)
    py = PythonEngine(compiled, redis_script(), clock.now_micros)
    memory = MemoryStore(10_000, clock.now_micros)
    redis_store: RedisStore = py.redis
    rng = random.Random(7)
    shadow_denied = checks_only = 0
    try:
        for i, (dt, user, tenant, tool) in enumerate(sequence(500 + ALGORITHMS.index(algorithm), 300)):
            clock.advance_micros(dt)
            plan = py.policy.plan(user, tenant, None, tool, True)
            only_check = rng.random() < 0.2
            cells = [c._replace(cost=0 if only_check else rng.choice([0, 1, 1, 2, 3]),
                                shadow=rng.random() < 0.35)
                     for c in plan.cells]
            plan = plan._replace(cells=cells)
            before = copy.deepcopy(memory.cells)
            m = memory.check(plan, algorithm)
            r = await redis_store.check(plan)
            assert m == r, f"step {i}: memory {m} != redis {r}"
            assert m.allowed == all(d.outcome.allowed for d in m.dimensions if not d.shadow)
            if only_check:
                assert memory.cells == before, f"step {i}: a cost-0 check changed the state"
                checks_only += 1
            shadow_denied += m.shadow_denied
    finally:
        await py.aclose()
    assert shadow_denied > 5 and checks_only > 20, (shadow_denied, checks_only)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_memory_parity_at_production_sizes(algorithm):
    """Counts up to u32::MAX and windows up to a year: the Python engine's big integers and the
    core's exact 64/128-bit arithmetic give the same remaining, reset and retry values."""
    clock = ManualClock(T0)
    log = algorithm == "sliding_window"  # its log is bounded: at most 1,000,000 per window
    cfg = {"algorithm": algorithm, "headers": "both",
           "by_user": "3/s;" + ("1000000/y" if log else "4294967295/y"),
           "by_tenant": "999983/366d" if log else "999999937/366d",
           "by_tool": {"search": "2/5w", "echo": "7/mo"}}
    rust, py = engines(cfg, clock)
    denied = 0
    for i, (dt, user, tenant, tool) in enumerate(sequence(900 + ALGORITHMS.index(algorithm), 300)):
        clock.advance_micros(dt * 997)
        a = rust.check(user, tenant, None, tool, True)
        b = py.check(user, tenant, None, tool, True)
        assert a == b, f"step {i}: rust {a} != python {b}"
        denied += a[0] == 2
    assert denied > 10
