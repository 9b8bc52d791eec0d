"""ratewall-filter in a real Envoy 1.40 (V8), mode: local."""

import http.client
import json

from conftest import envoy_config, hammer, mcp_call, post_json, wasm_filter

import requests


def test_exact_across_two_workers(envoys, upstream):
    """--concurrency 2, 3000 requests on one key with limit 1000: exactly 1000 admitted. The user
    and the shared tenant cell are in different slots for most users, so both the single-slot CAS
    path and the multi-slot lock path run concurrently on both workers."""
    e = envoys(
        envoy_config([wasm_filter({"by_user": "1000/h", "by_tenant": "100000/h"})], upstream),
        concurrency=2,
    )
    counts = hammer(e.port, "/direct", 3000, conns=8, headers={"x-user-id": "hot", "x-tenant-id": "acme"})
    assert counts == {200: 1000, 429: 2000}, counts
    st = e.stats("downstream_cx_total")
    per_worker = [v for k, v in st.items() if ".worker_" in k]
    assert len(per_worker) == 2 and all(v >= 2 for v in per_worker), st
    # the tenant counted exactly the admitted requests
    r = requests.get(e.url + "/direct", headers={"x-user-id": "other", "x-tenant-id": "acme"})
    assert r.status_code == 200
    # reported cell: the one with the fewest left (user 'other' has 999 left, tenant 98999)
    assert r.headers["x-ratelimit-remaining"] == "999"


def test_allowed_headers_reach_client_and_denial_body(envoys, upstream):
    e = envoys(envoy_config([wasm_filter({"by_user": "3/m"})], upstream))
    for left in (2, 1, 0):
        r = requests.get(e.url + "/api", headers={"x-user-id": "alice"})
        assert r.status_code == 200
        assert r.json()["path"] == "/api"  # the upstream answered
        assert r.headers["x-ratelimit-limit"] == "3"
        assert r.headers["x-ratelimit-remaining"] == str(left)
        assert int(r.headers["x-ratelimit-reset"]) > 1_700_000_000
        assert "retry-after" not in r.headers
    r = requests.get(e.url + "/api", headers={"x-user-id": "alice"})
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-ratelimit-remaining"] == "0"
    retry = int(r.headers["retry-after"])
    assert 1 <= retry <= 60
    body = r.json()
    assert body["error"] == "rate_limited" and body["reason"] == "limited"
    assert body["retry_after"] == retry and body["limit"] == 3 and body["remaining"] == 0
    # other users are independent; no user header = "anonymous"
    assert requests.get(e.url + "/api", headers={"x-user-id": "bob"}).status_code == 200
    assert requests.get(e.url + "/api").status_code == 200


def test_ietf_headers(envoys, upstream):
    e = envoys(envoy_config([wasm_filter({"by_user": "5/s", "headers": "ietf"})], upstream))
    r = requests.get(e.url + "/direct", headers={"x-user-id": "u"})
    assert r.status_code == 200
    assert r.headers["ratelimit-policy"] == '"by_user";q=5;w=1'
    assert r.headers["ratelimit"].startswith('"by_user";r=4;t=')
    assert "x-ratelimit-limit" not in r.headers


def test_mcp_tools_call_per_tool_limits(envoys, upstream):
    cfg = {"by_user": "100/m", "by_tool": {"echo": "2/m", "summary": "1/m"}}
    e = envoys(envoy_config([wasm_filter(cfg)], upstream))
    h = {"x-user-id": "mcp-user"}
    for i in range(2):
        r = post_json(e.url + "/mcp", mcp_call("Echo", i), h)
        assert r.status_code == 200, r.text
        assert r.json()["body_len"] > 0  # the upstream received the whole body
        assert r.headers["x-ratelimit-limit"] == "2"
    r = post_json(e.url + "/mcp", mcp_call("echo", "req-3"), h)
    assert r.status_code == 429
    body = r.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == "req-3"
    assert body["error"]["code"] == -32000
    assert body["error"]["data"]["reason"] == "limited"
    assert body["error"]["data"]["retry_after"] == int(r.headers["retry-after"])
    # another tool, tools/list, and prompts/get (same table) are independent
    assert post_json(e.url + "/mcp", mcp_call("add", 4), h).status_code == 200
    assert post_json(e.url + "/mcp", {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}, h).status_code == 200
    assert post_json(e.url + "/mcp", mcp_call("summary", 6, "prompts/get"), h).status_code == 200
    r = post_json(e.url + "/mcp", mcp_call("summary", 7, "prompts/get"), h)
    assert r.status_code == 429 and r.json()["id"] == 7


