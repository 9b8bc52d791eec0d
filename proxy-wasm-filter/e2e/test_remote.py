"""ratewall-filter in a real Envoy 1.40, mode: remote, against a real ratewall-server on a real
redis-server (or on its memory store). "Slow" is the real server frozen with SIGSTOP; "down" is
nothing listening."""

import os
import shutil
import signal
import time

import pytest
import requests

from conftest import (
    SERVER_BIN,
    envoy_config,
    free_port,
    hammer,
    mcp_call,
    post_json,
    start_process,
    stop_process,
    wait_port,
    wasm_filter,
)

pytestmark = pytest.mark.skipif(
    not SERVER_BIN.exists() or shutil.which("redis-server") is None,
    reason="needs target/release/ratewall-server (cargo build --release --workspace --exclude ratewall-filter) and redis-server",
)


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    p = start_process(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(d)],
        d / "redis.log",
    )
    wait_port(port, proc=p)
    yield f"redis://127.0.0.1:{port}"
    stop_process(p)


@pytest.fixture
def check_service(tmp_path, redis):
    """Start ratewall-server with a policy (YAML text) on Redis or memory; returns its port."""
    procs = []

    def start(policy, backend="redis"):
        port = free_port()
        cfg = tmp_path / f"server-{port}.yaml"
        store = (f"backend: redis\nredis_url: {redis}\nredis_key_prefix: rw{port}\n"
                 "redis_negative_cache_keys: 0\n") if backend == "redis" else "backend: memory\n"
        cfg.write_text(policy + f"\n{store}listen: 127.0.0.1:{port}\ngrpc_listen: \"off\"\n")
        p = start_process([str(SERVER_BIN), "--config", str(cfg)], tmp_path / f"server-{port}.log", env=dict(os.environ, RUST_LOG="warn"))
        procs.append(p)
        wait_port(port, proc=p)
        return port, p

    yield start
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
        stop_process(p)


def remote_filter(port_name="ratewall", **extra):
    cfg = {"mode": "remote", "remote_cluster": port_name, "remote_timeout_ms": 300}
    cfg.update(extra)
    return wasm_filter(cfg)


