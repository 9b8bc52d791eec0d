"""The Redis backend through the plugin: both engines, concurrency on one connection, an event
loop that is never blocked, fail modes, and connection release on shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from cpex.framework import ToolPreInvokePayload

from rw_support import RedisServer, ctx, free_port, make_plugin

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(params=["rust", "python"])
def engine(request):
    return request.param


def tool(name="search"):
    return ToolPreInvokePayload(name=name, args={})


def clients(server) -> int:
    return int(server.client().info("clients")["connected_clients"])


async def test_allow_then_deny(redis_server, engine):
    cfg = {"by_user": "2/m", "by_tool": {"search": "10/m"}, "backend": "redis",
           "redis_url": redis_server.url, "redis_key_prefix": f"t1-{engine}", "engine": engine,
           "redis_timeout_ms": 2000}
    p = make_plugin(cfg)
    await p.initialize()
    try:
        r1 = await p.tool_pre_invoke(tool(), ctx())
        r2 = await p.tool_pre_invoke(tool(), ctx())
        r3 = await p.tool_pre_invoke(tool(), ctx())
        assert r1.http_headers["X-RateLimit-Remaining"] == "1"
        assert r2.http_headers["X-RateLimit-Remaining"] == "0"
        assert r3.continue_processing is False and r3.violation.code == "RATE_LIMIT"
        assert int(r3.violation.http_headers["Retry-After"]) >= 1
        # a second instance (the gateway's other context or a rebuild) sees the same counters
        q = make_plugin(cfg)
        await q.initialize()
        assert not (await q.tool_pre_invoke(tool(), ctx())).continue_processing
        await q.shutdown()
    finally:
        await p.shutdown()


async def test_64_concurrent_hooks_share_one_connection(redis_server):
    cfg = {"by_user": "1000/m", "by_tenant": "1000/m", "by_tool": {"search": "1000/m"},
           "backend": "redis", "redis_url": redis_server.url, "redis_key_prefix": "t64",
           "redis_timeout_ms": 5000}
    p = make_plugin(cfg)
    await p.initialize()
    before = clients(redis_server)
    try:
        rs = await asyncio.gather(*[p.tool_pre_invoke(tool(), ctx(tenant="acme")) for _ in range(64)])
        assert all(r.continue_processing for r in rs)
        remaining = sorted(int(r.http_headers["X-RateLimit-Remaining"]) for r in rs)
        assert remaining == list(range(1000 - 64, 1000))  # exact: every call counted once
        assert clients(redis_server) == before  # no connection was opened for the burst
        round_trips, script_calls, errors = p._engine.stats()
        assert script_calls == 64 and errors == 0 and round_trips <= 65
    finally:
        await p.shutdown()


async def test_event_loop_is_not_blocked(redis_server):
    cfg = {"by_user": "10/m", "backend": "redis", "redis_url": redis_server.url,
           "redis_key_prefix": "tblock", "redis_timeout_ms": 3000}
    p = make_plugin(cfg)
    await p.initialize()
    await p.tool_pre_invoke(tool(), ctx())  # warm: connected, script cached
    ticks = 0
    stop = False

    async def ticker():
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0.005)

    t = asyncio.create_task(ticker())
    sleeper = threading.Thread(target=lambda: redis_server.client().execute_command("DEBUG", "SLEEP", "0.3"))
    sleeper.start()
    await asyncio.sleep(0.02)
    start = time.monotonic()
    ticks_before = ticks
    r = await p.tool_pre_invoke(tool(), ctx())
    waited = time.monotonic() - start
    stop = True
    await t
    sleeper.join()
    await p.shutdown()
    assert r.continue_processing
    assert waited > 0.15  # the hook really waited for Redis...
    assert ticks - ticks_before >= 10  # ...while the loop kept running other tasks


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
async def test_redis_down(engine, fail_mode):
    cfg = {"by_user": "1/m", "backend": "redis", "redis_url": f"redis://127.0.0.1:{free_port()}/0",
           "fail_mode": fail_mode, "engine": engine, "redis_timeout_ms": 200}
    p = make_plugin(cfg)
    await p.initialize()  # logs, does not raise
    try:
        for _ in range(2):
            r = await p.tool_pre_invoke(tool(), ctx())
            if fail_mode == "open":
                assert r.continue_processing and r.violation is None and r.http_headers is None
            else:
                v = r.violation
                assert r.continue_processing is False
                assert (v.code, v.http_status_code, v.http_headers) == (
                    "BACKEND_UNAVAILABLE", 503, {"Retry-After": "1"})
                assert v.reason == "Rate limiter backend unavailable"
    finally:
        await p.shutdown()


async def test_shutdown_releases_the_connection(redis_server, engine):
    base = clients(redis_server)
    cfg = {"by_user": "5/m", "backend": "redis", "redis_url": redis_server.url, "engine": engine,
           "redis_key_prefix": f"tshut-{engine}", "redis_timeout_ms": 2000}
    p = make_plugin(cfg)
    await p.initialize()
    await p.tool_pre_invoke(tool(), ctx())
    assert clients(redis_server) >= base + 1
    await p.shutdown()
    deadline = time.monotonic() + 3
    while clients(redis_server) > base and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert clients(redis_server) == base
    # a shut-down instance answers by fail_mode (open) instead of raising
    r = await p.tool_pre_invoke(tool(), ctx())
    assert r.continue_processing
