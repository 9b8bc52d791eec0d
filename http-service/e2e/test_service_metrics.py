"""ratewall-server `/metrics` against the real service: per-rule counters for every rule a request
checks (HTTP /check and /authz, and gRPC RLS through a real Envoy 1.40), near-limit with a
configured ratio, shadow rules, backend errors and fail-mode answers with a real redis-server
stopped, config load failures, build_info and process metrics (docs/METRICS.md)."""

import re
import tomllib

import pytest
import requests

from envoy_rig import Envoy, away_from_window_edge
from service_harness import ROOT, Upstream, wait_until
from test_grpc_rls import deploy_envoy, deploy_ratewall

pytestmark = pytest.mark.timeout(120)

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, for every sample line (and every line is a sample, a comment or
    the closing `# EOF`)."""
    out = {}
    lines = text.splitlines()
    assert lines[-1] == "# EOF", lines[-3:]
    for line in lines:
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def rule(name: str, limit: str, dimension: str) -> str:
    return f'ratewall_{name}_total{{limit="{limit}",dimension="{dimension}"}}'


def per_rule(m: dict, limit: str, dimension: str) -> dict[str, float]:
    return {k: m.get(rule(k, limit, dimension), 0.0)
            for k in ("hits", "within_limit", "over_limit", "near_limit", "shadow_mode")}


def decisions(m: dict, limit: str, dimension: str, outcome: str) -> float:
    return m.get(f'ratewall_decisions_total{{limit="{limit}",dimension="{dimension}",outcome="{outcome}"}}', 0.0)


def test_25_hits_on_one_limit_show_25_under_every_rule_checked(servers):
    """The reported cell moves between rules as their remaining units cross; the per-rule hits
    must not (the issue's case: 25 hits showed 9 under one limit and 16 under by_user)."""
    s = servers('by_user: "30/m"\nby_tenant: "40/m"\n')
    # 12 requests of another user of the tenant first: from then on the tenant has fewer
    # remaining units than alice's own limit, so the tenant decides alice's requests
    for _ in range(12):
        assert s.check({"user": "bob", "tenant": "t"}).status_code == 200
    for i in range(25):
        r = s.check({"user": "alice", "tenant": "t"})
        assert r.status_code == 200, (i, r.text)
        assert r.json()["limit"] == 40
    m = samples(s.metrics())
    # user 30/m, threshold 24: alice's 25th hit is near her limit
    assert per_rule(m, "by_user", "user") == {
        "hits": 37, "within_limit": 37, "over_limit": 0, "near_limit": 1, "shadow_mode": 0}
    # tenant 40/m, threshold 32: hits 33..37 are near the limit
    assert per_rule(m, "by_tenant", "tenant") == {
        "hits": 37, "within_limit": 37, "over_limit": 0, "near_limit": 5, "shadow_mode": 0}
    # the deciding cell is still counted once per request, under the rule that decided
    assert decisions(m, "by_user", "user", "allowed") == 12
    assert decisions(m, "by_tenant", "tenant", "allowed") == 25


def test_denials_costs_and_proxy_mode(servers):
    s = servers('algorithm: sliding_window\nby_user: "5/m"\nby_tenant: "1000/m"\n')
    codes = [s.check({"user": "u", "tenant": "t"}).status_code for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2
    # proxy mode counts the same way: one more denial
    r = requests.get(s.url + "/authz/x", headers={"x-user-id": "u", "x-tenant-id": "t"}, timeout=5)
    assert r.status_code == 429
    # a cost above the whole limit: over limit by its cost, never admitted
    assert s.check({"user": "v", "tenant": "t", "cost": 9}).json()["reason"] == "cost_exceeds_limit"
    m = samples(s.metrics())
    # 5/m, threshold 4: the 5th hit is near the limit
    assert per_rule(m, "by_user", "user") == {
        "hits": 17, "within_limit": 5, "over_limit": 12, "near_limit": 1, "shadow_mode": 0}
    # the tenant had room every time (nothing was charged to it for the denied requests)
    assert per_rule(m, "by_tenant", "tenant") == {
        "hits": 17, "within_limit": 17, "over_limit": 0, "near_limit": 0, "shadow_mode": 0}
    assert decisions(m, "by_user", "user", "allowed") == 5
    assert decisions(m, "by_user", "user", "limited") == 3
    assert decisions(m, "by_user", "user", "cost_exceeds_limit") == 1
    # no request values as labels
    text = s.metrics()
    for v in ('"u"', '"v"', '"t"'):
        assert v not in text


def test_near_limit_ratio_is_configurable_and_counts_the_part_above_it(servers):
    s = servers('algorithm: fixed_window\nby_user: "10/h"\nnear_limit_ratio: 0.5\n')
    m = samples(s.metrics())
    assert rule("hits", "by_user", "user") not in m  # a rule shows once it was checked
    for _ in range(4):
        s.check({"user": "n"})
    assert per_rule(samples(s.metrics()), "by_user", "user")["near_limit"] == 0  # 4 of 10 used
    # cost 4: usage 4 -> 8 crosses the threshold 5: 3 of its 4 hits are near the limit
    assert s.check({"user": "n", "cost": 4}).status_code == 200
    assert per_rule(samples(s.metrics()), "by_user", "user")["near_limit"] == 3
    s.check({"user": "n"})
    assert per_rule(samples(s.metrics()), "by_user", "user") == {
        "hits": 9, "within_limit": 9, "over_limit": 0, "near_limit": 4, "shadow_mode": 0}


def test_bad_near_limit_ratio_is_refused_naming_the_key(servers, tmp):
    import subprocess

    from service_harness import BIN

    cfg = tmp / "bad.yaml"
    cfg.write_text('by_user: "5/m"\nnear_limit_ratio: 1.5\n')
    r = subprocess.run([BIN, "--check-config", "--config", cfg], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2, r.stderr
    assert "near_limit_ratio" in r.stderr and "1.5" in r.stderr


def test_shadow_rules_count_would_be_denials(servers):
    s = servers('by_user: "5/m"\nlimits:\n  - {name: keys, descriptors: [key], rate: "1/m", shadow_mode: true}\n')
    for _ in range(3):
        r = s.check({"user": "a", "descriptors": {"key": "k1"}})
        assert r.status_code == 200 and r.json()["allowed"] is True
    m = samples(s.metrics())
    assert per_rule(m, "keys", "descriptor") == {
        "hits": 3, "within_limit": 1, "over_limit": 2, "near_limit": 1, "shadow_mode": 2}
    assert per_rule(m, "by_user", "user") == {
        "hits": 3, "within_limit": 3, "over_limit": 0, "near_limit": 0, "shadow_mode": 0}
    assert decisions(m, "by_user", "user", "allowed") == 3


def redis_cfg(redis, extra):
    return f"backend: redis\nredis_url: {redis.url}\nredis_timeout_ms: 300\nby_user: \"5/m\"\n{extra}"


def test_backend_errors_latency_and_fail_mode_answers_with_redis_stopped(servers, redis_server):
    open_ = servers(redis_cfg(redis_server, "fail_mode: open\n"))
    closed = servers(redis_cfg(redis_server, "fail_mode: closed\n"))
    for s in (open_, closed):
        assert s.check({"user": "x"}).status_code == 200
    m = samples(closed.metrics())
    assert m['ratewall_backend_duration_seconds_count{backend="redis"}'] == 1
    assert m['ratewall_backend_duration_seconds_count{backend="memory"}'] == 0
    assert m['ratewall_store_ready{backend="redis"}'] == 1
    redis_server.stop()
    assert [open_.check({"user": "x"}).status_code for _ in range(3)] == [200] * 3
    assert [closed.check({"user": "x"}).status_code for _ in range(2)] == [503] * 2
    r = requests.get(closed.url + "/authz", headers={"x-user-id": "x"}, timeout=5)
    assert r.status_code == 503
    mo, mc = samples(open_.metrics()), samples(closed.metrics())
    assert mo["ratewall_backend_errors_total"] == 3
    assert mo['ratewall_fail_mode_decisions_total{fail_mode="open"}'] == 3
    assert mo['ratewall_fail_mode_decisions_total{fail_mode="closed"}'] == 0
    assert mc["ratewall_backend_errors_total"] == 3
    assert mc['ratewall_fail_mode_decisions_total{fail_mode="closed"}'] == 3
    # failed calls are timed too; the rules count only what the store decided
    assert mc['ratewall_backend_duration_seconds_count{backend="redis"}'] == 4
    assert per_rule(mc, "by_user", "user")["hits"] == 1
    assert mo['ratewall_decisions_total{limit="none",dimension="none",outcome="allowed"}'] == 0
    assert mc['ratewall_store_ready{backend="redis"}'] == 0


def test_config_load_failures_are_counted(servers):
    s = servers('by_user: "5/m"\n')
    m = samples(s.metrics())
    assert m["ratewall_config_last_reload_successful"] == 1
    started = m["ratewall_config_last_reload_success_timestamp_seconds"]
    assert m['ratewall_config_reloads_total{result="rejected"}'] == 0
    s.config_path.write_text('by_user: "five a minute"\n')
    wait_until(lambda: s.metric('ratewall_config_reloads_total{result="rejected"}') == 1, timeout=5,
               what="rejected reload")
    m = samples(s.metrics())
    assert m["ratewall_config_last_reload_successful"] == 0
    assert m["ratewall_config_generation"] == 1
    s.config_path.write_text('by_user: "6/m"\n')
    wait_until(lambda: s.metric("ratewall_config_generation") == 2, timeout=5, what="reload")
    m = samples(s.metrics())
    assert m['ratewall_config_reloads_total{result="ok"}'] == 1
    assert m["ratewall_config_last_reload_successful"] == 1
    assert m["ratewall_config_last_reload_success_timestamp_seconds"] >= started


def test_build_info_process_metrics_and_format(servers):
    s = servers('by_user: "5/m"\n')
    r = requests.get(s.url + "/metrics", timeout=5)
    assert r.headers["content-type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    text = r.text
    m = samples(text)
    version = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    info = [k for k in m if k.startswith("ratewall_build_info{")]
    assert len(info) == 1 and f'version="{version}"' in info[0] and "git_sha=" in info[0], info
    assert m[info[0]] == 1
    assert "# TYPE ratewall_decisions counter" in text  # a family shows once it has a series
    assert "# TYPE ratewall_check_duration_seconds histogram" in text
    # the process: this one's RSS, fds and start time
    pid_status = open(f"/proc/{s.proc.pid}/status").read()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", pid_status).group(1))
    assert 0.5 < m["process_resident_memory_bytes"] / (rss_kb * 1024) < 2
    import os

    fds = len(os.listdir(f"/proc/{s.proc.pid}/fd"))
    assert abs(m["process_open_fds"] - fds) <= 3
    assert m["process_max_fds"] > 0 and m["process_threads"] >= 1
    assert "process_cpu_seconds_total" in m
    assert abs(m["process_start_time_seconds"] - os.stat(f"/proc/{s.proc.pid}").st_mtime) < 60


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.stop()


def test_grpc_rls_counts_every_descriptor_rule(servers, upstream, tmp_path):
    """Envoy 1.40 -> RLS: each request is one call with three descriptors; each rule counts every
    hit, the deciding one decides."""
    rw = servers(deploy_ratewall(tmp_path))
    envoy = Envoy(deploy_envoy(rw.grpc_port, upstream.port), tmp_path)
    try:
        away_from_window_edge(60, 8)
        codes = [requests.get(envoy.url + "/api/a", headers={"x-user-id": "alice"}, timeout=5).status_code
                 for _ in range(6)]
        assert codes == [200] * 5 + [429], codes
        codes = [requests.get(envoy.url + "/search", headers={"x-user-id": "alice"}, timeout=5).status_code
                 for _ in range(3)]
        assert codes == [200, 200, 429]
    finally:
        envoy.stop()
    m = samples(rw.metrics())
    assert per_rule(m, "api_per_user", "descriptor") == {
        "hits": 6, "within_limit": 5, "over_limit": 1, "near_limit": 1, "shadow_mode": 0}
    assert per_rule(m, "search_per_user", "descriptor") == {
        "hits": 3, "within_limit": 2, "over_limit": 1, "near_limit": 1, "shadow_mode": 0}
    # the virtual host's remote_address rule (100/s) was checked by all 9 calls
    remote = [k for k in m if k.startswith("ratewall_hits_total{") and "api_per_user" not in k
              and "search_per_user" not in k and m[k] == 9]
    assert remote, [k for k in m if k.startswith("ratewall_hits_total")]
    assert decisions(m, "api_per_user", "descriptor", "allowed") == 5
    assert decisions(m, "api_per_user", "descriptor", "limited") == 1
    assert m['ratewall_check_duration_seconds_count{endpoint="rls"}'] == 9
