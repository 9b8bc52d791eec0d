#!/usr/bin/env python3
"""Envoy's native global rate limiting (envoy.filters.http.ratelimit, gRPC RLS v3) through the real
Envoy 1.40: ratewall-server's RLS against Kuadrant Limitador's RLS, memory and Redis stores, 1 and
3 descriptors per request, every request allowed; plus the ratewall wasm filter's remote mode on
the same topology (Envoy -> ratewall-server /check on the same store) for Envoy's own CPU.

Topology, all on free 127.0.0.1 ports, started and stopped (by pid) here:

  wrk -t1 -cC -> Envoy (--concurrency 1) -> ratelimit filter --gRPC h2c--> RLS server [-> redis-server]
                                          -> router -> nginx (return 200)

The native filter skips direct_response routes (no route entry), so the route goes to a real
upstream: nginx, one process, `return 200`. Peers (one long-lived server each, one redis-server
each for the Redis store):

  ratewall-rls    ratewall-server, gRPC listener, descriptor rules in envoyproxy/ratelimit format
  limitador-rls   limitador-server (memory --cache 100000 | redis URL), same limits as CEL limits
  ratewall-wasm   ratewall wasm filter, mode remote, -> the same ratewall-server's POST /check

Cells: store (memory, redis) x descriptors (1: user; 3: user, tenant, tool: three descriptors of one
entry each). wrk's Lua script rotates 1,000 users (u0..u999), 10 tenants, 7 tools in x-user-id,
x-tenant-id, x-tool; the route's rate_limits actions turn them into descriptors. Limits are
1,000,000 per minute per value, so every request is allowed.

Rounds are interleaved (cell by cell, peer A B C A B C ...); each round starts a fresh Envoy, runs a
1 s warm-up, then the measured wrk run. CPU: utime + stime from /proc/<pid>/stat of Envoy, the
RLS/check server and its redis-server, before/after the measured run, divided by the requests wrk
completed. The machine is shared (2 cores, other builds): CPU per request is much less sensitive
to that noise than req/s, so the comparison is on CPU; the tables show medians of the rounds.

Checks (the run fails otherwise): every response 200 (wrk non-2xx = 0, no socket errors); for the
native filter Envoy's `cluster.app.ratelimit.ok` grew by at least the completed requests (the RLS
was really called and said OK); and a sanity run per peer and store with a 3-per-minute limit on
domain `tiny`: 1,000 users x 3 = exactly 3,000 requests allowed, the rest 429.

Usage (repository root; after `cargo build --release -p ratewall-server` and
`proxy-wasm-filter/build.sh`; Limitador built at --limitador, Debian redis-server, nginx, wrk):

  .venv/bin/python loadtest/rls_bench.py [--duration 5] [--rounds 3] [--connections 32]
      [--limitador /work/peers/limitador/target/release/limitador-server] [--stores memory,redis]
      [--descriptors 1,3] [--no-sanity]
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "http-service" / "e2e"))
from envoy_rig import Envoy, away_from_window_edge, h2c_cluster, http_cluster  # noqa: E402
from service_harness import free_port  # noqa: E402

SERVER_BIN = ROOT / "target" / "release" / "ratewall-server"
WASM = ROOT / "target" / "ratewall-wasm" / "ratewall_filter.wasm"
TOOLS = [f"tool{i}" for i in range(7)]
BIG = 1_000_000  # per minute per value: never reached in a run

# ratewall: envoyproxy/ratelimit format. Domains bench1 (user), bench3 (user, tenant, tool), tiny.
RATEWALL_RULES = f"""
domain: bench1
descriptors:
  - key: user
    rate_limit: {{unit: minute, requests_per_unit: {BIG}}}
---
domain: bench3
descriptors:
  - key: user
    rate_limit: {{unit: minute, requests_per_unit: {BIG}}}
  - key: tenant
    rate_limit: {{unit: minute, requests_per_unit: {BIG}}}
  - key: tool
    rate_limit: {{unit: minute, requests_per_unit: {BIG}}}
---
domain: tiny
descriptors:
  - key: user
    rate_limit: {{unit: minute, requests_per_unit: 3}}