def test_two_envoys_share_one_limit(envoys, upstream, check_service):
    port, _ = check_service('by_user: "300/h"\nalgorithm: gcra')
    envs = [
        envoys(envoy_config([remote_filter()], upstream, extra_clusters=[("ratewall", port)]), concurrency=2)
        for _ in range(2)
    ]
    import threading

    results = []

    def run(e):
        results.append(hammer(e.port, "/direct", 400, conns=4, headers={"x-user-id": "shared"}))

    threads = [threading.Thread(target=run, args=(e,)) for e in envs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    allowed = sum(r[200] for r in results)
    denied = sum(r[429] for r in results)
    assert (allowed, denied) == (300, 500), results
    assert all(r[200] > 0 for r in results), results  # both Envoys admitted some


def test_remote_headers_and_denials(envoys, upstream, check_service):
    port, _ = check_service('by_user: "2/m"\nby_tool:\n  echo: "1/m"')
    e = envoys(envoy_config([remote_filter()], upstream, extra_clusters=[("ratewall", port)]))
    h = {"x-user-id": "r-user"}
    r = requests.get(e.url + "/api", headers=h)
    assert r.status_code == 200 and r.json()["path"] == "/api"
    assert r.headers["x-ratelimit-limit"] == "2" and r.headers["x-ratelimit-remaining"] == "1"
    r = post_json(e.url + "/mcp", mcp_call("echo", 1), h)
    assert r.status_code == 200
    r = post_json(e.url + "/mcp", mcp_call("echo", "two"), h)
    assert r.status_code == 429
    assert r.json()["id"] == "two" and r.json()["error"]["code"] == -32000
    assert int(r.headers["retry-after"]) >= 1
    r = requests.get(e.url + "/api", headers=h)
    assert r.status_code == 429 and r.json()["error"] == "rate_limited"
    # a batch of 2 is one check with cost 2: over the user's limit for a fresh user -> denied
    r = post_json(e.url + "/mcp", [mcp_call("add", 1), mcp_call("add", 2), mcp_call("add", 3)], {"x-user-id": "b"})
    assert r.status_code == 429 and [x["id"] for x in r.json()] == [1, 2, 3]
    r = post_json(e.url + "/mcp", [mcp_call("add", 1), mcp_call("add", 2)], {"x-user-id": "b"})
    assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "0"


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
def test_check_service_down_or_slow(envoys, upstream, check_service, fail_mode):
    port, proc = check_service('by_user: "100/m"')
    dead = free_port()  # nothing listens here
    e = envoys(
        envoy_config(
            [remote_filter(fail_mode=fail_mode, remote_timeout_ms=200)],
            upstream,
            extra_clusters=[("ratewall", port)],
        )
    )
    down = envoys(envoy_config([remote_filter(fail_mode=fail_mode)], upstream, extra_clusters=[("ratewall", dead)]))
    h = {"x-user-id": "f"}
    assert requests.get(e.url + "/direct", headers=h).status_code == 200
    os.kill(proc.pid, signal.SIGSTOP)  # slow: accepts connections, never answers
    try:
        t0 = time.time()
        r = requests.get(e.url + "/direct", headers=h, timeout=10)
        elapsed = time.time() - t0
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert elapsed < 3, elapsed
    for resp in (r, requests.get(down.url + "/direct", headers=h, timeout=10)):
        if fail_mode == "open":
            assert resp.status_code == 200
            assert "x-ratelimit-limit" not in resp.headers
        else:
            assert resp.status_code == 503
            assert resp.headers["retry-after"] == "1"
            assert resp.json()["error"] == "rate_limiter_unavailable"
    if fail_mode == "closed":
        r = post_json(down.url + "/mcp", mcp_call("x", 42), h)
        assert r.status_code == 503 and r.json()["id"] == 42
    # the service answers again after SIGCONT
    assert requests.get(e.url + "/direct", headers=h).status_code == 200


def service_checks(port):
    """Decisions ratewall-server took on /check (its latency histogram's count)."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('ratewall_check_duration_seconds_count{endpoint="check"} '):
            return int(line.rsplit(" ", 1)[1])
    raise AssertionError(text)


def script_calls(redis_url):
    """Lua script executions on the Redis server (an EVALSHA answered NOSCRIPT is re-sent as EVAL)."""
    import redis as redis_py

    stats = redis_py.Redis.from_url(redis_url).info("commandstats")
    return sum(v["calls"] - v.get("failed_calls", 0) for k, v in stats.items()
               if k in ("cmdstat_evalsha", "cmdstat_eval"))


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_batch_is_one_atomic_check(envoys, upstream, check_service, redis, backend):
    """An MCP batch naming several tools is one /check carrying every group, decided as one plan
    with one store call: denied by one tool, it consumes nothing for the others."""
    policy = 'algorithm: sliding_window\nby_user: "10/m"\nby_tool:\n  echo: "1/m"'
    port, _ = check_service(policy, backend=backend)
    e = envoys(envoy_config([remote_filter()], upstream, extra_clusters=[("ratewall", port)]))
    h = {"x-user-id": "batcher"}
    checks, scripts = service_checks(port), script_calls(redis)
    # [add, echo, echo]: echo's 2 calls are over its limit of 1, so the whole batch is denied
    r = post_json(e.url + "/mcp", [mcp_call("add", 1), mcp_call("echo", 2), mcp_call("echo", 3)], h)
    assert r.status_code == 429, r.text
    assert [x["id"] for x in r.json()] == [1, 2, 3]
    assert r.headers["x-ratelimit-limit"] == "1"  # the core's headers for the whole decision
    assert service_checks(port) == checks + 1
    # nothing was consumed for add: the user's next single add sees 9 of 10 left (not 8)
    r = post_json(e.url + "/mcp", mcp_call("add", 4), h)
    assert r.status_code == 200, r.text
    assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) == ("10", "9")
    # an admitted batch [add, echo, tools/list]: one check; the headers report the cell with
    # the fewest units left (echo's), and the user's cell took all three calls
    batch = [mcp_call("add", 5), mcp_call("echo", 6), mcp_call("x", 7, method="tools/list")]
    r = post_json(e.url + "/mcp", batch, h)
    assert r.status_code == 200, r.text
    assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) == ("1", "0")
    r = requests.get(e.url + "/api", headers=h)
    assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) == ("10", "5")
    # [add, echo] again: echo is spent (retry later), so add takes nothing from the user
    r = post_json(e.url + "/mcp", [mcp_call("add", 8), mcp_call("echo", 9)], h)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    r = post_json(e.url + "/mcp", mcp_call("add", 10), h)
    assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "4"
    assert service_checks(port) == checks + 6  # one /check per request
    if backend == "redis":
        assert script_calls(redis) == scripts + 6  # one script call per request
