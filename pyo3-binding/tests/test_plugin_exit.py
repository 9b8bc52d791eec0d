"""No crash or thread-state error at interpreter exit after Redis use (the peer aborts with
"PyGILState_Release ... finalizing" now and then): a short script, run 50 times."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from rw_support import RedisServer, free_port

SCRIPT = r"""
# The plugin's exact Rust path (Engine.check_async + a loop's Completer), without importing the
# cpex framework, whose import alone takes over a second: 50 runs stay short.
import asyncio, json, os, sys
from ratewall._ratewall import Completer, Engine

def engine(url, mode):
    return Engine(json.dumps({"by_user": "1000/m", "backend": "redis", "redis_url": url,
                              "fail_mode": mode, "redis_timeout_ms": 200}))

async def main(up, down):
    loop = asyncio.get_running_loop()
    c = Completer(loop)
    loop.add_reader(c.fileno(), c.drain)
    p, q = engine(up, "open"), engine(down, "closed")
    assert await p.connect(c) is None
    user = f"u{os.getpid()}"
    rs = await asyncio.gather(*[p.check_async(c, user, None, None, "t", True) for _ in range(8)])
    assert all(r[0] == 1 for r in rs), rs
    r = await q.check_async(c, user, None, None, "t", True)
    assert r[0] == 3, r  # Redis down, fail_mode closed
    # leave work in flight and exit without close(): the worst case for finalization
    for _ in range(4):
        p.check_async(c, user, None, None, "t", True)
        q.check_async(c, user, None, None, "t", True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
print("ok")
"""


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


def test_exit_after_redis_use_50_runs(redis_server, tmp_path):
    script = tmp_path / "exit_script.py"
    script.write_text(SCRIPT)
    down = f"redis://127.0.0.1:{free_port()}/0"

    def run(_):
        return subprocess.run([sys.executable, str(script), redis_server.url, down],
                              capture_output=True, text=True, timeout=60)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(50)))
    bad = [r for r in results if r.returncode != 0 or "ok" not in r.stdout
           or "Fatal Python error" in r.stderr or "PyGILState" in r.stderr]
    assert not bad, f"{len(bad)} of 50 runs failed; first: rc={bad[0].returncode} {bad[0].stderr[-2000:]}"
