"""Shadow mode in the real Envoy 1.40 (V8), local mode: a limit in shadow mode is counted and
reported but never blocks; enforced limits beside it still do."""

import requests

from conftest import envoy_config, wasm_filter


def test_global_shadow_mode_never_blocks(envoys, upstream):
    e = envoys(envoy_config([wasm_filter({"by_user": "2/m", "shadow_mode": True})], upstream))
    seen = []
    for _ in range(6):
        r = requests.get(e.url + "/api", headers={"x-user-id": "alice"})
        assert r.status_code == 200, r.text
        assert r.json()["path"] == "/api"  # the upstream answered every request
        assert "retry-after" not in r.headers
        assert r.headers["x-ratelimit-limit"] == "2"
        seen.append(r.headers["x-ratelimit-remaining"])
    # the would-be values: exhausted after two requests, and never charged past the limit
    assert seen == ["1", "0", "0", "0", "0", "0"], seen


def test_enforced_limit_beside_a_shadow_one(envoys, upstream):
    cfg = {
        "by_user": "3/m",
        "limits": [{"name": "keys", "descriptors": ["key"], "rate": "1/m", "shadow_mode": True}],
        "descriptor_headers": {"key": "x-api-key"},
    }
    e = envoys(envoy_config([wasm_filter(cfg)], upstream))
    h = {"x-user-id": "bob", "x-api-key": "k1"}
    for left in ("2", "1", "0"):
        r = requests.get(e.url + "/api", headers=h)
        # the shadow 1/m limit would deny the 2nd and 3rd: they pass, and the headers describe
        # the enforced by_user limit only
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit"] == "3"
        assert r.headers["x-ratelimit-remaining"] == left
    r = requests.get(e.url + "/api", headers=h)
    assert r.status_code == 429 and r.json()["reason"] == "limited"
    assert r.headers["x-ratelimit-limit"] == "3"
