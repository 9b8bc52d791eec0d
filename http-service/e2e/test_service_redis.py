"""ratewall-server on a real redis-server: decisions, two instances sharing one limit, readiness,
fail_mode open/closed, reload to another backend, and in-flight requests surviving SIGTERM."""

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from service_harness import wait_until


def redis_cfg(redis, extra=""):
    # duplicate keys are configuration errors: the default timeout only when `extra` sets none
    timeout = "" if "redis_timeout_ms:" in extra else "redis_timeout_ms: 500\n"
    return (f"backend: redis\nredis_url: {redis.url}\nalgorithm: sliding_window\n"
            f"{timeout}{extra}")


def test_redis_backend_endpoints(servers, redis_server):
    s = servers(redis_cfg(redis_server, 'by_user: "3/m"\nby_tool: {search: "5/m"}\n'))
    assert requests.get(s.url + "/readyz", timeout=5).json() == {"ready": True, "backend": "redis"}
    for i in range(3):
        r = s.check({"user": "r", "tool": "search"})
        assert r.status_code == 200 and r.json()["remaining"] == 2 - i, r.text
    r = s.check({"user": "r", "tool": "search"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    r = requests.get(s.url + "/authz/x", headers={"x-user-id": "r"}, timeout=5)
    assert r.status_code == 429 and r.headers["X-RateLimit-Remaining"] == "0"
    assert len(redis_server.client.keys("rl:*")) >= 2  # the counters live in Redis
    text = s.metrics()
    assert 'ratewall_decisions_total{limit="by_user",dimension="user",outcome="allowed"} 3' in text
    assert 'ratewall_store_ready{backend="redis"} 1' in text
    assert "ratewall_negative_cache_hits_total" in text


def test_two_instances_share_one_limit_exactly(servers, redis_server):
    cfg = redis_cfg(redis_server, 'by_user: "50/m"\n')
    a, b = servers(cfg), servers(cfg)

    def hit(i):
        s = a if i % 2 else b
        return requests.post(s.url + "/check", json={"user": "shared"}, timeout=5).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(hit, range(160)))
    assert codes.count(200) == 50, codes
    assert codes.count(429) == 110
    # and each instance saw part of the admitted ones
    allowed = [s.metric('ratewall_decisions_total{limit="by_user",dimension="user",outcome="allowed"}')
               for s in (a, b)]
    assert sum(allowed) == 50 and min(allowed) > 0


def test_backend_down_fail_open_and_closed(servers, redis_server):
    open_ = servers(redis_cfg(redis_server, 'by_user: "5/m"\nfail_mode: open\n'))
    closed = servers(redis_cfg(redis_server, 'by_user: "5/m"\nfail_mode: closed\n'))
    assert open_.check({"user": "x"}).status_code == 200
    redis_server.stop()
    wait_until(lambda: requests.get(open_.url + "/readyz", timeout=5).status_code == 503, timeout=5,
               what="readyz to report the store down")
    r = requests.get(closed.url + "/readyz", timeout=5)
    assert r.status_code == 503 and r.json()["ready"] is False and r.json()["backend"] == "redis"
    r = open_.check({"user": "x"})
    assert r.status_code == 200 and r.json()["allowed"] is True
    assert r.json()["headers"] == [] and "X-RateLimit-Limit" not in r.headers
    r = closed.check({"user": "x"})
    assert r.status_code == 503
    assert r.json()["reason"] == "backend_unavailable" and r.json()["retry_after"] == 1
    assert r.headers["Retry-After"] == "1"
    r = requests.get(closed.url + "/authz", headers={"x-user-id": "x"}, timeout=5)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert open_.metric('ratewall_fail_mode_decisions_total{fail_mode="open"}') == 1
    assert closed.metric('ratewall_fail_mode_decisions_total{fail_mode="closed"}') == 2
    assert closed.metric("ratewall_backend_errors_total") == 2
    # Redis comes back: service resumes, readiness too
    redis_server.start()
    wait_until(lambda: closed.check({"user": "y"}).status_code == 200, timeout=10, what="recovery")
    assert requests.get(closed.url + "/readyz", timeout=5).status_code == 200


def test_reload_memory_to_redis_and_bad_redis(servers, redis_server):
    s = servers('algorithm: sliding_window\nby_user: "4/m"\n')
    assert s.check({"user": "m"}).json()["remaining"] == 3
    s.config_path.write_text(redis_cfg(redis_server, 'by_user: "4/m"\n'))
    wait_until(lambda: s.metric("ratewall_config_generation") == 2, timeout=5, what="reload to redis")
    assert requests.get(s.url + "/readyz", timeout=5).json()["backend"] == "redis"
    assert s.check({"user": "m"}).json()["remaining"] == 3  # a fresh shared counter
    # an invalid Redis URL is rejected; the running store stays
    s.config_path.write_text('backend: redis\nredis_url: "http://nope"\nby_user: "4/m"\n')
    wait_until(lambda: s.metric('ratewall_config_reloads_total{result="rejected"}') == 1, timeout=5,
               what="rejected reload")
    assert s.check({"user": "m"}).json()["remaining"] == 2


def test_in_flight_requests_finish_on_sigterm(servers, redis_server):
    """Requests waiting on a (paused) Redis when SIGTERM arrives still get their decision."""
    s = servers(redis_cfg(redis_server, 'by_user: "100/m"\nredis_timeout_ms: 5000\n'))
    assert s.check({"user": "warm"}).status_code == 200
    # pause every Redis client for 1.5 s: the next checks wait on Redis
    redis_server.client.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    results = []

    def one(i):
        r = requests.post(s.url + "/check", json={"user": f"f{i}"}, timeout=10)
        results.append((r.status_code, r.json()["allowed"], r.json()["remaining"]))

    clients = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for c in clients:
        c.start()
    time.sleep(0.4)  # all 10 are now waiting on Redis
    t0 = time.monotonic()
    s.send(signal.SIGTERM)
    for c in clients:
        c.join(timeout=10)
    rc = s.proc.wait(timeout=10)
    assert rc == 0
    assert sorted(results) == [(200, True, 99)] * 10, results
    assert time.monotonic() - t0 >= 0.5  # the process waited for them