"""

# The same server's own policy, for the wasm filter's remote mode (POST /check): per user, and with
# tenant and tool headers per tenant and per tool (fixed window, as the RLS rules).
RATEWALL_POLICY = f"""
by_user: "{BIG}/m"
by_tenant: "{BIG}/m"
by_tool: {{{", ".join(f'{t}: "{BIG}/m"' for t in TOOLS)}}}
algorithm: fixed_window
headers: none
fail_mode: closed   # a store error fails the call (Envoy: 500), never a silent allow
"""


def limitador_limits():
    """The same limits in Limitador's format: namespace = RLS domain, one CEL variable per
    descriptor position (Envoy sends the actions' descriptors in order)."""
    out = []
    for ns, keys, n in [("bench1", ["user"], BIG), ("bench3", ["user", "tenant", "tool"], BIG), ("tiny", ["user"], 3)]:
        for i, k in enumerate(keys):
            out.append({"namespace": ns, "name": f"{ns}_{k}", "max_value": n, "seconds": 60,
                        "conditions": [], "variables": [f"descriptors[{i}]['{k}']"]})
    return json.dumps(out, indent=1)  # JSON is YAML


LUA = """
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/app", {["x-user-id"] = "u" .. (n % 1000), ["x-tenant-id"] = "t" .. (n % 10),
                                    ["x-tool"] = "tool" .. (n % 7)})
end
"""

NGINX = """daemon off;
master_process off;
worker_processes 1;
error_log {d}/nginx.err warn;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  keepalive_requests 10000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}
}}
"""


def actions(ndesc):
    keys = [("x-user-id", "user"), ("x-tenant-id", "tenant"), ("x-tool", "tool")][:ndesc]
    return "".join(f"""
                  - actions:
                    - request_headers: {{ header_name: {h}, descriptor_key: {k} }}""" for h, k in keys)


def envoy_config(upstream_port, filter_yaml, clusters, route_extra=""):
    return f"""
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            name: local
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route:
                  cluster: app{route_extra}
          http_filters:{filter_yaml}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:{http_cluster("app", upstream_port)}{clusters}
"""


def native_envoy(upstream_port, rls_port, domain, ndesc):
    filt = f"""
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: {domain}
              timeout: 1s
              failure_mode_deny: true        # an RLS error shows as a 500, never as a silent allow
              rate_limit_service:
                transport_api_version: V3
                grpc_service:
                  envoy_grpc: {{ cluster_name: rls }}"""
    route = "\n                  rate_limits:" + actions(ndesc)
    return envoy_config(upstream_port, filt, h2c_cluster("rls", rls_port, timeout="1s"), route)


def wasm_envoy(upstream_port, http_port, ndesc):
    conf = {"mode": "remote", "remote_cluster": "ratewall", "remote_timeout_ms": 1000, "fail_mode": "closed"}
    if ndesc == 3:
        conf["tool_header"] = "x-tool"
    else:
        conf["tenant_header"] = "x-no-tenant"  # 1 descriptor: the user only
    filt = f"""
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: ratewall
                root_id: ratewall
                allow_on_headers_stop_iteration: true
                failure_policy: FAIL_CLOSED
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {json.dumps(json.dumps(conf))}
                vm_config:
                  vm_id: ratewall
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {WASM} }} }}"""
    return envoy_config(upstream_port, filt, http_cluster("ratewall", http_port))


def cpu_seconds(pid):
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port, duration, connections, script):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "3s", "--latency",
                          "-s", str(script), f"http://127.0.0.1:{port}/app"],
                         capture_output=True, text=True, timeout=duration + 30).stdout
    to_us = lambda m: float(m.group(1)) * {"us": 1, "ms": 1000, "s": 1e6}[m.group(2)]  # noqa: E731
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "n": int(re.search(r"(\d+) requests in", out).group(1)),
            "p50": to_us(re.search(r"\s50%\s+([\d.]+)(us|ms|s)", out)),
            "p99": to_us(re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out)),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "errors": errors.group(0) if errors else "",
            "raw": out}


def redis_cli(port, *cmd):
    return subprocess.run(["redis-cli", "-p", str(port), *cmd], capture_output=True, text=True, timeout=10).stdout


def commandstats(port):
    """{command: (calls, usec)} from INFO commandstats: the time Redis spent executing commands
    (scripts included), without its networking and event loop."""
    out = {}
    for m in re.finditer(r"cmdstat_(\w+):calls=(\d+),usec=(\d+)", redis_cli(port, "INFO", "commandstats")):
        out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out