def test_mcp_batches_count_every_call(envoys, upstream):
    cfg = {"by_user": "5/m", "by_tool": {"echo": "3/m"}}
    e = envoys(envoy_config([wasm_filter(cfg)], upstream))
    h = {"x-user-id": "batcher"}
    r = post_json(e.url + "/mcp", [mcp_call("echo", 1), mcp_call("echo", 2)], h)
    assert r.status_code == 200
    # 2 echo + 1 more echo would be 3 (ok) but 2 more echo is 4 > 3: denied as a whole
    r = post_json(e.url + "/mcp", [mcp_call("echo", 3), mcp_call("add", 4), mcp_call("echo", 5)], h)
    assert r.status_code == 429
    body = r.json()
    assert isinstance(body, list) and [x["id"] for x in body] == [3, 4, 5]
    assert all(x["error"]["code"] == -32000 for x in body)
    # the denied batch consumed nothing: user has 3 left, echo 1
    r = post_json(e.url + "/mcp", [mcp_call("echo", 6), mcp_call("add", 7)], h)
    assert r.status_code == 200
    assert r.headers["x-ratelimit-remaining"] == "0"  # echo 0 left (user 1 left)
    r = post_json(e.url + "/mcp", [{"jsonrpc": "2.0", "id": 8, "method": "tools/list"}], h)
    assert r.status_code == 200  # user: last unit
    r = post_json(e.url + "/mcp", [{"jsonrpc": "2.0", "method": "notifications/x"}], h)
    assert r.status_code == 429
    assert r.json() == [
        {"jsonrpc": "2.0", "id": None, "error": r.json()[0]["error"]},
    ]


def test_batch_with_too_many_distinct_tools_is_refused(envoys, upstream):
    cfg = {"by_user": "100/m"}
    e = envoys(envoy_config([wasm_filter(cfg)], upstream))
    h = {"x-user-id": "wide-batch"}
    calls = [mcp_call(f"tool{i}", i) for i in range(33)]
    r = post_json(e.url + "/mcp", calls, h)
    assert r.status_code == 400, r.text
    body = r.json()
    assert isinstance(body, list) and len(body) == 33
    assert "33 distinct tools" in body[0]["error"]["message"] + str(body[0]["error"].get("data"))
    # nothing was consumed, and 32 distinct tools are fine
    r = post_json(e.url + "/mcp", calls[:32], h)
    assert r.status_code == 200
    assert r.headers["x-ratelimit-remaining"] == "68"


def test_oversized_and_malformed_bodies_skip_the_tool(envoys, upstream):
    cfg = {"by_user": "100/m", "by_tool": {"echo": "1/m"}, "max_body_bytes": 1024}
    e = envoys(envoy_config([wasm_filter(cfg)], upstream))
    h = {"x-user-id": "big"}
    assert post_json(e.url + "/mcp", mcp_call("echo", 1), h).status_code == 200
    assert post_json(e.url + "/mcp", mcp_call("echo", 2), h).status_code == 429
    # oversized: decided without reading the body (tool skipped); the upstream gets all of it
    big = mcp_call("echo", 3)
    big["params"]["arguments"] = {"pad": "x" * 200_000}
    r = post_json(e.url + "/mcp", big, h)
    assert r.status_code == 200, r.text
    assert r.json()["body_len"] == len(json.dumps(big))
    assert r.headers["x-ratelimit-limit"] == "100"
    # chunked oversized body
    r = requests.post(e.url + "/mcp", data=iter([b"[" * 600, b"]" * 600]), headers=h)
    assert r.status_code == 200 and r.json()["body_len"] == 1200
    # malformed and non-MCP bodies: counted for the user, no tool
    bodies = [
        b"not json",
        b'{"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo"',
        b"[]",
        b"\xff\xfe\x00garbage",
        b"[" * 1000,
        json.dumps({"name": "echo"}).encode(),
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 12}}).encode(),
    ]
    for b in bodies:
        r = post_json(e.url + "/mcp", None, h, raw=b)
        assert r.status_code == 200, (b[:40], r.status_code, r.text)
    r = requests.get(e.url + "/direct", headers=h)
    assert r.headers["x-ratelimit-remaining"] == str(100 - 4 - len(bodies))


