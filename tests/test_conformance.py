"""Cross-package conformance: the same policy and request sequence through the check service
(real `ratewall-server` binary, memory store) and the gateway plugin's Rust engine give the same
decisions and the same header lines (names, order, values).

The service runs on its own clock, so fields that count seconds from "now" (`RateLimit` `t`,
`Retry-After`, a denied request's `X-RateLimit-Reset`) may differ by the second that ticks between
the two calls; they are compared within 1 s. Everything else must be byte-identical.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "target" / "release" / "ratewall-server"

POLICY = {
    "algorithm": "fixed_window",
    "by_user": "3/h",
    "by_tenant": "100/h",
    "by_tool": {"Echo": "5/h"},
    "headers": "both",
}

# (user, tenant, tool) per step: alice exhausts her 3/h, bob then uses the tool budget.
STEPS = [("alice", "acme", "echo")] * 4 + [("bob", "acme", "ECHO ")] * 3
# Whole seconds counted from "now": a denied X-RateLimit-Reset is ceil(now + Retry-After).
TIME_FIELDS = {"Retry-After", "X-RateLimit-Reset"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service():
    if not SERVER.exists():
        pytest.fail(f"{SERVER} missing: run `cargo build --release -p ratewall-server` first")
    port = free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    json.dump(POLICY, cfg)  # JSON is YAML
    cfg.close()
    proc = subprocess.Popen(
        [str(SERVER), "--config", cfg.name, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/healthz", timeout=0.5).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("ratewall-server did not start")
    yield base
    proc.terminate()
    proc.wait(10)
    os.unlink(cfg.name)


def normalise(name: str, value: str) -> tuple[str, str]:
    """Drop the seconds-from-now parts that may differ by one tick between the two calls."""
    if name in TIME_FIELDS:
        return name, "<secs>"
    if name == "RateLimit":
        return name, re.sub(r";t=\d+", ";t=<secs>", value)
    return name, value


def seconds(name: str, value: str) -> int | None:
    if name in TIME_FIELDS:
        return int(value)
    if name == "RateLimit":
        return int(value.rsplit("t=", 1)[1])
    return None


def test_service_and_plugin_engine_agree(service):
    from ratewall import _ratewall

    # Stay clear of an hour boundary so both sides see the same fixed window.
    if time.time() % 3600 > 3590:
        time.sleep(3600 - time.time() % 3600 + 1)
    clock = _ratewall.ManualClock(int(time.time() * 1_000_000))
    engine = _ratewall.Engine(json.dumps(POLICY), clock)
    for i, (user, tenant, tool) in enumerate(STEPS):
        r = requests.post(f"{service}/check", json={"user": user, "tenant": tenant, "tool": tool}, timeout=5)
        clock.set_micros(int(time.time() * 1_000_000))
        code, headers, _ = engine.check(user, tenant, None, tool, False)
        body = r.json()
        svc = [(n, v) for n, v in body["headers"]]
        plug = list((headers or {}).items())
        assert body["allowed"] == (code == 1), f"step {i}: service {body} plugin {code}"
        assert r.status_code == (200 if code == 1 else 429), f"step {i}"
        assert [normalise(*h) for h in svc] == [normalise(*h) for h in plug], f"step {i}"
        for (n, a), (_, b) in zip(svc, plug):
            sa, sb = seconds(n, a), seconds(n, b)
            if sa is not None:
                assert abs(sa - sb) <= 1, f"step {i}: {n} {a} vs {b}"
        # The HTTP response carries the same lines as the JSON body.
        for n, v in svc:
            assert r.headers.get(n) == v, f"step {i}: HTTP header {n}"
    # alice: 3 allowed then denied; bob: tool budget 5 leaves him 2.
    assert [c for c, *_ in [engine.check("carol", "acme", None, "echo", False)]] == [2]
