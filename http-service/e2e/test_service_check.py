"""ratewall-server on the memory store: POST /check, /authz, health, metrics, bad input, CLI."""

import json
import socket
import subprocess
import time

import requests
import yaml

from service_harness import BIN, free_port

POLICY = """
algorithm: sliding_window
by_user: "3/m"
by_user_per_server: "2/m"
by_tool:
  Search: "10/m"
limits:
  - name: api_key
    descriptors: [key]
    rate: "4/m"
headers: both
authz:
  cost_header: x-cost
  descriptors:
    key: x-api-key
    path: ":path"
"""


def test_check_allows_then_denies_with_core_headers(servers):
    s = servers(POLICY)
    for i in range(3):
        r = s.check({"user": "alice"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["allowed"] is True and body["reason"] is None
        assert body["limit"] == 3 and body["remaining"] == 2 - i
        assert body["retry_after"] is None
        assert r.headers["X-RateLimit-Limit"] == "3"
        assert r.headers["X-RateLimit-Remaining"] == str(2 - i)
        assert r.headers["RateLimit"] == f'"by_user";r={2 - i};t={int(r.headers["RateLimit"].split("t=")[1])}'
        # the body's headers are exactly the HTTP headers, in render order
        assert [h[0] for h in body["headers"]] == [
            "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "RateLimit-Policy", "RateLimit"]
        for name, value in body["headers"]:
            assert r.headers[name] == value
        assert body["reset"] == int(r.headers["X-RateLimit-Reset"])
        assert body["dimensions"] == [
            {"dimension": "user", "name": "by_user", "limit": 3, "window": 60, "allowed": True, "remaining": 2 - i,
             "shadow": False}]
    r = s.check({"user": "alice"})
    assert r.status_code == 429
    body = r.json()
    assert body["allowed"] is False and body["reason"] == "limited"
    assert body["remaining"] == 0 and body["retry_after"] >= 1
    assert r.headers["Retry-After"] == str(body["retry_after"])
    assert body["headers"][-1] == ["Retry-After", str(body["retry_after"])]
    assert body["reset"] == int(r.headers["X-RateLimit-Reset"])
    assert abs(body["reset"] - (time.time() + body["retry_after"])) <= 2
    # another user is independent
    assert s.check({"user": "bob"}).status_code == 200


def test_check_all_dimensions_and_cost(servers):
    s = servers(POLICY)
    r = s.check({"user": "u1", "server": "srv-1", "tool": " SEARCH ", "descriptors": {"key": "k1"}, "cost": 2})
    assert r.status_code == 200, r.text
    dims = {d["dimension"]: d for d in r.json()["dimensions"]}
    assert set(dims) == {"user", "user_per_server", "tool", "descriptor"}
    assert dims["user_per_server"]["remaining"] == 0
    assert dims["descriptor"]["name"] == "api_key" and dims["descriptor"]["remaining"] == 2
    # the per-server cell is exhausted: all-or-nothing, nothing else is consumed
    r = s.check({"user": "u1", "server": "srv-1", "tool": "search", "descriptors": {"key": "k1"}})
    assert r.status_code == 429
    # the denial consumed nothing: the user cell still has exactly one unit
    r = s.check({"user": "u1"})
    assert r.status_code == 200 and r.json()["remaining"] == 0
    assert s.check({"user": "u1"}).status_code == 429
    # cost above a limit can never pass: no Retry-After
    r = s.check({"user": "u2", "cost": 4})
    assert r.status_code == 429
    assert r.json()["reason"] == "cost_exceeds_limit" and r.json()["retry_after"] is None
    assert "Retry-After" not in r.headers


def test_no_limit_applies_means_allowed_without_headers(servers):
    s = servers('by_tool: {search: "1/m"}\n')
    r = s.check({"tool": "other"})
    assert r.status_code == 200
    assert r.json() == {"allowed": True, "shadow_denied": False, "reason": None, "limit": None, "remaining": None,
                        "reset": None, "retry_after": None, "headers": [], "dimensions": []}
    assert "X-RateLimit-Limit" not in r.headers


def test_bad_input_is_400_naming_the_problem(servers):
    s = servers(POLICY)
    url = s.url + "/check"
    cases = [
        (b"{not json", None, "invalid request body"),
        (b"", None, "empty request body"),
        (b"[1,2]", None, "invalid request body"),
        (b'{"user": 5}', "user", "invalid type"),
        (b'{"cost": "2"}', "cost", "invalid type"),
        (b'{"cost": -1}', "cost", "invalid value"),
        (b'{"cost": 1.5}', "cost", "invalid type"),
        (b'{"cost": 0}', "cost", "≥ 1"),
        (b'{"cost": 99999999999999999999}', "cost", None),
        (b'{"cost": 1000000000000}', "cost", "exceeds the maximum"),
        (b'{"descriptors": {"key": 1}}', "descriptors.key", "invalid type"),
        (b'{"descriptors": ["key"]}', "descriptors", "invalid type"),
        (b'{"usr": "alice"}', "usr", "unknown field `usr`"),
        (b'{"user": "a"} trailing', None, "trailing characters"),
        (b'{"user": "a", "server": "bad server!"}', "server", "may contain only"),
        (b'{"user": "a", "server": "  "}', "server", "required"),
        (b'{"user": "a", "server": "' + b"s" * 200 + b'"}', "server", "128 bytes"),
        (b'{"user": "' + b"a" * (70 * 1024) + b'"}', None, "exceeds 65536 bytes"),
    ]
    for raw, field, needle in cases:
        r = requests.post(url, data=raw, headers={"content-type": "application/json"}, timeout=5)
        assert r.status_code == 400, (raw[:60], r.status_code, r.text)
        body = r.json()
        assert body.get("field") == field, (raw[:60], body)
        if needle:
            assert needle in body["error"], (raw[:60], body)
    # chunked upload over 64 KiB (no Content-Length)
    r = requests.post(url, data=(b"x" * 1024 for _ in range(80)), timeout=5)
    assert r.status_code == 400 and "exceeds" in r.json()["error"]
    # nothing was counted for any of these
    assert s.check({"user": "a"}).json()["remaining"] == 2
    assert s.metric('ratewall_bad_requests_total{endpoint="check"}') == len(cases) + 1
    # wrong method / unknown path: JSON errors too, never 500
    r = requests.get(url, timeout=5)
    assert r.status_code == 405 and "not allowed" in r.json()["error"]
    r = requests.get(s.url + "/nope", timeout=5)
    assert r.status_code == 404 and "/check" in r.json()["error"]


def test_absent_server_skips_per_server_limit(servers):
    s = servers(POLICY)
    r = s.check({"user": "carol"})
    assert [d["dimension"] for d in r.json()["dimensions"]] == ["user"]


def test_slow_body_times_out_with_408(servers):
    s = servers('by_user: "5/m"\nrequest_timeout_ms: 300\n')
    with socket.create_connection(("127.0.0.1", s.port)) as c:
        c.sendall(b"POST /check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
        c.settimeout(5)
        t0 = time.monotonic()
        data = c.recv(4096)
        assert data.startswith(b"HTTP/1.1 408"), data
        assert 0.2 < time.monotonic() - t0 < 3
    assert s.metric("ratewall_request_timeouts_total") == 1
    # headers that never complete: the connection is closed after request_timeout_ms
    with socket.create_connection(("127.0.0.1", s.port)) as c:
        c.sendall(b"POST /check HTTP/1.1\r\nHost: x\r\n")
        c.settimeout(5)
        t0 = time.monotonic()
        data = c.recv(4096)
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
        assert 0.2 < time.monotonic() - t0 < 3


def test_authz_proxy_mode(servers):
    s = servers(POLICY)
    base = s.url + "/authz"
    # identity from headers, any method, any path below /authz
    for i, (method, path) in enumerate([("GET", ""), ("POST", "/some/path?q=1"), ("DELETE", "/x")]):
        r = requests.request(method, base + path, headers={"x-user-id": "dave"}, timeout=5)
        assert r.status_code == 200, r.text
        assert r.headers["X-RateLimit-Remaining"] == str(2 - i)
    r = requests.get(base, headers={"x-user-id": "dave"}, timeout=5)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == str(r.json()["retry_after"])
    assert r.headers["X-RateLimit-Remaining"] == "0"
    # tool, server, cost and descriptor headers
    h = {"x-user-id": "erin", "x-mcp-tool": "Search", "x-mcp-server": "s1", "x-api-key": "K", "x-cost": "2"}
    r = requests.put(base + "/v1/tools", headers=h, timeout=5)
    assert r.status_code == 200, r.text
    assert {d["dimension"] for d in r.json()["dimensions"]} == {"user", "user_per_server", "tool", "descriptor"}
    # bad identity headers: 400 naming the header
    r = requests.get(base, headers={"x-user-id": "f", "x-cost": "zero"}, timeout=5)
    assert r.status_code == 400 and "x-cost" in r.json()["error"]
    r = requests.get(base, headers={"x-user-id": "f", "x-mcp-server": "bad id"}, timeout=5)
    assert r.status_code == 400 and "x-mcp-server" in r.json()["error"]


def test_authz_path_descriptor(servers):
    cfg = """
algorithm: sliding_window
limits:
  - name: per_path
    descriptors: [path, method]
    rate: "1/m"
authz:
  descriptors: {path: ":path", method: ":method"}
"""
    s = servers(cfg)
    base = s.url + "/authz"
    assert requests.get(base + "/a", timeout=5).status_code == 200
    assert requests.get(base + "/a", timeout=5).status_code == 429
    assert requests.post(base + "/a", timeout=5).status_code == 200
    assert requests.get(base + "/b", timeout=5).status_code == 200
    # nginx / Traefik forward the original request line in headers
    assert requests.get(base, headers={"x-original-uri": "/c", "x-original-method": "GET"}, timeout=5).status_code == 200
    assert requests.get(base, headers={"x-forwarded-uri": "/c", "x-forwarded-method": "GET"}, timeout=5).status_code == 429


def test_health_ready_metrics(servers):
    s = servers(POLICY)
    assert requests.get(s.url + "/healthz", timeout=5).json() == {"status": "ok"}
    r = requests.get(s.url + "/readyz", timeout=5)
    assert r.status_code == 200 and r.json() == {"ready": True, "backend": "memory"}
    for _ in range(3):
        s.check({"user": "m"})
    s.check({"user": "m"})
    s.check({"user": "x", "cost": 9})
    s.check({"tool": "unlisted", "user": None})
    r = requests.get(s.url + "/metrics", timeout=5)
    assert r.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    text = r.text
    assert 'ratewall_decisions_total{limit="by_user",dimension="user",outcome="allowed"} 4' in text
    assert 'ratewall_decisions_total{limit="by_user",dimension="user",outcome="limited"} 1' in text
    assert 'ratewall_decisions_total{limit="by_user",dimension="user",outcome="cost_exceeds_limit"} 1' in text
    # 3/m: the 3rd request leaves 0 remaining (≥ 80 % used); 2nd leaves 1 (66 %)
    assert 'ratewall_near_limit_total{limit="by_user",dimension="user"} 1' in text
    assert "ratewall_backend_errors_total 0" in text
    assert 'ratewall_fail_mode_decisions_total{fail_mode="open"} 0' in text
    assert "ratewall_evictions_total 0" in text
    assert "ratewall_negative_cache_hits_total 0" in text
    assert 'ratewall_check_duration_seconds_count{endpoint="check"} 6' in text
    assert 'ratewall_check_duration_seconds_bucket{le="+Inf",endpoint="check"} 6' in text  # prometheus-client puts le first
    # no request values as labels
    for v in ('"m"', '"x"', "unlisted"):
        assert v not in text
    for line in text.splitlines():
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def test_evictions_are_counted(servers):
    s = servers('by_user: "5/m"\nmemory_max_keys: 1024\n')
    for i in range(1400):
        s.check({"user": f"u{i}"})
    assert s.metric("ratewall_evictions_total") > 0
    assert s.metric("ratewall_store_keys") <= 1024 + 64


def test_check_config_cli(tmp):
    good = tmp / "good.yaml"
    good.write_text(POLICY + "listen: 127.0.0.1:9999\n")
    r = subprocess.run([BIN, "--check-config", "--config", good], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    eff = yaml.safe_load(r.stdout)
    assert eff["by_user"] == "3/m" and eff["headers"] == "both" and eff["listen"] == "127.0.0.1:9999"
    assert eff["authz"]["cost_header"] == "x-cost" and eff["authz"]["descriptors"]["path"] == ":path"
    assert eff["request_timeout_ms"] == 5000
    bad = tmp / "bad.yaml"
    for text, needle in [
        ('by_user: "ten per minute"\n', "by_user"),
        ("by_usr: 1/s\n", 'did you mean "by_user"'),
        ("authz: {user_header: 'no spaces'}\n", "authz.user_header"),
        ("request_timeout_ms: -5\n", "request_timeout_ms"),
        ("backend: redis\n", "redis_url"),
        (": : :\n", "YAML"),
        # every check start-up runs: the Redis TLS files are read and validated too
        ("by_user: 1/s\nbackend: redis\nredis_url: rediss://h:1\nredis_ssl_ca_certs: /nonexistent/ca.pem\n",
         "redis_ssl_ca_certs"),
        # a file that configures no limit, or names a key twice
        ("backend: memory\n", "no limit is configured"),
        ("", "the configuration is empty"),
        ("by_user: 1/s\nby_user: 2/s\n", 'duplicate key "by_user" at line 2'),
    ]:
        bad.write_text(text)
        r = subprocess.run([BIN, "--check-config", "--config", bad], capture_output=True, text=True, timeout=20)
        assert r.returncode != 0, text
        assert needle in r.stderr, (text, r.stderr)
    r = subprocess.run([BIN, "--check-config", "--config", tmp / "missing.yaml"], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode != 0 and "cannot read" in r.stderr
    # env overrides: RATEWALL_REDIS_URL replaces redis_url, RATEWALL_LISTEN the listen address
    good.write_text("by_user: 1/s\nbackend: redis\nredis_url: redis://file:1\n")
    r = subprocess.run([BIN, "--check-config", "--config", good], capture_output=True, text=True, timeout=20,
                       env={"RATEWALL_REDIS_URL": "redis://env:2", "RATEWALL_LISTEN": "127.0.0.1:7777"})
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["redis_url"] == "redis://env:2"
    assert "listening on 127.0.0.1:7777" in r.stdout.splitlines()[0]


def test_no_arguments_default_policy(tmp):
    """`ratewall-server` with no arguments: the built-in policy on 127.0.0.1:8080, printed at start."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 8080))
            default_port_free = True
        except OSError:
            default_port_free = False
    env = {"RUST_LOG": "warn"}
    if not default_port_free:  # something else has 8080 here: check the default through the env override
        env["RATEWALL_LISTEN"] = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([BIN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while True:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
            if line.startswith("ratewall-server listening on"):
                break
        addr = line.split("http://")[1].strip()
        if default_port_free:
            assert addr == "127.0.0.1:8080"
        eff = yaml.safe_load("".join(lines[:-1]))
        assert eff["by_user"] == "100/m" and eff["backend"] == "memory"
        assert "built-in default policy" in lines[0]
        r = requests.post(f"http://{addr}/check", json={"user": "x"}, timeout=5)
        assert r.status_code == 200 and r.json()["limit"] == 100
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_json_logs(servers):
    s = servers('by_user: "1/m"\n', env={"RATEWALL_LOG_FORMAT": "json"})
    s.stop()
    lines = [json.loads(line) for line in s.stderr().splitlines() if line.strip()]
    assert any(entry["fields"].get("message") == "listening" for entry in lines)