def test_non_post_and_header_tool(envoys, upstream):
    cfg = {"by_tool": {"search": "1/m"}, "tool_header": "x-tool"}
    e = envoys(envoy_config([wasm_filter(cfg)], upstream))
    assert requests.get(e.url + "/direct", headers={"x-tool": "search"}).status_code == 200
    assert requests.get(e.url + "/direct", headers={"x-tool": "Search"}).status_code == 429
    assert requests.get(e.url + "/direct", headers={"x-tool": "other"}).status_code == 200
    r = requests.get(e.url + "/direct")
    assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers  # nothing applies


def test_per_server_limits_need_the_server_id(envoys, upstream):
    cfg = {"by_user_per_server": "1/m", "by_tool": {"echo": "10/m"}}
    e = envoys(envoy_config([wasm_filter(cfg)], upstream))
    r = post_json(e.url + "/mcp", mcp_call("echo", 9), {"x-user-id": "u"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == -32602 and r.json()["id"] == 9
    h = {"x-user-id": "u", "x-server-id": "gw-1"}
    assert post_json(e.url + "/mcp", mcp_call("echo", 1), h).status_code == 200
    assert post_json(e.url + "/mcp", mcp_call("echo", 2), h).status_code == 429
    h2 = {"x-user-id": "u", "x-server-id": "gw-2"}
    assert post_json(e.url + "/mcp", mcp_call("echo", 3), h2).status_code == 200


def test_hostile_headers_never_trap(envoys, upstream):
    e = envoys(envoy_config([wasm_filter({"by_user": "2/m", "by_tenant": "5/m"})], upstream))
    c = http.client.HTTPConnection("127.0.0.1", e.port, timeout=10)
    statuses = []
    bodies = []
    for value in [b"\xff\xfe", b"caf\xc3\xa9", b"x" * 8000, b"  ", b"a\tb", b"\xfe\xff"]:
        c.putrequest("GET", "/direct")
        c.putheader("x-user-id", value)
        c.putheader("x-tenant-id", value)
        c.endheaders()
        r = c.getresponse()
        bodies.append(r.read())
        statuses.append(r.status)
    # Non-UTF-8 identities are refused (400 naming the header, as ratewall-server does): decoded
    # lossily, b"\xff\xfe" and b"\xfe\xff" would share one counter.
    assert statuses[0] == statuses[5] == 400, statuses
    assert b"x-user-id is not valid UTF-8" in bodies[0], bodies[0]
    assert set(statuses[1:5]) <= {200, 429}, statuses
    # the VM is alive and still counting
    assert requests.get(e.url + "/direct", headers={"x-user-id": "z"}).status_code == 200


def test_bounded_key_space_and_reclaim(envoys, upstream):
    """Many users with a 1 s window in a 64-cell table: evictions keep it bounded, the tick
    reclaims expired cells, and decisions stay right for a live user."""
    cfg = {"by_user": "2/s", "algorithm": "gcra", "local_max_keys": 64, "reclaim_interval_ms": 200}
    e = envoys(envoy_config([wasm_filter(cfg)], upstream))
    for i in range(300):
        requests.get(e.url + "/direct", headers={"x-user-id": f"user-{i}"})
    s = requests.Session()
    assert [s.get(e.url + "/direct", headers={"x-user-id": "live"}).status_code for _ in range(3)] == [200, 200, 429]
    import time

    deadline = time.time() + 10
    while "reclaimed" not in e.log_text() and time.time() < deadline:
        time.sleep(0.2)
    assert "reclaimed" in e.log_text()
