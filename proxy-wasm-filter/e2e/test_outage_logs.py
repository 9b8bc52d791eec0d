"""ratewall-filter in a real Envoy 1.40, mode: remote, with nothing listening where the check
service should be: a flood of requests logs the failure at most once a second per worker VM,
each line with the count it suppressed, not once per request (issue 11, defect 4)."""

import re
import time

import pytest

from conftest import envoy_config, free_port, hammer, wasm_filter

REQUESTS = 800
CONCURRENCY = 2
LATE = 8


@pytest.mark.parametrize("fail_mode,status", [("open", 200), ("closed", 503)])
def test_check_service_down_logs_are_throttled(envoys, upstream, fail_mode, status):
    dead = free_port()  # nothing listens here
    cfg = {"mode": "remote", "remote_cluster": "ratewall", "remote_timeout_ms": 200, "fail_mode": fail_mode}
    e = envoys(envoy_config([wasm_filter(cfg)], upstream, extra_clusters=[("ratewall", dead)]),
               concurrency=CONCURRENCY)
    before = len(e.log_text())
    t0 = time.monotonic()
    counts = hammer(e.port, "/direct", REQUESTS, conns=8, headers={"x-user-id": "f"})
    elapsed = time.monotonic() - t0
    assert counts == {status: REQUESTS}, counts
    # after the second has passed, a few more requests (over several connections, so every worker
    # VM likely gets one): their lines carry the flood's suppressed counts
    time.sleep(1.1)
    assert hammer(e.port, "/direct", LATE, conns=LATE, headers={"x-user-id": "f"}) == {status: LATE}
    time.sleep(0.2)  # let Envoy's log flush
    log = e.log_text()[before:]
    lines = [line for line in log.splitlines()
             if "ratewall: check service failed" in line or "ratewall: cannot call cluster" in line]
    # one line a second per worker VM (each VM has its own throttle)
    bound = CONCURRENCY * (int(elapsed) + 2)  # + the late requests' lines
    assert 1 <= len(lines) <= bound, (elapsed, len(lines), lines[:5])
    counts_in_lines = [int(m.group(1)) for m in (re.search(r"\((\d+) suppressed\)", line) for line in lines) if m]
    assert len(counts_in_lines) == len(lines), lines[:5]  # every line carries the count
    # every failed request is a line or counted once in a later line (some may still be pending
    # in a VM that got no late request)
    assert len(lines) + sum(counts_in_lines) <= REQUESTS + LATE
    assert max(counts_in_lines) > 0, lines
    print(f"{fail_mode}: {REQUESTS} (+{LATE}) requests in {elapsed:.2f} s -> {len(lines)} lines "
          f"(suppressed {counts_in_lines})")