def wait_port(port, timeout=20):
    import socket  # noqa: PLC0415
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell and peer (default 3)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--limitador", default="/work/peers/limitador/target/release/limitador-server")
    ap.add_argument("--stores", default="memory,redis")
    ap.add_argument("--descriptors", default="1,3")
    ap.add_argument("--peers", default="ratewall-rls,limitador-rls,ratewall-wasm")
    ap.add_argument("--no-sanity", action="store_true", help="skip the 3-per-minute sanity runs")
    ap.add_argument("--json", help="also write all rounds to this file")
    args = ap.parse_args()
    for need in (SERVER_BIN, WASM, Path(args.limitador)):
        if not need.exists():
            sys.exit(f"missing {need}")
    for tool in ("wrk", "nginx", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not installed")
    stores = args.stores.split(",")
    ndescs = [int(x) for x in args.descriptors.split(",")]
    peers = args.peers.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="rw-rls-bench-"))
    script = tmp / "rot.lua"
    script.write_text(LUA)
    procs = []
    env = dict(os.environ, RUST_LOG="warn")

    def start(cmd, log, **kw):
        p = subprocess.Popen(cmd, stdout=open(tmp / log, "wb"), stderr=subprocess.STDOUT, **kw)
        procs.append(p)
        return p

    try:
        up = free_port()
        (tmp / "nginx.conf").write_text(NGINX.format(d=tmp, port=up))
        start(["nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], "nginx.out")
        wait_port(up)
        (tmp / "rules").mkdir()
        (tmp / "rules" / "bench.yaml").write_text(RATEWALL_RULES)
        (tmp / "limits.yaml").write_text(limitador_limits())
        servers = {}  # (peer family, store) -> dict(pid, redis pid, ports)
        for store in stores:
            redis = {}
            if store == "redis":
                for fam in ("ratewall", "limitador"):
                    rp = free_port()
                    redis[fam] = start(["redis-server", "--port", str(rp), "--bind", "127.0.0.1", "--save", "",
                                        "--appendonly", "no", "--dir", str(tmp)], f"redis-{fam}.log")
                    wait_port(rp)
                    redis[fam].port = rp
            hp, gp = free_port(), free_port()
            conf = RATEWALL_POLICY + f"listen: 127.0.0.1:{hp}\ngrpc_listen: 127.0.0.1:{gp}\ndescriptor_config: rules\n"
            if store == "redis":
                conf += f"backend: redis\nredis_url: redis://127.0.0.1:{redis['ratewall'].port}\nredis_timeout_ms: 1000\n"
            (tmp / f"ratewall-{store}.yaml").write_text(conf)
            rw = start([str(SERVER_BIN), "--config", str(tmp / f"ratewall-{store}.yaml")], f"ratewall-{store}.log", env=env)
            wait_port(gp)
            wait_port(hp)
            servers[("ratewall", store)] = {"pid": rw.pid, "redis": redis["ratewall"].pid if redis else None,
                                            "redis_port": redis["ratewall"].port if redis else None,
                                            "grpc": gp, "http": hp}
            lg, lh = free_port(), free_port()
            storage = ["memory", "--cache", "100000"] if store == "memory" else ["redis", f"redis://127.0.0.1:{redis['limitador'].port}"]
            lim = start([args.limitador, "-b", "127.0.0.1", "-p", str(lg), "-B", "127.0.0.1", "-P", str(lh),
                         str(tmp / "limits.yaml")] + storage, f"limitador-{store}.log", env=env)
            wait_port(lg)
            servers[("limitador", store)] = {"pid": lim.pid, "redis": redis["limitador"].pid if redis else None,
                                             "redis_port": redis["limitador"].port if redis else None,
                                             "grpc": lg, "http": lh}

        def envoy_for(peer, store, ndesc, domain=None):
            s = servers[("limitador" if peer.startswith("limitador") else "ratewall", store)]
            if peer == "ratewall-wasm":
                return Envoy(wasm_envoy(up, s["http"], ndesc), tmp), s
            return Envoy(native_envoy(up, s["grpc"], domain or f"bench{ndesc}", ndesc), tmp), s

        sanity = []
        if not args.no_sanity:
            for store in stores:
                for peer in ("ratewall-rls", "limitador-rls"):
                    away_from_window_edge(60, 12)
                    e, _ = envoy_for(peer, store, 1, domain="tiny")
                    try:
                        r = wrk(e.port, 2, args.connections, script)
                        ok, over = e.stat("cluster.app.ratelimit.ok"), e.stat("cluster.app.ratelimit.over_limit")
                    finally:
                        e.stop()
                    line = (f"sanity {peer:14} {store:6} tiny=3/min/user x 1000 users: {r['n']} requests, "
                            f"{r['n'] - r['non2xx']} x 200, {r['non2xx']} non-2xx; Envoy ratelimit.ok {ok}, over_limit {over}")
                    print(line, file=sys.stderr)
                    sanity.append(line)
                    if not (r["n"] - r["non2xx"] == 3000 == ok and over >= r["n"] - 3000):
                        raise SystemExit(f"sanity run failed: {line}")

        results = {}
        for rnd in range(args.rounds):
            for store in stores:
                for ndesc in ndescs:
                    for peer in peers:
                        e, s = envoy_for(peer, store, ndesc)
                        try:
                            wrk(e.port, 1, args.connections, script)  # warm-up
                            ok0 = e.stat("cluster.app.ratelimit.ok")
                            pids = {"envoy": e.proc.pid, "server": s["pid"], "redis": s["redis"]}
                            if s["redis_port"]:
                                redis_cli(s["redis_port"], "CONFIG", "RESETSTAT")
                            before = {k: cpu_seconds(p) for k, p in pids.items()}
                            r = wrk(e.port, args.duration, args.connections, script)
                            after = {k: cpu_seconds(p) for k, p in pids.items()}
                            ok = e.stat("cluster.app.ratelimit.ok") - ok0
                            cs = commandstats(s["redis_port"]) if s["redis_port"] else {}
                        finally:
                            e.stop()
                        for k in pids:
                            r[f"{k}_us"] = (after[k] - before[k]) * 1e6 / r["n"]
                        r["rls_ok"] = ok
                        r["redis_calls"] = sum(c for c, _ in cs.values()) / r["n"]
                        r["redis_cmd_us"] = sum(u for _, u in cs.values()) / r["n"]
                        r["redis_cmds"] = {k: round(c / r["n"], 2) for k, (c, _) in cs.items()}
                        del r["raw"]
                        results.setdefault((store, ndesc, peer), []).append(r)
                        print(f"round {rnd + 1} {store:6} {ndesc} desc {peer:14} {r['rps']:8.0f} req/s  envoy "
                              f"{r['envoy_us']:6.1f}  server {r['server_us']:6.1f}  redis {r['redis_us']:5.1f} µs/req  "
                              f"p50 {r['p50']:.0f} p99 {r['p99']:.0f} µs  non-2xx {r['non2xx']} rls.ok {ok}/{r['n']} "
                              f"{r['errors']}", file=sys.stderr)
                        if r["non2xx"] or r["errors"]:
                            raise SystemExit(f"not every request was allowed: {r}")
                        if peer != "ratewall-wasm" and ok < r["n"]:
                            raise SystemExit(f"the RLS answered OK {ok} times for {r['n']} requests")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s (1 s warm-up), Envoy 1.40 --concurrency 1, "
          f"{args.rounds} interleaved rounds, medians; 1,000 users, all allowed; load average "
          f"{os.getloadavg()[0]:.1f} at the end\n")
    print("| store | descriptors | peer | req/s | p50 µs | p99 µs | Envoy CPU µs/req | RLS/check server CPU µs/check | redis-server CPU µs/check |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for (store, ndesc, peer), rs in results.items():
        redis = f"{med(rs, 'redis_us'):.1f}" if store == "redis" else "—"
        print(f"| {store} | {ndesc} | {peer} | {med(rs, 'rps'):.0f} | {med(rs, 'p50'):.0f} | {med(rs, 'p99'):.0f} | "
              f"{med(rs, 'envoy_us'):.1f} | {med(rs, 'server_us'):.1f} | {redis} |")
    print("\n| store | descriptors | ratewall / Limitador server CPU per check | ratewall / Limitador Redis CPU per check "
          "| ratewall / Limitador req/s | Envoy CPU native (ratewall RLS) / wasm remote |")
    print("|---|---:|---:|---:|---:|---:|")
    for store in stores:
        for ndesc in ndescs:
            a, b, w = (results.get((store, ndesc, p)) for p in ("ratewall-rls", "limitador-rls", "ratewall-wasm"))
            if not (a and b):
                continue
            rr = f"{med(a, 'redis_us') / med(b, 'redis_us'):.2f}x" if store == "redis" else "—"
            ew = f"{med(a, 'envoy_us') / med(w, 'envoy_us'):.2f}x" if w else "—"
            print(f"| {store} | {ndesc} | {med(a, 'server_us') / med(b, 'server_us'):.2f}x | {rr} | "
                  f"{med(a, 'rps') / med(b, 'rps'):.2f}x | {ew} |")
    print("\nall rounds (server µs/check):", {f"{k[0]}/{k[1]}/{k[2]}": [round(r["server_us"], 1) for r in v] for k, v in results.items()})
    print("all rounds (Envoy µs/req):", {f"{k[0]}/{k[1]}/{k[2]}": [round(r["envoy_us"], 1) for r in v] for k, v in results.items()})
    print("all rounds (redis µs/check):", {f"{k[0]}/{k[1]}/{k[2]}": [round(r["redis_us"], 1) for r in v] for k, v in results.items() if k[0] == "redis"})
    print("Redis commands per check (INFO commandstats, median round) and their execution time:")
    for k, v in results.items():
        if k[0] == "redis":
            print(f"  {k[1]} desc {k[2]:14} {med(v, 'redis_calls'):.2f} commands/check, {med(v, 'redis_cmd_us'):.1f} µs/check "
                  f"executing them; last round {v[-1]['redis_cmds']}")
    print("all rounds (req/s):", {f"{k[0]}/{k[1]}/{k[2]}": [round(r["rps"]) for r in v] for k, v in results.items()})
    for line in sanity:
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({f"{k[0]}/{k[1]}/{k[2]}": v for k, v in results.items()}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
