"""The batch `/check` (`calls`) on the real ratewall-server, on its memory store and on a real
redis-server: one plan for every call, all-or-nothing, one Redis script call per request."""

import pytest

from envoy_rig import away_from_window_edge

ALGORITHMS = ["fixed_window", "sliding_window", "sliding_window_counter", "token_bucket", "gcra"]


def script_calls(redis_server):
    """Executed Lua scripts (an EVALSHA answered NOSCRIPT is re-sent as EVAL)."""
    stats = redis_server.client.info("commandstats")
    return sum(v["calls"] - v.get("failed_calls", 0) for k, v in stats.items()
               if k in ("cmdstat_evalsha", "cmdstat_eval"))


def config(backend, redis_server, algorithm):
    policy = (f"algorithm: {algorithm}\nby_user: \"10/h\"\nby_tenant: \"100/h\"\n"
              "by_tool:\n  echo: \"1/h\"\n  add: \"5/h\"\n")
    if backend == "redis":
        # no negative cache: every request is one script call, denied or not
        return policy + f"backend: redis\nredis_url: {redis_server.url}\nredis_negative_cache_keys: 0\n"
    return policy + "backend: memory\n"


@pytest.fixture
def maybe_redis(request):
    """A real redis-server for the Redis cases (none for memory)."""
    if request.node.callspec.params["backend"] != "redis":
        return None
    return request.getfixturevalue("redis_server")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_batch_is_one_atomic_decision(servers, maybe_redis, backend, algorithm):
    s = servers(config(backend, maybe_redis, algorithm))
    away_from_window_edge(3600, 5)  # fixed windows: the scenario stays inside one
    scripts = script_calls(maybe_redis) if maybe_redis else 0
    who = {"user": "alice", "tenant": "acme"}
    # denied by echo (2 calls over its limit of 1): nothing consumed for add, user or tenant
    r = s.check({**who, "calls": [{"tool": "add", "cost": 1}, {"tool": "echo", "cost": 2}]})
    assert r.status_code == 429, r.text
    v = r.json()
    assert v["reason"] == "cost_exceeds_limit" and v["retry_after"] is None
    assert [d["dimension"] for d in v["dimensions"]] == ["user", "tenant", "tool", "tool"]
    assert v["calls"] == [
        {"tool": "add", "cost": 1, "dimensions": [0, 1, 2], "limited": False},
        {"tool": "echo", "cost": 2, "dimensions": [0, 1, 3], "limited": True},
    ]
    assert r.headers["X-RateLimit-Limit"] == "1"
    assert [h for h in v["headers"] if h[0] == "X-RateLimit-Limit"] == [["X-RateLimit-Limit", "1"]]
    r = s.check({**who, "tool": "add"})
    assert r.status_code == 200 and r.json()["remaining"] == 4, r.text
    assert [d["remaining"] for d in r.json()["dimensions"]] == [9, 99, 4]
    # admitted: every call consumed once, the headers report the fewest left (echo: 0)
    r = s.check({**who, "calls": [{"tool": "add", "cost": 2}, {"tool": "echo"}]})
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["remaining"] == 0 and r.headers["X-RateLimit-Remaining"] == "0"
    assert [d["remaining"] for d in v["dimensions"]] == [6, 96, 2, 0]
    # echo spent: the batch is limited (retryable) and takes nothing
    r = s.check({**who, "calls": [{"tool": "add"}, {"tool": "echo"}]})
    assert r.status_code == 429 and r.json()["reason"] == "limited", r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert [c["limited"] for c in r.json()["calls"]] == [False, True]
    r = s.check({**who, "tool": "add"})
    assert r.status_code == 200 and r.json()["remaining"] == 1, r.text
    assert s.metric('ratewall_check_duration_seconds_count{endpoint="check"}') == 5
    if maybe_redis:
        assert script_calls(maybe_redis) == scripts + 5  # one script call per request
