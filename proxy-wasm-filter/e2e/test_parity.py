"""The wasm filter in the parity matrix: every algorithm, one and three dimensions, mode local in
a real Envoy 1.40 against the core memory store's decisions (a real ratewall-server on memory),
request by request: the same allow/deny sequence and the same header lines (names, order,
values).

One Envoy serves every case (one listener per case, one wasm VM: each case's identities are its
own, so no two cases share a counter); one ratewall-server per case (the algorithm is global to a
configuration). Fields that count seconds from "now" (`Retry-After`, `X-RateLimit-Reset`, the
`RateLimit` `t`) may differ by the second that ticks between the two calls: compared within 1 s.
"""

import copy
import json
import os
import re
import signal
import time

import pytest
import requests

from conftest import (
    SERVER_BIN,
    envoy_config,
    free_port,
    mcp_call,
    post_json,
    start_process,
    stop_process,
    wait_port,
    wasm_filter,
)

pytestmark = pytest.mark.skipif(
    not SERVER_BIN.exists(),
    reason="needs target/release/ratewall-server (cargo build --release -p ratewall-server)",
)

ALGORITHMS = ["fixed_window", "sliding_window", "sliding_window_counter", "token_bucket", "gcra"]

# Hour windows: a scenario of a second or two never sees a token refill or a window edge (the
# fixture waits out the last seconds of an hour for fixed windows).
POLICIES = {
    1: {"by_user": "4/h", "headers": "both"},
    3: {"by_user": "5/h", "by_tenant": "7/h", "by_tool": {"echo": "3/h"}, "headers": "both"},
}

# (user, tenant, tool) per step; tool None = a plain GET, else an MCP tools/call.
STEPS = {
    # alice spends her 4 and is denied; bob is independent; no user header = "anonymous"
    1: [("alice", None, None)] * 5 + [("bob", None, None)] * 2 + [(None, None, None)] * 2,
    # denials by the tool (alice's 4th echo), the user (alice's 3rd add), the tenant (bob's 3rd
    # add), two dimensions at once (bob's echo), and the tenant for a newcomer (carol)
    3: [("alice", "acme", "echo")] * 4
    + [("alice", "acme", "add")] * 3
    + [("bob", "acme", "add")] * 3
    + [("bob", "acme", "echo"), ("carol", "acme", None)],
}

CASES = [(alg, dims) for alg in ALGORITHMS for dims in (1, 3)]
RATE_HEADERS = ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
                "ratelimit-policy", "ratelimit", "retry-after"]
TIME_FIELDS = {"retry-after", "x-ratelimit-reset"}


def case_id(alg, dims):
    return f"{alg}-{dims}"


@pytest.fixture(scope="module")
def rig(tmp_path_factory, upstream):
    """One Envoy with a listener per case, and one ratewall-server (memory) per case."""
    from conftest import Envoy

    tmp = tmp_path_factory.mktemp("parity")
    base = envoy_config([], upstream)
    template = base["static_resources"]["listeners"][0]
    listeners = []
    for alg, dims in CASES:
        name = case_id(alg, dims)
        ls = copy.deepcopy(template)
        ls["name"] = name
        hcm = ls["filter_chains"][0]["filters"][0]["typed_config"]
        # one VM for every case (vm_id "ratewall"), one plugin (root context) per case
        hcm["http_filters"].insert(0, wasm_filter({**POLICIES[dims], "algorithm": alg}, name=name))
        listeners.append(ls)
    base["static_resources"]["listeners"] = listeners
    envoy = Envoy(base, concurrency=2, tmp=tmp)
    statuses = requests.get(envoy.admin + "/listeners?format=json", timeout=5).json()["listener_statuses"]
    ports = {s["name"]: s["local_address"]["socket_address"]["port_value"] for s in statuses}
    servers, procs = {}, []
    for alg, dims in CASES:
        port = free_port()
        cfg = tmp / f"server-{case_id(alg, dims)}.yaml"
        # JSON is YAML
        cfg.write_text(json.dumps({**POLICIES[dims], "algorithm": alg, "backend": "memory",
                                   "listen": f"127.0.0.1:{port}", "grpc_listen": "off"}))
        p = start_process([str(SERVER_BIN), "--config", str(cfg)], tmp / f"server-{port}.log",
                          env=dict(os.environ, RUST_LOG="warn"))
        procs.append(p)
        servers[case_id(alg, dims)] = port
    for (alg, dims), p in zip(CASES, procs):
        wait_port(servers[case_id(alg, dims)], proc=p)
    yield envoy, ports, servers
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
        stop_process(p)
    envoy.stop()
    log = envoy.log_text()
    assert "panicked" not in log and "RuntimeError" not in log, log[-3000:]


def envoy_request(port, user, tenant, tool, step):
    h = {}
    if user is not None:
        h["x-user-id"] = user
    if tenant is not None:
        h["x-tenant-id"] = tenant
    url = f"http://127.0.0.1:{port}"
    if tool is None:
        r = requests.get(url + "/direct", headers=h, timeout=10)
    else:
        r = post_json(url + "/mcp", mcp_call(tool, step), h)
    # the raw header list, in order (Envoy writes names in lower case)
    lines = [(n.lower(), v) for n, v in r.raw.headers.items() if n.lower() in RATE_HEADERS]
    return r.status_code, lines


def normalise(name, value):
    if name in TIME_FIELDS:
        return name, "<secs>"
    if name == "ratelimit":
        return name, re.sub(r";t=\d+", ";t=<secs>", value)
    return name, value


def seconds(name, value):
    if name in TIME_FIELDS:
        return int(value)
    if name == "ratelimit":
        return int(value.rsplit("t=", 1)[1])
    return None


@pytest.mark.parametrize("alg,dims", CASES, ids=[case_id(*c) for c in CASES])
def test_filter_matches_the_memory_store(rig, alg, dims):
    envoy, ports, servers = rig
    name = case_id(alg, dims)
    if alg == "fixed_window" and time.time() % 3600 > 3590:
        time.sleep(3600 - time.time() % 3600 + 0.1)  # the whole scenario inside one window
    outcomes = []
    for i, (user, tenant, tool) in enumerate(STEPS[dims]):
        # identities of this case only (every case shares the one VM's shared data)
        u = None if user is None else f"{name}-{user}"
        t = None if tenant is None else f"{name}-{tenant}"
        status, lines = envoy_request(ports[name], u, t, tool, i)
        r = requests.post(f"http://127.0.0.1:{servers[name]}/check",
                          json={"user": u, "tenant": t, "tool": tool}, timeout=5)
        body = r.json()
        svc = [(n.lower(), v) for n, v in body["headers"]]
        ctx = f"{name} step {i} {(user, tenant, tool)}: envoy {status} {lines} service {r.status_code} {svc}"
        assert status == r.status_code, ctx
        assert [normalise(*h) for h in lines] == [normalise(*h) for h in svc], ctx
        for (n, a), (_, b) in zip(lines, svc):
            sa, sb = seconds(n, a), seconds(n, b)
            if sa is not None:
                assert abs(sa - sb) <= 1, ctx
        outcomes.append(status)
    # the scenarios deny where they were written to (the same for every algorithm: hour
    # windows, no refill within the test)
    expected = {
        1: [200] * 4 + [429] + [200] * 4,
        3: [200] * 3 + [429] + [200] * 2 + [429] + [200] * 2 + [429] * 3,
    }[dims]
    assert outcomes == expected, (name, outcomes)
