"""Per-call cost of ``await plugin.tool_pre_invoke(payload, context)``, in one run, same config:

* ``floor``: a no-op plugin returning a fresh ``ToolPreInvokeResult()``;
* ``rust``: ratewall, Rust engine;  ``python``: ratewall, pure-Python engine;
* ``peer``: cpex-rate-limiter 0.1.12 from PyPI.

Scenarios: 1 and 3 dimensions x the algorithms both implement x memory and Redis x sequential,
64 concurrent tasks, 4 OS threads sharing one plugin (one event loop each). Reported: ops/s, p50,
p99 (per call), in-process CPU per call (process_time, all threads), Redis round trips per call
(INFO commandstats). Bounded: a fixed number of calls per cell.

Run (a real redis-server is started on a free loopback port):

    .venv/bin/python pyo3-binding/bench/bench_plugin.py --out docs/benchmarks/plugin.md
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from cpex.framework import (
    GlobalContext,
    Plugin,
    PluginConfig,
    PluginContext,
    ToolPreInvokePayload,
    ToolPreInvokeResult,
)

logging.disable(logging.CRITICAL)

ALGORITHMS = ["fixed_window", "sliding_window", "token_bucket"]  # those the peer has
PLUGINS = ["floor", "rust", "python", "peer"]
# The Rust engine with the GIL released around the memory check (Engine(release_gil=True)): the
# alternative the default was chosen against, measured in the same run (memory cells only).
DETACH = "rust-detach"


class NoopPlugin(Plugin):
    async def tool_pre_invoke(self, payload, context, extensions=None):
        return ToolPreInvokeResult()


def limits(dims: int) -> dict:
    big = "1000000/h"
    if dims == 1:
        return {"by_user": big}
    return {"by_user": big, "by_tenant": big, "by_tool": {"search": big}}


def make(kind: str, dims: int, algorithm: str, backend: str, redis_url: str, tag: str):
    cfg = dict(limits(dims), algorithm=algorithm)
    if backend == "redis":
        cfg.update(backend="redis", redis_url=redis_url, redis_key_prefix=f"b{tag}")
        if kind in ("rust", "python"):
            cfg["redis_timeout_ms"] = 5000
    pc = lambda k, c: PluginConfig(name="rl", kind=k, hooks=["tool_pre_invoke"], config=c)  # noqa: E731
    if kind == "floor":
        return NoopPlugin(pc("bench.NoopPlugin", {}))
    if kind == "peer":
        from cpex_rate_limiter.rate_limiter import RateLimiterPlugin as Peer

        return Peer(pc("cpex_rate_limiter.rate_limiter.RateLimiterPlugin", cfg))
    from ratewall.gateway import RateLimiterPlugin

    os.environ.pop("RATEWALL_ENGINE", None)
    engine = "rust" if kind == DETACH else kind
    p = RateLimiterPlugin(pc("ratewall.gateway.RateLimiterPlugin", dict(cfg, engine=engine)))
    if kind == DETACH:
        from ratewall._ratewall import Engine

        p._engine = Engine(json.dumps(dict(cfg, engine="rust")), None, True)
        p._sync = p._engine.check
    return p


PAYLOAD = ToolPreInvokePayload(name="search", args={"q": "x"})


def context(i: int) -> PluginContext:
    return PluginContext(global_context=GlobalContext(
        request_id=f"r{i}", user=f"user{i % 50}@example.com", tenant_id=f"team-{i % 5}",
        server_id="srv-1"))


CTXS = [context(i) for i in range(50)]


async def run_sequential(plugin, n: int, lat: list):
    hook = plugin.tool_pre_invoke
    pc = time.perf_counter_ns
    for i in range(n):
        c = CTXS[i % 50]
        t = pc()
        await hook(PAYLOAD, c)
        lat.append(pc() - t)


async def run_concurrent(plugin, n: int, lat: list, width: int = 64):
    per = n // width
    await asyncio.gather(*[run_sequential(plugin, per, lat) for _ in range(width)])


def run_threads(plugin, n: int, lat: list, threads: int = 4) -> float:
    """Returns the wall time from the first thread's start to the last thread's end, every thread
    starting with its event loop ready (each records its own instants: the main thread may get
    the GIL back only long after the workers started)."""
    per = n // threads
    lats = [[] for _ in range(threads)]
    spans = [(0.0, 0.0)] * threads
    errors = []
    start = threading.Barrier(threads)

    def work(k):
        loop = asyncio.new_event_loop()
        try:
            start.wait()
            t0 = time.perf_counter()
            loop.run_until_complete(run_sequential(plugin, per, lats[k]))
            spans[k] = (t0, time.perf_counter())
        except Exception as e:  # the peer's Redis client is bound to one loop
            errors.append(repr(e))
        finally:
            loop.close()

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError(errors[0])
    for x in lats:
        lat.extend(x)
    return max(e for _, e in spans) - min(s for s, _ in spans)


def round_trips(plugin, r, calls: int = 200) -> float:
    """Commands the plugin sends per call, counted with MONITOR in a separate, untimed pass
    (commands run inside a Lua script come from "lua" and are not round trips)."""
    seen = {"n": 0}
    ready = threading.Event()

    def watch():
        with r.monitor() as m:
            ready.set()
            for cmd in m.listen():
                if "rw-bench-end" in cmd.get("command", ""):
                    break
                if cmd.get("client_type") != "lua" and "lua" not in str(cmd.get("client_address")):
                    seen["n"] += 1

    t = threading.Thread(target=watch)
    t.start()
    ready.wait(5)
    time.sleep(0.05)
    asyncio.run(run_sequential(plugin, calls, []))
    r.echo("rw-bench-end")
    t.join(10)
    return seen["n"] / calls


def measure(plugin, mode: str, n: int, rclient):
    # warm-up (connect, script load, caches)
    asyncio.run(run_sequential(plugin, 200, []))
    lat: list[int] = []
    gc.collect()
    cpu0 = time.process_time()
    if mode == "4 threads":
        wall = run_threads(plugin, n, lat)
    else:
        loop = asyncio.new_event_loop()
        try:
            wall0 = time.perf_counter()
            if mode == "sequential":
                loop.run_until_complete(run_sequential(plugin, n, lat))
            else:
                loop.run_until_complete(run_concurrent(plugin, n, lat))
            wall = time.perf_counter() - wall0
        finally:
            loop.close()
    cpu = time.process_time() - cpu0
    rt = round_trips(plugin, rclient) if rclient is not None and mode == "sequential" else None
    done = len(lat)
    lat.sort()
    return {
        "ops": done / wall,
        "p50": lat[done // 2] / 1000,
        "p99": lat[min(done - 1, int(done * 0.99))] / 1000,
        "cpu": cpu / done * 1e6,
        "rt": rt,
    }


class Redis:
    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp()
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        self.client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                self.client.ping()
                break
            except Exception:
                time.sleep(0.02)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory-calls", type=int, default=20_000)
    ap.add_argument("--redis-calls", type=int, default=3_200)
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--plugins", default=",".join(PLUGINS + [DETACH]))
    ap.add_argument("--backends", default="memory,redis")
    ap.add_argument("--dims", default="1,3")
    ap.add_argument("--modes", default="sequential,64 tasks,4 threads")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure every cell this many times, modes interleaved; the report shows "
                         "medians, and the 4-thread ratio as the median of paired rounds")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    algs = args.algorithms.split(",")
    plugins = args.plugins.split(",")
    redis = Redis()
    url = f"redis://127.0.0.1:{redis.port}/0"
    rows = []
    tag = 0
    try:
        for backend in args.backends.split(","):
            n = args.memory_calls if backend == "memory" else args.redis_calls
            for dims in [int(d) for d in args.dims.split(",")]:
                for alg in algs:
                    for rep in range(args.repeat):  # rounds interleave the modes
                        for mode in args.modes.split(","):
                            for kind in plugins:
                                tag += 1
                                if kind == "floor" and (dims, alg, backend) != (1, algs[0], "memory"):
                                    continue
                                if kind == DETACH and backend != "memory":
                                    continue
                                p = make(kind, dims, alg, backend, url, str(tag))
                                try:
                                    if hasattr(p, "initialize"):
                                        asyncio.run(p.initialize())
                                    m = measure(p, mode, n, redis.client if backend == "redis" else None)
                                except Exception as e:
                                    m = {"error": repr(e)[:80]}
                                finally:
                                    try:
                                        asyncio.run(p.shutdown())
                                    except Exception:
                                        pass
                                row = dict(kind=kind, backend=backend, dims=dims, alg=alg, mode=mode,
                                           rep=rep, **m)
                                rows.append(row)
                                print(fmt_row(row), flush=True)
    finally:
        redis.stop()
    report = render(rows, args)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


def fmt_row(r) -> str:
    head = f"| {r['kind']} | {r['backend']} | {r['dims']} | {r['alg']} | {r['mode']} |"
    if "error" in r:
        return head + f" error: {r['error']} | | | | |"
    return head + f" {r['ops']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['cpu']:.1f} | {'' if r['rt'] is None else format(r['rt'], '.2f')} |"


def find_all(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items()) and "error" not in r]


def find(rows, **kw):
    """The cell's median over its rounds (each figure its own median)."""
    rs = find_all(rows, **kw)
    if not rs:
        return None
    if len(rs) == 1:
        return rs[0]
    out = dict(rs[0])
    for k in ("ops", "p50", "p99", "cpu"):
        out[k] = statistics.median(r[k] for r in rs)
    out["rt"] = None if rs[0]["rt"] is None else statistics.median(r["rt"] for r in rs)
    return out


