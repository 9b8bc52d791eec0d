"""Hot reload (file change and SIGHUP), bad files, and graceful shutdown under load."""

import signal
import threading
import time

import pytest
import requests

from service_harness import wait_until


def generation(s):
    return s.metric("ratewall_config_generation")


def test_reload_on_file_change_keeps_unchanged_counters(servers):
    s = servers('algorithm: sliding_window\nby_user: "5/m"\nby_tool: {search: "3/m"}\n')
    for _ in range(2):
        assert s.check({"user": "a", "tool": "search"}).status_code == 200
    assert s.check({"user": "a"}).json()["remaining"] == 2
    # counters are keyed by algorithm and window: the user limit's count changes (5/m -> 6/m) and
    # its usage so far (3) carries over; the tool limit's window changes (/m -> /h): a fresh cell
    s.config_path.write_text('algorithm: sliding_window\nby_user: "6/m"\nby_tool: {search: "10/h"}\nheaders: ietf\n')
    wait_until(lambda: generation(s) == 2, timeout=5, what="reload after file change")
    r = s.check({"user": "a", "tool": "search"})
    assert r.status_code == 200, r.text
    dims = {d["dimension"]: d for d in r.json()["dimensions"]}
    assert dims["user"]["limit"] == 6 and dims["user"]["remaining"] == 2  # 6 - 4 consumed across the reload
    assert dims["tool"]["limit"] == 10 and dims["tool"]["remaining"] == 9  # new window: new cell
    assert "RateLimit" in r.headers and "X-RateLimit-Limit" not in r.headers  # headers: ietf applied
    assert "configuration reloaded" in s.stderr()


def test_bad_file_keeps_running_config(servers):
    s = servers('algorithm: sliding_window\nby_user: "2/m"\n')
    assert s.check({"user": "b"}).status_code == 200
    s.config_path.write_text('by_user: "two per minute"\n')
    wait_until(lambda: s.metric('ratewall_config_reloads_total{result="rejected"}') >= 1, timeout=5,
               what="rejected reload")
    assert "configuration rejected; keeping the running one" in s.stderr()
    assert "two per minute" in s.stderr()  # the log says why
    assert generation(s) == 1
    r = s.check({"user": "b"})
    assert r.status_code == 200 and r.json()["limit"] == 2 and r.json()["remaining"] == 0
    assert s.check({"user": "b"}).status_code == 429
    # a later good file is applied
    s.config_path.write_text('algorithm: sliding_window\nby_user: "2/m"\nby_tenant: "9/m"\n')
    wait_until(lambda: generation(s) == 2, timeout=5, what="reload of the fixed file")
    assert s.check({"user": "b"}).status_code == 429  # still exhausted
    assert s.check({"user": "c", "tenant": "t"}).json()["dimensions"][1]["limit"] == 9


@pytest.mark.parametrize(
    "bad, why",
    [
        ("", "the configuration is empty"),
        ("   \n# all limits removed\n", "the configuration is empty"),
        ("algorithm: sliding_window\n", "no limit is configured"),  # truncated before the limits
        ('algorithm: sliding_window\nby_user: "2/m"\nby_user: "90/m"\n', 'duplicate key "by_user" at line 3'),
        ('by_user: "2/m"\nby_tool:\n  echo: "1/s"\n  echo: "9/s"\n', 'duplicate key "echo" at line 4'),
        ("by_user: " + "[" * 100_000, "nesting deeper than 72 levels"),
    ],
    ids=["empty", "comment-only", "truncated", "duplicate-top", "duplicate-nested", "deep"],
)
def test_reload_to_an_empty_truncated_or_duplicate_key_file_keeps_the_limits(servers, bad, why):
    """An empty, truncated or duplicate-key file never lifts the running limits: the reload is
    rejected, counted, and logged at ERROR with the reason; the counters keep counting."""
    s = servers('algorithm: sliding_window\nby_user: "2/m"\n')
    for _ in range(2):
        assert s.check({"user": "v"}).status_code == 200
    s.config_path.write_text(bad)
    wait_until(lambda: s.metric('ratewall_config_reloads_total{result="rejected"}') >= 1, timeout=5,
               what="rejected reload")
    lines = [line for line in s.stderr().splitlines() if "configuration rejected" in line]
    assert lines and all("ERROR" in line for line in lines), lines
    assert why in lines[0], lines[0]
    assert generation(s) == 1
    assert s.check({"user": "v"}).status_code == 429  # still limited
    assert s.metric('ratewall_config_reloads_total{result="rejected"}') >= 1


def test_sighup_reload(servers):
    s = servers('algorithm: sliding_window\nby_user: "1/m"\nwatch_config: false\n')
    s.config_path.write_text('algorithm: sliding_window\nby_user: "7/m"\nwatch_config: false\n')
    time.sleep(1.2)  # the watcher is off: nothing happens by itself
    assert s.check({"user": "h"}).json()["limit"] == 1
    s.send(signal.SIGHUP)
    wait_until(lambda: generation(s) == 2, timeout=5, what="reload on SIGHUP")
    r = s.check({"user": "h"})
    assert r.json()["limit"] == 7 and r.json()["remaining"] == 5  # 1 used before, counter kept
    s.config_path.write_text("by_user: [not, a, rate]\n")
    s.send(signal.SIGHUP)
    wait_until(lambda: s.metric('ratewall_config_reloads_total{result="rejected"}') == 1, timeout=5,
               what="rejected SIGHUP reload")
    assert s.check({"user": "h"}).json()["limit"] == 7


def test_graceful_shutdown_under_load(servers):
    s = servers('by_user: "1000000/m"\n')
    stop = threading.Event()
    results = {"ok": 0, "refused": 0, "other": []}
    lock = threading.Lock()

    def worker(i):
        sess = requests.Session()
        while not stop.is_set():
            try:
                r = sess.post(s.url + "/check", json={"user": f"w{i}"}, timeout=5)
                with lock:
                    if r.status_code == 200 and r.json()["allowed"]:
                        results["ok"] += 1
                    else:
                        results["other"].append(r.status_code)
            except requests.ConnectionError as e:
                # after the listener closes: refused (new connection) or the idle keep-alive
                # connection closed by the server; never a half-written response
                with lock:
                    results["refused"] += 1
                if "Connection refused" in str(e):
                    return
                sess = requests.Session()
            except Exception as e:  # noqa: BLE001
                with lock:
                    results["other"].append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    wait_until(lambda: results["ok"] > 200, timeout=10, what="load")
    t0 = time.monotonic()
    rc = s.stop(signal.SIGTERM)
    elapsed = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert rc == 0, s.stderr()
    assert elapsed < 5
    assert results["other"] == [], results["other"][:5]
    assert results["ok"] > 200
    assert "shutting down" in s.stderr() and "stopped" in s.stderr()


def test_sigint_stops(servers):
    s = servers(None)
    assert s.stop(signal.SIGINT) == 0
    assert 'signal="SIGINT"' in s.stderr() or "SIGINT" in s.stderr()
