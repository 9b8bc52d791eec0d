"""Per-request failure lines are throttled process-wide: a Redis outage logs about one line a
second, and the lines together account for every failed check."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from rw_support import free_port

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = r"""
import asyncio, json, logging, sys, time
sys.path.insert(0, sys.argv[3])
from rw_support import ctx, make_plugin
from cpex.framework import ToolPreInvokePayload

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="LOG %(levelname)s %(message)s")

async def main():
    engine, url = sys.argv[1], sys.argv[2]
    # two instances, as the gateway's contexts: the throttle is per process, not per instance
    cfg = {"by_user": "5/m", "backend": "redis", "redis_url": url, "engine": engine,
           "redis_timeout_ms": 100, "fail_mode": "open"}
    plugins = [make_plugin(cfg), make_plugin(cfg)]
    for p in plugins:
        await p.initialize()
    print("LOG-START", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    allowed = 0
    for i in range(500):
        r = await plugins[i % 2].tool_pre_invoke(ToolPreInvokePayload(name="t", args={}), ctx(user=f"u{i}"))
        allowed += r.continue_processing and r.http_headers is None
    elapsed = time.monotonic() - t0
    await asyncio.sleep(1.2)  # the interval's count is logged when it ends
    for p in plugins:
        await p.shutdown()
    print(json.dumps({"elapsed": elapsed, "allowed_without_redis": allowed}))

asyncio.run(main())
"""


@pytest.mark.parametrize("engine", ["rust", "python"])
def test_redis_down_500_checks_log_at_most_3_lines_with_the_count(engine):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    out = subprocess.run([sys.executable, "-c", SCRIPT, engine, url, HERE], capture_output=True,
                         text=True, timeout=120, cwd=HERE)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["allowed_without_redis"] == 500  # fail_mode open: every check failed
    assert result["elapsed"] < 2.0, result
    after_start = out.stderr.split("LOG-START", 1)[1]
    lines = [ln for ln in after_start.splitlines() if ln.startswith("LOG ") and "backend error" in ln]
    assert 1 <= len(lines) <= 3, "\n".join(lines)
    # every failed check is accounted for: 1 per line, plus the counts the lines state
    counted = 0
    for ln in lines:
        m = re.search(r"rate limiter: (\d+) similar lines suppressed", ln)
        if m:
            counted += int(m.group(1))
            continue
        counted += 1
        m = re.search(r"\(and (\d+) similar lines suppressed\)", ln)
        if m:
            counted += int(m.group(1))
    assert counted == 500, "\n".join(lines)
    assert any("similar lines suppressed" in ln for ln in lines)