def paired_ratio(rows, num: dict, den: dict) -> tuple:
    """Median, min and max over rounds of num.ops / den.ops, pairing rounds (same `rep`)."""
    a = {r["rep"]: r["ops"] for r in find_all(rows, **num)}
    b = {r["rep"]: r["ops"] for r in find_all(rows, **den)}
    ratios = [a[k] / b[k] for k in sorted(a) if k in b]
    if not ratios:
        return None
    return statistics.median(ratios), min(ratios), max(ratios), len(ratios)


def render(rows, args) -> str:
    floor = find(rows, kind="floor", mode="sequential")
    out = [
        "# Gateway plugin benchmark",
        "",
        "Per-call cost of `await plugin.tool_pre_invoke(payload, context)`; one run, same config "
        "for every plugin; limits high enough that nothing is denied; 50 users x 5 tenants.",
        "",
        "Command: `.venv/bin/python pyo3-binding/bench/bench_plugin.py "
        + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"redis-server on loopback. `floor` = no-op plugin returning a fresh result; `rust` / `python` = "
        "ratewall engines; `peer` = cpex-rate-limiter 0.1.12. CPU = in-process CPU per call (all "
        "threads); RT = Redis commands per call.",
        "",
        "## Goals (ratios from this run)",
        "",
    ]
    goals = []
    if floor:
        for alg in sorted({r["alg"] for r in rows}):
            rw = find(rows, kind="rust", backend="memory", dims=3, alg=alg, mode="sequential")
            pe = find(rows, kind="peer", backend="memory", dims=3, alg=alg, mode="sequential")
            if rw and pe:
                ratio = (rw["p50"] - floor["p50"]) / max(pe["p50"] - floor["p50"], 1e-9)
                goals.append(f"- memory, 3 dims, {alg}: (ratewall - floor) / (peer - floor) p50 = "
                             f"({rw['p50']:.2f} - {floor['p50']:.2f}) / ({pe['p50']:.2f} - {floor['p50']:.2f}) "
                             f"= **{ratio:.2f}** (goal <= 0.33)")
    for alg in sorted({r["alg"] for r in rows}):
        for dims in (1, 3):
            s = find(rows, kind="rust", backend="memory", dims=dims, alg=alg, mode="sequential")
            t = find(rows, kind="rust", backend="memory", dims=dims, alg=alg, mode="4 threads")
            if s and t:
                pr = paired_ratio(rows, dict(kind="rust", backend="memory", dims=dims, alg=alg, mode="4 threads"),
                                  dict(kind="rust", backend="memory", dims=dims, alg=alg, mode="sequential"))
                ratio = f"**{pr[0]:.2f}x**" + (f" (median of {pr[3]} paired rounds, {pr[1]:.2f}-{pr[2]:.2f})"
                                                 if pr and pr[3] > 1 else "")
                goals.append(f"- memory, {dims} dims, {alg}, 4 threads: throughput {t['ops']:,.0f} vs "
                             f"single-thread {s['ops']:,.0f} ops/s = {ratio} (goal >= 1); "
                             f"p99 **{t['p99']:.1f} us** (goal <= 100); CPU/call single {s['cpu']:.1f} vs "
                             f"4 threads {t['cpu']:.1f} us = {s['cpu'] / t['cpu']:.2f}x")
            d = find(rows, kind=DETACH, backend="memory", dims=dims, alg=alg, mode="4 threads")
            if s and d:
                goals.append(f"  - same with the GIL released ({DETACH}): {d['ops']:,.0f} ops/s = "
                             f"{d['ops'] / s['ops']:.2f}x; p99 {d['p99']:.1f} us; CPU/call {d['cpu']:.1f} us")
    for alg in sorted({r["alg"] for r in rows}):
        for dims in (1, 3):
            rs = find(rows, kind="rust", backend="redis", dims=dims, alg=alg, mode="sequential")
            ps = find(rows, kind="peer", backend="redis", dims=dims, alg=alg, mode="sequential")
            py = find(rows, kind="python", backend="redis", dims=dims, alg=alg, mode="sequential")
            rc = find(rows, kind="rust", backend="redis", dims=dims, alg=alg, mode="64 tasks")
            pc = find(rows, kind="peer", backend="redis", dims=dims, alg=alg, mode="64 tasks")
            if rs and ps:
                goals.append(f"- Redis, {dims} dims, {alg}: client CPU/call {rs['cpu']:.0f} vs peer "
                             f"{ps['cpu']:.0f} us = **{rs['cpu'] / ps['cpu']:.2f}** (goal <= 0.25)")
            if rc and pc:
                goals.append(f"- Redis, {dims} dims, {alg}: 64 in flight {rc['ops']:,.0f} vs peer "
                             f"{pc['ops']:,.0f} ops/s = **{rc['ops'] / pc['ops']:.1f}x** (goal >= 3)")
            if rs and py:
                goals.append(f"- Redis, {dims} dims, {alg}: sequential p50 rust {rs['p50']:.0f} us vs "
                             f"python engine {py['p50']:.0f} us (goal: rust <= python)")
    out += goals
    out += ["", "## All cells", "",
            "| plugin | backend | dims | algorithm | mode | ops/s | p50 us | p99 us | CPU us/call | RT/call |",
            "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    cells = []
    for r in rows:
        key = {k: r[k] for k in ("kind", "backend", "dims", "alg", "mode")}
        if key not in cells:
            cells.append(key)
    out += [fmt_row(find(rows, **c) or dict(c, error="failed")) for c in cells]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
