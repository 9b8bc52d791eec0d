#!/usr/bin/env python3
"""Bounded wrk benchmark of Envoy on loopback, all variants in one run:

  none        no filter (router only)
  noop-wasm   the no-op proxy-wasm filter (same SDK and V8 runtime as ratewall)
  ratewall-local   ratewall-filter, mode local (shared-data slots, one hot key, never denies)
  ratewall-no-limits  the same filter with no limit configured (breakdown: context + headers)
  ratewall-remote  ratewall-filter, mode remote (ratewall-server + redis-server), if built
  native-local-rl  Envoy's envoy.filters.http.local_ratelimit (one bucket per x-user-id)

Every request hits the /direct route (Envoy answers itself), so the figures are Envoy's own cost
plus the filter's. Usage (from the repository root, after proxy-wasm-filter/build.sh):

  .venv/bin/python proxy-wasm-filter/bench/envoy_bench.py [--duration 5] [--rounds 2] [--connections 16]
      [--only none,noop-wasm,ratewall-local] [--compare old=/path/to/ratewall_filter.wasm]

--compare adds `ratewall-local@old` (the same local configuration on another build of the filter,
e.g. the previous commit's module) to the same run, so a change is measured against its baseline
under the same machine load. --only restricts the run to some variants (`none` and `noop-wasm` are
always kept: they are the reference).

Prints a Markdown table. Throughput on a shared 2-core machine is noisy, so the comparison uses the
Envoy process's own CPU time (utime + stime of all its threads, /proc/<pid>/stat) divided by the
requests wrk completed: CPU µs per request. A filter's overhead = its CPU µs/request minus the
no-filter run's; the ratio column divides by the no-op wasm filter's overhead. Best (lowest CPU)
of the rounds.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
import conftest as c  # noqa: E402

LIMIT = "1000000/s"  # never reached: every request runs the whole allow path


def wrk(port, duration, connections):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-H", "x-user-id: bench", f"http://127.0.0.1:{port}/direct"],
        capture_output=True, text=True, timeout=duration + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    to_us = lambda m: float(m.group(1)) * {"us": 1, "ms": 1000, "s": 1e6}[m.group(2)]  # noqa: E731
    return {"rps": rps, "p50": to_us(p50), "p99": to_us(p99), "non2xx": int(non2xx.group(1)) if non2xx else 0, "n": requests_done(out)}


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests_done(out):
    return int(re.search(r"(\d+) requests in", out).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=1, help="Envoy worker threads")
    ap.add_argument("--only", default="", help="comma-separated variants to run (none and noop-wasm always run)")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=WASM", help="also run ratewall-local on another build of the filter")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ratewall-bench-"))
    procs = []
    variants = {
        "none": [],
        "noop-wasm": [c.wasm_filter("{}", wasm=c.NOOP_WASM, vm_id="noop", name="noop")],
        "ratewall-local": [c.wasm_filter({"by_user": LIMIT})],
        # breakdown: the same filter with no limit configured (headers read, nothing stored)
        "ratewall-no-limits": [c.wasm_filter({})],
        "native-local-rl": [c.native_local_ratelimit(1_000_000_000)],
    }
    for spec in args.compare:
        label, _, path = spec.partition("=")
        variants[f"ratewall-local@{label}"] = [c.wasm_filter({"by_user": LIMIT}, wasm=Path(path).resolve(), vm_id=f"ratewall-{label}")]
    only = {"none", "noop-wasm"} | set(filter(None, args.only.split(",")))
    if args.only:
        variants = {k: v for k, v in variants.items() if k in only or k.startswith("ratewall-local@")}
    extra = []
    if c.SERVER_BIN.exists() and shutil.which("redis-server") and (not args.only or "ratewall-remote" in only):
        rport, sport = c.free_port(), c.free_port()
        procs.append(c.start_process(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], tmp / "redis.log"))
        c.wait_port(rport)
        (tmp / "server.yaml").write_text(f'by_user: "{LIMIT}"\nbackend: redis\nredis_url: redis://127.0.0.1:{rport}\nlisten: 127.0.0.1:{sport}\n')
        procs.append(c.start_process([str(c.SERVER_BIN), "--config", str(tmp / "server.yaml")], tmp / "server.log", env=dict(os.environ, RUST_LOG="warn")))
        c.wait_port(sport)
        variants["ratewall-remote"] = [c.wasm_filter({"mode": "remote", "remote_cluster": "ratewall"})]
        extra = [("ratewall", sport)]
    results = {k: [] for k in variants}
    try:
        for _ in range(args.rounds):
            for name, filters in variants.items():
                e = c.Envoy(c.envoy_config(filters, 9, extra_clusters=extra), concurrency=args.concurrency, tmp=tmp)
                try:
                    wrk(e.port, 1, args.connections)  # warm-up
                    before = cpu_seconds(e.proc.pid)
                    r = wrk(e.port, args.duration, args.connections)
                    r["cpu_us"] = (cpu_seconds(e.proc.pid) - before) * 1e6 / r["n"]
                    results[name].append(r)
                finally:
                    e.stop()
    finally:
        for p in procs:
            c.stop_process(p)
    best = {k: min(v, key=lambda r: r["cpu_us"]) for k, v in results.items()}
    base = best["none"]["cpu_us"]
    noop_over = best["noop-wasm"]["cpu_us"] - base
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s, Envoy --concurrency {args.concurrency}, {args.rounds} rounds (lowest CPU/request shown), /direct route\n")
    print("| variant | req/s | p50 µs | p99 µs | non-2xx | Envoy CPU µs/request | overhead µs | overhead / no-op wasm |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in best.items():
        over = r["cpu_us"] - base
        ratio = "—" if name == "none" else f"{over / noop_over:.2f}x"
        print(f"| {name} | {r['rps']:.0f} | {r['p50']:.0f} | {r['p99']:.0f} | {r['non2xx']} | {r['cpu_us']:.1f} | {over:.1f} | {ratio} |")
    print("\nall rounds (CPU µs/request):", {k: [round(r["cpu_us"], 1) for r in v] for k, v in results.items()})
    print("all rounds (req/s):", {k: [round(r["rps"]) for r in v] for k, v in results.items()})


if __name__ == "__main__":
    main()
