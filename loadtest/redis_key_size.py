#!/usr/bin/env python3
"""Redis memory per live ratewall key, per algorithm, for sizing (docs/OPERATIONS.md).

Starts its own redis-server and ratewall-server (release build) on free loopback ports, sends
`--users` distinct users one `/check` each (`by_user: <limit>/m`, one cell per request) and
prints, per algorithm, the keys held and Redis's `used_memory` growth per key.

    python loadtest/redis_key_size.py [--users 2000] [--limit 100]
"""

import argparse
import json
import shutil
import socket
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rwload.procs import RatewallServer, Redis  # noqa: E402

ALGOS = ["fixed_window", "sliding_window", "sliding_window_counter", "token_bucket", "gcra"]


def cmd(port: int, *args: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(("*%d\r\n" % len(args) + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)).encode())
        data = b""
        while not data.endswith(b"\r\n") or (data.startswith(b"$") and data.count(b"\r\n") < 2):
            data += s.recv(65536)
        return data


def used_memory(port: int) -> int:
    for line in cmd(port, "INFO", "memory").decode().splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    raise RuntimeError("no used_memory in INFO")


def dbsize(port: int) -> int:
    return int(cmd(port, "DBSIZE").decode().strip().lstrip(":"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--limit", type=int, default=100, help="per minute (token bucket and GCRA keys expire once refilled)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rw-keysize-"))
    redis = Redis(work)
    try:
        print(f"{'algorithm':24} {'keys held':>9} {'bytes per key':>13}")
        for algo in ALGOS:
            cmd(redis.port, "FLUSHALL")
            srv = RatewallServer(work, f'algorithm: {algo}\nby_user: "{a.limit}/m"\nbackend: redis\n'
                                       f"redis_url: {redis.url}\nwatch_config: false\n", algo)
            try:
                base = used_memory(redis.port)
                for i in range(a.users):
                    body = json.dumps({"user": f"user-{i:06d}@example.com"}).encode()
                    req = urllib.request.Request(srv.url + "/check", data=body, headers={"content-type": "application/json"})
                    urllib.request.urlopen(req, timeout=5).read()
                keys = dbsize(redis.port)
                grown = used_memory(redis.port) - base
                per = f"{grown / keys:.0f}" if keys else "-"
                print(f"{algo:24} {keys:9d} {per:>13}", flush=True)
            finally:
                srv.stop()
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
