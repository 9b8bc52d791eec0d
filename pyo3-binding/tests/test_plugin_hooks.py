"""The plugin's hooks called directly (memory backend), through both engines."""

from __future__ import annotations

import asyncio

import pytest
from cpex.framework import PromptPrehookPayload, ToolPreInvokePayload
from cpex.framework.extensions import Extensions, RequestExtension

from ratewall._ratewall import ManualClock
from rw_support import ctx, make_plugin

pytestmark = pytest.mark.asyncio

T0 = 1_700_000_000_000_000  # µs, on a second boundary


def fresh(config: dict, engine: str):
    """A plugin with private counters on a manual clock."""
    clock = ManualClock(T0)
    return make_plugin(dict(config, engine=engine), clock=clock), clock


def tool(name="search"):
    return ToolPreInvokePayload(name=name, args={})


@pytest.fixture(params=["rust", "python"])
def engine(request):
    return request.param


async def test_allowed_carries_core_headers(engine):
    p, _ = fresh({"by_user": "3/m"}, engine)
    r = await p.tool_pre_invoke(tool(), ctx())
    assert r.continue_processing and r.violation is None
    assert r.http_headers == {
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": "2",
        "X-RateLimit-Reset": str(T0 // 1_000_000 + 60 - (T0 // 1_000_000) % 60),
    }
    assert r.metadata == {}


async def test_denied_violation(engine):
    p, clock = fresh({"by_user": "2/s", "by_tool": {"Search": "10/m"}}, engine)
    for _ in range(2):
        assert (await p.tool_pre_invoke(tool(), ctx())).continue_processing
    clock.advance_micros(250_000)
    r = await p.tool_pre_invoke(tool(), ctx())
    assert r.continue_processing is False
    v = r.violation
    assert (v.reason, v.code, v.http_status_code) == ("Rate limit exceeded", "RATE_LIMIT", 429)
    assert v.http_headers["Retry-After"] == "1"
    assert v.http_headers["X-RateLimit-Limit"] == "2"
    assert v.http_headers["X-RateLimit-Remaining"] == "0"
    d = v.details
    assert d["limited"] is True and d["reason"] == "limited" and d["reset_in"] == 1
    assert [x["dimension"] for x in d["dimensions"]["violated"]] == ["user"]
    assert d["dimensions"]["violated"][0]["policy"] == "by_user"
    assert [x["policy"] for x in d["dimensions"]["allowed"]] == ["tool:search"]
    assert "alice" not in repr(d)  # identities never leave in details


async def test_all_or_nothing_denied_consumes_nothing(engine):
    p, _ = fresh({"by_user": "1/m", "by_tenant": "5/m"}, engine)
    await p.tool_pre_invoke(tool(), ctx(tenant="acme"))
    for _ in range(3):
        assert not (await p.tool_pre_invoke(tool(), ctx(tenant="acme"))).continue_processing
    # bob in the same tenant still has 4 of the tenant's 5
    r = await p.tool_pre_invoke(tool(), ctx(user="bob", tenant="acme"))
    assert r.continue_processing
    assert r.http_headers["X-RateLimit-Remaining"] == "0"  # bob's own 1/m is the tightest
    assert p._engine.check("carol", "acme", None, "x", False)[1]["X-RateLimit-Remaining"] == "0"


async def test_trace_id_metadata_without_identities(engine):
    p, _ = fresh({"by_user": "1/m"}, engine)
    ext = Extensions(request=RequestExtension(request_id="r", trace_id="abc123"))
    r = await p.tool_pre_invoke(tool(), ctx(), ext)
    assert r.metadata == {"rate_limiter": {"allowed": 1, "throttled": 0, "backend": "memory"}}
    r = await p.tool_pre_invoke(tool(), ctx(), ext)
    assert r.metadata == {"rate_limiter": {"allowed": 0, "throttled": 1, "backend": "memory"}}
    # no trace id: no metadata
    r = await p.tool_pre_invoke(tool(), ctx(user="zed"), Extensions(request=RequestExtension(request_id="r")))
    assert r.metadata == {}
    # nothing configured for this request: metadata still reported with a trace id
    q, _ = fresh({"by_tool": {"other": "1/m"}}, engine)
    r = await q.tool_pre_invoke(tool(), ctx(), ext)
    assert r.metadata["rate_limiter"]["allowed"] == 1 and r.http_headers is None


@pytest.mark.parametrize(
    "user, same_as",
    [
        ({"email": "a@x.com", "id": "7"}, "a@x.com"),
        ({"email": "  ", "id": 7}, "7"),
        ({"email": None, "id": " ", "sub": "s-1"}, "s-1"),
        ({"email": ""}, None),
        ("  alice  ", "alice"),
        (None, None),
        ("", None),
    ],
)
async def test_user_identity(engine, user, same_as):
    p, _ = fresh({"by_user": "1/m"}, engine)
    assert (await p.tool_pre_invoke(tool(), ctx(user=user))).continue_processing
    other = same_as if same_as is not None else "anonymous"
    r = await p.tool_pre_invoke(tool(), ctx(user=other))
    assert not r.continue_processing, f"{user!r} should share {other!r}'s counter"


async def test_tenant_absent_skips_dimension(engine):
    p, _ = fresh({"by_tenant": "1/m"}, engine)
    for _ in range(3):
        r = await p.tool_pre_invoke(tool(), ctx(tenant=None))
        assert r.continue_processing and r.http_headers is None
    assert (await p.tool_pre_invoke(tool(), ctx(tenant="acme"))).continue_processing
    assert not (await p.tool_pre_invoke(tool(), ctx(user="bob", tenant=" acme "))).continue_processing


@pytest.mark.parametrize(
    "server, message",
    [
        (None, "server_id is required when by_user_per_server is configured"),
        ("  ", "server_id is required when by_user_per_server is configured"),
        ("gw 9", "server_id may contain only ASCII letters, digits, hyphen, underscore, and period"),
        ("x" * 129, "server_id exceeds the maximum length of 128 bytes"),
    ],
)
async def test_per_server_context_missing(engine, server, message):
    p, _ = fresh({"by_user": "1/m", "by_user_per_server": "5/m"}, engine)
    r = await p.tool_pre_invoke(tool(), ctx(server=server))
    v = r.violation
    assert r.continue_processing is False
    assert (v.code, v.http_status_code, v.reason) == (
        "RATE_LIMIT_CONTEXT_MISSING", 503, "Rate limit context unavailable")
    assert v.description == message
    assert v.details == {"field": "server_id", "error": message}
    # nothing consumed: the user's 1/m is intact
    assert (await p.tool_pre_invoke(tool(), ctx(server="gw-1"))).continue_processing


async def test_per_server_only_on_tool_hook(engine):
    p, _ = fresh({"by_user_per_server": "1/m"}, engine)
    assert (await p.tool_pre_invoke(tool(), ctx(server="gw-1"))).continue_processing
    assert not (await p.tool_pre_invoke(tool(), ctx(server="gw-1"))).continue_processing
    assert (await p.tool_pre_invoke(tool(), ctx(server="gw-2"))).continue_processing
    # prompts never need nor consume the per-server dimension
    r = await p.prompt_pre_fetch(PromptPrehookPayload(prompt_id="p"), ctx(server=None))
    assert r.continue_processing and r.http_headers is None


async def test_prompt_and_tool_share_by_tool_and_user(engine):
    p, _ = fresh({"by_user": "10/m", "by_tool": {" Summarize ": "2/m"}}, engine)
    r = await p.prompt_pre_fetch(PromptPrehookPayload(prompt_id="SUMMARIZE"), ctx())
    assert r.continue_processing and r.http_headers["X-RateLimit-Remaining"] == "1"
    assert (await p.tool_pre_invoke(tool("summarize"), ctx())).continue_processing
    r = await p.prompt_pre_fetch(PromptPrehookPayload(prompt_id="summarize"), ctx())
    assert r.continue_processing is False
    assert r.violation.http_headers["X-RateLimit-Limit"] == "2"
    r = await p.tool_pre_invoke(tool("other"), ctx())
    assert r.http_headers["X-RateLimit-Remaining"] == "7"


async def test_ietf_headers(engine):
    p, _ = fresh({"by_user": "5/m", "headers": "ietf"}, engine)
    r = await p.tool_pre_invoke(tool(), ctx())
    assert r.http_headers["RateLimit-Policy"] == '"by_user";q=5;w=60'
    assert r.http_headers["RateLimit"].startswith('"by_user";r=4;t=')


async def test_shared_counters_across_instances_and_rebuilds(engine):
    # Its own key prefix: this test's cells in the process-wide store.
    cfg = {"by_user": "3/h", "by_tool": {"shared-counter-test": "1000/h"}, "engine": engine,
           "redis_key_prefix": f"shared-{engine}"}
    a, b = make_plugin(cfg), make_plugin(cfg)
    await a.initialize(); await b.initialize()
    assert (await a.tool_pre_invoke(tool(), ctx(user="u-shared"))).http_headers["X-RateLimit-Remaining"] == "2"
    assert (await b.tool_pre_invoke(tool(), ctx(user="u-shared"))).http_headers["X-RateLimit-Remaining"] == "1"
    await a.shutdown(); await b.shutdown()
    c = make_plugin(cfg)  # the gateway's 30 s rebuild
    await c.initialize()
    assert (await c.tool_pre_invoke(tool(), ctx(user="u-shared"))).http_headers["X-RateLimit-Remaining"] == "0"
    assert not (await c.tool_pre_invoke(tool(), ctx(user="u-shared"))).continue_processing
    # an edited limit keeps the cell's usage (3 of 4 used), as the check service does
    d = make_plugin(dict(cfg, by_user="4/h"))
    assert (await d.tool_pre_invoke(tool(), ctx(user="u-shared"))).http_headers["X-RateLimit-Remaining"] == "0"
    assert not (await d.tool_pre_invoke(tool(), ctx(user="u-shared"))).continue_processing
    # another prefix: other cells
    e = make_plugin(dict(cfg, redis_key_prefix=f"shared-other-{engine}"))
    assert (await e.tool_pre_invoke(tool(), ctx(user="u-shared"))).http_headers["X-RateLimit-Remaining"] == "2"
    await c.shutdown(); await d.shutdown(); await e.shutdown()


async def test_engines_do_not_share_python_and_rust_state():
    # Same config, different engines: each engine keeps its own process-wide store.
    cfg = {"by_user": "1/h", "by_tool": {"engine-separation": "9/h"}, "redis_key_prefix": "sep"}
    r = make_plugin(dict(cfg, engine="rust"))
    p = make_plugin(dict(cfg, engine="python"))
    assert (await r.tool_pre_invoke(tool(), ctx(user="sep"))).continue_processing
    assert (await p.tool_pre_invoke(tool(), ctx(user="sep"))).continue_processing


async def test_unexpected_context_never_raises(engine):
    p, _ = fresh({"by_user": "1/m"}, engine)

    class Weird:
        global_context = None

    r = await p.tool_pre_invoke(tool(), Weird())
    assert r.continue_processing  # fail_mode open
    q, _ = fresh({"by_user": "1/m", "fail_mode": "closed"}, engine)
    r = await q.tool_pre_invoke(tool(), Weird())
    assert r.violation.code == "BACKEND_UNAVAILABLE"


async def test_threads_share_one_plugin(engine):
    p, _ = fresh({"by_user": "1000/m"}, engine)

    def work():
        async def run():
            for _ in range(100):
                await p.tool_pre_invoke(tool(), ctx(user="t"))
        asyncio.run(run())

    import threading
    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    r = await p.tool_pre_invoke(tool(), ctx(user="t"))
    assert r.http_headers["X-RateLimit-Remaining"] == str(1000 - 401)


@pytest.mark.parametrize("release_gil", [False, True])
@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
async def test_threads_exact_with_and_without_gil(release_gil, algorithm):
    """4 threads on one Engine and one key: exactly the limit is admitted in every dimension,
    whether the memory check keeps the GIL (default) or releases it."""
    import json
    import threading

    from ratewall._ratewall import Engine

    cfg = {"by_user": "150/m", "by_tool": {"search": "150/m"}, "algorithm": algorithm}
    e = Engine(json.dumps(cfg), ManualClock(T0), release_gil)
    codes: list[int] = []
    lock = threading.Lock()

    def work():
        mine = [e.check("t", None, None, "search", True)[0] for _ in range(100)]
        with lock:
            codes.extend(mine)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert codes.count(1) == 150 and codes.count(2) == 250
