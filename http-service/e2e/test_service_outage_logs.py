"""ratewall-server on a real redis-server that is stopped: a flood of /check requests during the
outage logs at most one store-error line a second (each with the count it suppressed), not one
per request (issue 11, defect 4: 4,316 WARN lines in 3 s before)."""

import http.client
import re
import threading
import time

import pytest
import requests

from service_harness import wait_until

REQUESTS = 1500
CONNS = 4


def flood(port, n, conns, deadline_s=20.0):
    """`n` POST /check over `conns` keep-alive connections; (statuses, seconds). Bounded in count
    and in time (each connection stops at the deadline)."""
    statuses = []
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def worker(k):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        got = []
        for i in range(k):
            if time.monotonic() > stop_at:
                break
            c.request("POST", "/check", body=f'{{"user":"u{i % 50}"}}',
                      headers={"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            got.append(r.status)
        c.close()
        with lock:
            statuses.extend(got)

    per = [n // conns + (1 if i < n % conns else 0) for i in range(conns)]
    threads = [threading.Thread(target=worker, args=(k,)) for k in per]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses, time.monotonic() - t0


@pytest.mark.parametrize("fail_mode,status", [("closed", 503), ("open", 200)])
def test_store_errors_are_logged_once_a_second_with_a_count(servers, redis_server, fail_mode, status):
    s = servers(f"backend: redis\nredis_url: {redis_server.url}\nredis_timeout_ms: 200\n"
                f'by_user: "100000/m"\nfail_mode: {fail_mode}\n')
    assert s.check({"user": "warm"}).status_code == 200
    redis_server.stop()
    wait_until(lambda: requests.get(s.url + "/readyz", timeout=5).status_code == 503, timeout=5,
               what="readyz to report the store down")
    before = len(s.stderr())
    statuses, elapsed = flood(s.port, REQUESTS, CONNS)
    assert len(statuses) == REQUESTS, (len(statuses), elapsed)
    assert set(statuses) == {status}, set(statuses)
    # one more failed request after the second has passed: its line carries the flood's count
    time.sleep(1.1)
    assert s.check({"user": "late"}).status_code == status
    failed = s.metric(f'ratewall_fail_mode_decisions_total{{fail_mode="{fail_mode}"}}')
    assert failed >= REQUESTS + 1
    log = s.stderr()[before:]
    warn = [line for line in log.splitlines() if " WARN " in line]
    store = [line for line in warn if "store error" in line]
    # a line at most once a second per throttle: the service's own and the Redis store's
    bound = int(elapsed) + 2  # + the late request's line
    assert 1 <= len(store) <= bound, (elapsed, store)
    if elapsed < 3:
        assert len(store) <= 5, store
    counts = [int(m.group(1)) for m in (re.search(r"suppressed=(\d+)", line) for line in store) if m]
    assert len(counts) == len(store), store  # every line carries the count
    # the counts account for the requests: each is a line or counted once in a later line (the
    # late request's line closes the account)
    assert len(store) >= 2, store
    assert len(store) + sum(counts) == REQUESTS + 1, (counts, store)
    assert counts[-1] > 0, store
    assert len(warn) <= 2 * bound + 2, (elapsed, warn)
    print(f"{fail_mode}: {len(statuses)} requests in {elapsed:.2f} s -> {len(store)} store-error lines "
          f"(suppressed {counts}), {len(warn)} WARN lines in all")
