#!/usr/bin/env python3
"""Key flood: N distinct user ids through ratewall-server's memory store, sampling its RSS.

Starts `ratewall-server` (target/release, or $RATEWALL_SERVER_BIN) on a free 127.0.0.1 port with
the memory store (`by_user: 10/h`, so every id stays live for the whole run and the store fills up
and evicts; `memory_max_keys` is the default 1,000,000 unless --max-keys is given), puts a victim
user at its limit (10 admitted, the 11th denied), then floods POST /check with `--ids` new user ids
from wrk (Debian package `wrk`, with loadtest/key_flood.lua generating the ids). While it runs it
samples the server's VmRSS (/proc/<pid>/status) and its /metrics (`ratewall_store_keys`,
`ratewall_evictions_total`, `ratewall_reclaimed_total`); once the server has inserted every id
(store keys + evictions + reclaimed) wrk is stopped. Afterwards the victim must still be denied.

Reports: ids sent, seconds, checks/s, RSS at start and peak (VmHWM), keys stored at the end,
evictions, and bytes per key = (peak RSS - RSS at start) / keys stored. The RSS at start already
holds the store's shard array (64 bytes per 32 keys of the bound) and the runtime.

Bounded: at most --ids distinct ids and --timeout seconds (wrk's -d); loopback only; it stops the
server and wrk it started (by pid). Exit status 1 if the victim was admitted after the flood, if a
response was neither 200 nor 429, or if not every id reached the server before the timeout.

Usage (after `cargo build --release -p ratewall-server`):
  python3 loadtest/key_flood.py --ids 10000000                 # the documented 10M run (~4-5 min here)
  python3 loadtest/key_flood.py --ids 300000 --max-keys 50000 --json /tmp/flood.json
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("RATEWALL_SERVER_BIN", ROOT / "target" / "release" / "ratewall-server"))
LUA = Path(__file__).resolve().with_name("key_flood.lua")
VICTIM_LIMIT = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def check(url: str, user: str) -> int:
    req = urllib.request.Request(
        url + "/check", data=json.dumps({"user": user}).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def metrics(url: str) -> dict:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def inserted(m: dict) -> int:
    """Keys the store has inserted so far: every one is still stored, evicted or reclaimed."""
    return int(m["ratewall_store_keys"] + m["ratewall_evictions_total"] + m["ratewall_reclaimed_total"])


def run(ids: int, max_keys: int | None, threads: int, connections: int, timeout: float, algorithm: str) -> dict:
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk not found (apt-get install wrk)")
    if not BIN.exists():
        raise SystemExit(f"{BIN} not found: run `cargo build --release -p ratewall-server`")
    per_thread = -(-ids // threads)
    ids = per_thread * threads
    tmp = Path(tempfile.mkdtemp(prefix="rw-key-flood-"))
    cfg = tmp / "ratewall.yaml"
    cfg.write_text(
        f"by_user: {VICTIM_LIMIT}/h\nalgorithm: {algorithm}\n"
        + (f"memory_max_keys: {max_keys}\n" if max_keys is not None else "")
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATEWALL_")}
    env["RUST_LOG"] = "warn"
    log = open(tmp / "server.log", "w+")
    server = subprocess.Popen(
        [str(BIN), "--listen", f"127.0.0.1:{port}", "--grpc-listen", "off", "--config", str(cfg)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    wrk_proc = None
    try:
        deadline = time.monotonic() + 15
        while True:
            if server.poll() is not None:
                log.seek(0)
                raise SystemExit(f"ratewall-server exited with {server.returncode}: {log.read()}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("ratewall-server did not become healthy in 15 s")
                time.sleep(0.05)
        victim = [check(url, "victim") for _ in range(VICTIM_LIMIT + 1)]
        if victim != [200] * VICTIM_LIMIT + [429]:
            raise SystemExit(f"victim before the flood: {victim} (want {VICTIM_LIMIT} x 200 then 429)")
        start_m = metrics(url)
        rss_start_kb = proc_status_kb(server.pid, "VmRSS")
        samples = []  # (seconds, VmRSS kB, inserted keys)
        t0 = time.monotonic()
        wrk_proc = subprocess.Popen(
            [wrk, f"-t{threads}", f"-c{connections}", f"-d{int(timeout)}s", "-s", str(LUA), url,
             "--", str(per_thread), "f"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        out_lines = []
        reader = threading.Thread(target=lambda: out_lines.extend(wrk_proc.stdout), daemon=True)
        reader.start()
        # Stop once every id has been inserted, or once no new key arrived for 2 s (the generators
        # are done and only repeat their last ids: a request lost with a reconnecting connection
        # is not sent again); the last growth is the end of the flood.
        n, last_growth = 0, t0
        while wrk_proc.poll() is None:
            time.sleep(0.1)
            now = time.monotonic()
            m = inserted(metrics(url)) - inserted(start_m)
            if m != n:
                n, last_growth = m, now
            samples.append((round(now - t0, 2), proc_status_kb(server.pid, "VmRSS"), n))
            if n >= ids or (n > 0 and now - last_growth > 2.0):
                break
        elapsed = last_growth - t0
        if wrk_proc.poll() is None:
            wrk_proc.send_signal(signal.SIGINT)  # wrk prints its summary and exits
            try:
                wrk_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                wrk_proc.kill()
                wrk_proc.wait()
        reader.join(timeout=5)
        wrk_out = "".join(out_lines)
        end_m = metrics(url)
        victim_after = check(url, "victim")
        peak_kb = proc_status_kb(server.pid, "VmHWM")
        rss_end_kb = proc_status_kb(server.pid, "VmRSS")
        keys = int(end_m["ratewall_store_keys"])
        unexpected = 0
        for line in wrk_out.splitlines():
            if "Non-2xx or 3xx responses" in line:
                unexpected = int(line.rsplit(":", 1)[1])  # 429s of the repeated last ids count here too
        result = {
            "ids": ids,
            "ids_inserted": inserted(end_m) - inserted(start_m),
            # a few requests can be lost by wrk's reconnects (they are never re-sent); 99.99 % must land
            "all_ids_reached_server": inserted(end_m) - inserted(start_m) >= ids - max(1, ids // 10_000),
            "seconds": round(elapsed, 1),
            "checks_per_second": round((inserted(end_m) - inserted(start_m)) / elapsed),
            "max_keys": max_keys if max_keys is not None else "default",
            "rss_start_bytes": rss_start_kb * 1024,
            "rss_peak_bytes": peak_kb * 1024,
            "rss_end_bytes": rss_end_kb * 1024,
            "keys_stored": keys,
            "evictions": int(end_m["ratewall_evictions_total"] - start_m["ratewall_evictions_total"]),
            "reclaimed": int(end_m["ratewall_reclaimed_total"] - start_m["ratewall_reclaimed_total"]),
            "bytes_per_key": round((peak_kb - rss_start_kb) * 1024 / max(keys, 1), 1),
            "victim_after": victim_after,
            "wrk_non_2xx": unexpected,
            "rss_samples": samples[:: max(1, len(samples) // 40)] + samples[-1:],
            "wrk": wrk_out.strip(),
        }
        return result
    finally:
        if wrk_proc is not None and wrk_proc.poll() is None:
            wrk_proc.kill()
            wrk_proc.wait()
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ids", type=int, default=10_000_000, help="distinct user ids to send (default 10,000,000)")
    p.add_argument("--max-keys", type=int, default=None,
                   help="memory_max_keys for the server (default: not set, i.e. the default 1,000,000)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--timeout", type=float, default=600, help="give up after this many seconds (default 600)")
    p.add_argument("--algorithm", default="fixed_window", help="algorithm of the by_user limit (default fixed_window)")
    p.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    a = p.parse_args()
    r = run(a.ids, a.max_keys, a.threads, a.connections, a.timeout, a.algorithm)
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))
    mib = 1024 * 1024
    print(r["wrk"])
    print(
        f"ids sent {r['ids']:,} (inserted {r['ids_inserted']:,}) in {r['seconds']} s "
        f"({r['checks_per_second']:,} checks/s); memory_max_keys {r['max_keys']}\n"
        f"RSS at start {r['rss_start_bytes'] / mib:.1f} MiB, peak {r['rss_peak_bytes'] / mib:.1f} MiB, "
        f"end {r['rss_end_bytes'] / mib:.1f} MiB\n"
        f"keys stored {r['keys_stored']:,}, evictions {r['evictions']:,}, reclaimed {r['reclaimed']:,}; "
        f"bytes per key (peak RSS - start RSS) / keys stored = {r['bytes_per_key']}\n"
        f"victim after the flood: {r['victim_after']} (want 429)"
    )
    ok = r["victim_after"] == 429 and r["all_ids_reached_server"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
