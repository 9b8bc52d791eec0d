"""The filter across Envoy configuration updates: a real Envoy 1.40 whose listener comes from a
file (LDS, `path_config_source` with `watched_directory`), swapped atomically to a listener whose
wasm filter has another configuration, as a control plane would push it.

What Envoy does: the new filter configuration gets a new plugin (root context, `on_configure`)
in the same VM; proxy-wasm shared data belongs to the Envoy process, namespaced by `vm_id`, so the
counters survive any update that keeps the `vm_id` (the cell keys hold the prefix, the algorithm,
the window and the identity, not the count): a kept rule keeps its counter, a changed count
applies to the counted usage, a changed window or algorithm starts a new counter, and a new
`vm_id` starts from empty shared data.
"""

import json
import os
import time

import requests

from conftest import Envoy, envoy_config, wasm_filter


def lds_listener(upstream, plugin_config, vm_id="ratewall"):
    listener = envoy_config([wasm_filter(plugin_config, vm_id=vm_id)], upstream)["static_resources"]["listeners"][0]
    listener["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener"
    return listener


def write_lds(path, version, listener):
    """Replace the LDS file atomically (a rename is what the watched directory reacts to)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version_info": str(version), "resources": [listener]}))
    os.replace(tmp, path)


def get(envoy, user):
    return requests.get(envoy.url + "/direct", headers={"x-user-id": user}, timeout=10)


def wait_for_config(envoy, marker, timeout=20):
    """Probe with fresh users (their counters do not matter) until the new configuration answers:
    `marker(response)` is true."""
    deadline = time.time() + timeout
    n = 0
    while time.time() < deadline:
        n += 1
        if marker(get(envoy, f"probe-{time.time_ns()}-{n}")):
            return
        time.sleep(0.1)
    raise AssertionError("the listener update never took effect:\n" + envoy.log_text()[-3000:])


def test_config_updates_keep_the_counters_of_kept_rules(tmp_path, upstream):
    lds_dir = tmp_path / "lds"
    lds_dir.mkdir()
    lds = lds_dir / "lds.json"
    write_lds(lds, 1, lds_listener(upstream, {"by_user": "5/h"}))
    bootstrap = envoy_config([], upstream)
    bootstrap["static_resources"]["listeners"] = []
    bootstrap["node"] = {"id": "ratewall-reload-test", "cluster": "ratewall"}
    bootstrap["dynamic_resources"] = {
        "lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(lds), "watched_directory": {"path": str(lds_dir)}},
        }
    }
    envoy = Envoy(bootstrap, concurrency=2, tmp=tmp_path)
    try:
        for left in ("4", "3", "2"):
            r = get(envoy, "keep")
            assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == left, r.headers
        assert "ratelimit-policy" not in r.headers

        # 2: the rule kept, a tool limit and the IETF headers added -> the counter is kept
        write_lds(lds, 2, lds_listener(upstream, {"by_user": "5/h", "by_tool": {"echo": "2/h"},
                                                  "headers": "both"}))
        wait_for_config(envoy, lambda r: "ratelimit-policy" in r.headers)
        r = get(envoy, "keep")
        assert r.headers["x-ratelimit-remaining"] == "1", r.headers
        assert r.headers["ratelimit-policy"] == '"by_user";q=5;w=3600'
        r = get(envoy, "keep")
        assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "0"
        assert get(envoy, "keep").status_code == 429

        # 3: a new count in the same window applies to the usage counted so far (5 of 8)
        write_lds(lds, 3, lds_listener(upstream, {"by_user": "8/h", "headers": "both"}))
        wait_for_config(envoy, lambda r: r.headers.get("x-ratelimit-limit") == "8")
        r = get(envoy, "keep")
        assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "2", r.headers

        # 4: another window is another counter (its key holds the window)
        write_lds(lds, 4, lds_listener(upstream, {"by_user": "8/m", "headers": "both"}))
        wait_for_config(envoy, lambda r: r.headers.get("ratelimit-policy") == '"by_user";q=8;w=60')
        r = get(envoy, "keep")
        assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "7", r.headers

        # 5: back to the hour rule: its counter was kept all along (6 of 8 used)
        write_lds(lds, 5, lds_listener(upstream, {"by_user": "8/h", "headers": "both"}))
        wait_for_config(envoy, lambda r: r.headers.get("ratelimit-policy") == '"by_user";q=8;w=3600')
        r = get(envoy, "keep")
        assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "1", r.headers

        # 6: the same rule under another vm_id: another VM, and its own (empty) shared data
        write_lds(lds, 6, lds_listener(upstream, {"by_user": "8/h", "headers": "legacy"}, vm_id="ratewall-2"))
        wait_for_config(envoy, lambda r: "ratelimit-policy" not in r.headers)
        r = get(envoy, "keep")
        assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "7", r.headers

        stats = envoy.stats("listener_manager.lds")
        assert stats.get("listener_manager.lds.update_success", 0) >= 6, stats
    finally:
        envoy.stop()
    log = envoy.log_text()
    assert "panicked" not in log and "RuntimeError" not in log, log[-3000:]
