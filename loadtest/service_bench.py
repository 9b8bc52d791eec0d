#!/usr/bin/env python3
"""Bounded loopback load on ratewall-server with wrk (Debian package `wrk`).

In one run, on free 127.0.0.1 ports, it measures:
  * the floor: a trivial axum handler (http-service/examples/floor.rs) on the same stack;
  * ratewall-server POST /check and GET /authz on the memory store;
  * the same on a real redis-server (started and stopped here).
Each target gets `--rounds` wrk runs of `--duration` seconds (interleaved, so background noise
hits every target alike); the table reports the median round (by req/s) with its p50 and p99.

Usage (after `cargo build --release -p ratewall-server --example floor`):
  python3 loadtest/service_bench.py [--duration 5] [--rounds 3] [--connections 32]
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REL = ROOT / "target" / "release"

CHECK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/check", nil, '{"user":"u' .. (n % 1000) .. '","tenant":"t1"}')
end
"""

AUTHZ_LUA = """
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/authz/api/items", {["x-user-id"] = "u" .. (n % 1000), ["x-tenant-id"] = "t1"})
end
"""

POLICY = """
by_user: "1000000/s"
by_tenant: "1000000/s"
algorithm: fixed_window
headers: legacy
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:  # noqa: BLE001
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    if not m:
        return float("nan")
    x = float(m.group(1))
    return {"us": x / 1000, "ms": x, "s": x * 1000}[m.group(2)]


SERVER_PIN = []
WRK_PIN = []


def wrk(url, script, args, tmp):
    path = tmp / f"s{abs(hash(script))}.lua"
    path.write_text(script)
    cmd = WRK_PIN + ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s",
           "--timeout", "2s", "--latency", "-s", str(path), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50": p50, "p99": p99, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "errors": errors.group(0) if errors else ""}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--pin", action="store_true",
                    help="pin servers (and Redis) to CPU 1 and wrk to CPU 0 (taskset), so the load "
                         "generator does not compete with the server for the same core")
    args = ap.parse_args()
    for b in ("ratewall-server", "examples/floor"):
        if not (REL / b).exists():
            sys.exit(f"missing {REL / b}: cargo build --release -p ratewall-server --example floor")
    if not shutil.which("wrk"):
        sys.exit("wrk not installed (apt-get install wrk)")
    if args.pin:
        SERVER_PIN[:] = ["taskset", "-c", "1"]
        WRK_PIN[:] = ["taskset", "-c", "0"]
    tmp = Path(tempfile.mkdtemp(prefix="rw-bench-"))
    procs = []

    def start(cmd, health, **kw):
        p = subprocess.Popen(SERVER_PIN + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        procs.append(p)
        wait_http(health)
        return p

    try:
        targets = []
        fp = free_port()
        start([str(REL / "examples" / "floor"), f"127.0.0.1:{fp}"], f"http://127.0.0.1:{fp}/healthz")
        targets.append(("trivial axum handler (floor)", "POST /check", f"http://127.0.0.1:{fp}", CHECK_LUA))
        targets.append(("trivial axum handler (floor)", "GET /authz", f"http://127.0.0.1:{fp}", AUTHZ_LUA))
        env = {**os.environ, "RUST_LOG": "warn"}
        mp = free_port()
        (tmp / "mem.yaml").write_text(POLICY)
        start([str(REL / "ratewall-server"), "--config", str(tmp / "mem.yaml"), "--listen", f"127.0.0.1:{mp}"],
              f"http://127.0.0.1:{mp}/healthz", env=env)
        targets.append(("ratewall, memory store", "POST /check", f"http://127.0.0.1:{mp}", CHECK_LUA))
        targets.append(("ratewall, memory store", "GET /authz", f"http://127.0.0.1:{mp}", AUTHZ_LUA))
        if not args.no_redis and shutil.which("redis-server"):
            rp = free_port()
            p = subprocess.Popen(SERVER_PIN + ["redis-server", "--port", str(rp), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(tmp)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            time.sleep(0.3)
            sp = free_port()
            (tmp / "redis.yaml").write_text(POLICY + f"backend: redis\nredis_url: redis://127.0.0.1:{rp}\n"
                                            "redis_timeout_ms: 1000\n")
            start([str(REL / "ratewall-server"), "--config", str(tmp / "redis.yaml"), "--listen",
                   f"127.0.0.1:{sp}"], f"http://127.0.0.1:{sp}/readyz", env=env)
            targets.append(("ratewall, Redis store", "POST /check", f"http://127.0.0.1:{sp}", CHECK_LUA))
            targets.append(("ratewall, Redis store", "GET /authz", f"http://127.0.0.1:{sp}", AUTHZ_LUA))
        results = {i: [] for i in range(len(targets))}
        for r in range(args.rounds):
            for i, (_, _, url, script) in enumerate(targets):
                res = wrk(url, script, args, tmp)
                results[i].append(res)
                print(f"round {r + 1} {targets[i][0]:32} {targets[i][1]:12} {res['rps']:10.0f} req/s "
                      f"p50 {res['p50']:.3f} ms p99 {res['p99']:.3f} ms non-2xx {res['non2xx']} {res['errors']}",
                      file=sys.stderr)
        # per-round ratio to the floor of the same request kind, measured minutes apart at most
        floor_idx = {targets[i][1]: i for i in results if "floor" in targets[i][0]}
        ratios = {}
        for i in results:
            fi = floor_idx.get(targets[i][1])
            rs = sorted(results[i][r]["rps"] / results[fi][r]["rps"] for r in range(args.rounds)) if fi is not None else []
            ratios[i] = rs[len(rs) // 2] if rs else float("nan")
        med = {}
        for i, runs in results.items():
            runs = sorted(runs, key=lambda x: x["rps"])
            med[i] = runs[len(runs) // 2]
        where = ("servers and Redis pinned to CPU 1, wrk to CPU 0" if args.pin
                 else f"{os.cpu_count()} cores shared by server, wrk (and Redis)")
        print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency, {args.rounds} interleaved "
              f"rounds, median round by req/s; {where}\n")
        print("| target | request | req/s | p50 (ms) | p99 (ms) | vs floor (median of per-round ratios) | non-2xx |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for i, (name, req, _, _) in enumerate(targets):
            m = med[i]
            print(f"| {name} | {req} | {m['rps']:.0f} | {m['p50']:.3f} | {m['p99']:.3f} | {ratios[i]:.0%} | "
                  f"{m['non2xx']} |")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
