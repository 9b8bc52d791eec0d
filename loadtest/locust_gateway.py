#!/usr/bin/env python3
"""Locust load test through the real ContextForge gateway (`mcp-contextforge-gateway` 1.1.0)
with ratewall's plugin, the peer `cpex-rate-limiter` 0.1.12 and no rate-limit plugin, side by
side in one run, with correctness verdicts and paired latencies.

    python loadtest/locust_gateway.py                       # every configuration, ~4 min of load
    python loadtest/locust_gateway.py --rw-short            # CI: ratewall rust + Redis, 2 workers
    python loadtest/locust_gateway.py --rw-configs rw-rust-redis,rw-rust-redis-open --rw-fault
    python loadtest/locust_gateway.py --help                # locust's options and the ones below

Every configuration is its own gateway (own folder, own copy of one prepared SQLite database,
`--workers` uvicorn workers, the gateway's own rate limiter off), all behind one upstream MCP
server and one redis-server (each Redis configuration with its own key prefix). Calls are
JSON-RPC `tools/call` on `/rpc` with team-scoped JWTs (the plugin's tenant is the team).
Configurations (`--rw-configs`, comma-separated):

| name | plugin | counters | judged as |
|---|---|---|---|
| `none` | no rate-limit plugin | - | every call admitted |
| `peer-memory`, `peer-redis` | cpex-rate-limiter 0.1.12 | per plugin instance / Redis | counted, not judged |
| `rw-rust-memory`, `rw-python-memory` | ratewall, `engine: rust` / `python`, memory | per worker process | per_process:N |
| `rw-rust-redis`, `rw-python-redis` | ratewall, Redis, `fail_mode: closed` | Redis, across workers | exact |
| `rw-rust-redis-open` | ratewall rust, Redis, `fail_mode: open` | Redis, across workers | exact |

The first start of the gateway on a new database takes 10-60 s (migrations), a restart ~5-50 s
on this 2-core machine: set-up time is not part of locust's `--run-time`. Needs Python 3.12
(pyenv) for `loadtest/.venv-gw` (created on first use from `loadtest/requirements-gateway.txt`),
`maturin` (ratewall is installed from `maturin build --release`), redis-server.
"""

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ALL = ["none", "peer-memory", "peer-redis", "rw-rust-memory", "rw-rust-redis", "rw-python-memory", "rw-python-redis"]
SHORT = ["rw-rust-redis"]
EMAIL = "{}@loadtest.example.com"


def arguments(parser):
    from rwload import driver as _driver

    _driver.add_common_arguments(parser, "gateway")
    g = parser.add_argument_group("gateway scenario")
    g.add_argument("--rw-configs", default="", help=f"comma-separated configurations (default: all: {','.join(ALL)})")
    g.add_argument("--rw-workers", type=int, default=2, help="uvicorn workers per gateway (default 2)")
    g.add_argument("--rw-fault", action="store_true", help="pause Redis (SIGSTOP) mid-run, then resume it")
    g.add_argument("--rw-fault-seconds", type=float, default=3.0)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from rwload.driver import exec_locust

    short = "--rw-short" in sys.argv
    exec_locust(__file__, doc=__doc__, arguments=arguments, users=4 if short else 6, run_time="90s" if short else "600s")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gevent  # noqa: E402
from locust import events  # noqa: E402

from rwload import driver  # noqa: E402
from rwload import gateway as gw  # noqa: E402
from rwload.classify import Outcome, classify_gateway_rpc  # noqa: E402
from rwload.procs import Redis  # noqa: E402
from rwload.verdict import Fault, Limit, Policy  # noqa: E402


@events.init_command_line_parser.add_listener
def _args(parser):
    arguments(parser)

def plugin_for(name: str, policy: Policy, redis_url: str):
    base = policy.config()
    if name == "none":
        return None, "unlimited", None
    kind, _, backend = name.partition("-")
    if name.startswith("peer-"):
        cfg = dict(base, backend=backend.split("-")[0])
        if cfg["backend"] == "redis":
            cfg.update(redis_url=redis_url, redis_key_prefix="peer")
        return gw.peer_plugin(cfg), "unjudged", None
    engine, store = name.split("-")[1], name.split("-")[2]
    cfg = dict(base, engine=engine, backend=store)
    fail_mode = None
    if store == "redis":
        fail_mode = "open" if name.endswith("-open") else "closed"
        # 500 ms, not the default 50: with engine: python the budget runs on the gateway's own
        # event loop, which a loaded 2-core machine can stall for longer than 50 ms (seen: a few
        # fail-closed 503s per thousand calls with Redis healthy)
        cfg.update(redis_url=redis_url, redis_key_prefix=name.replace("-", ""), fail_mode=fail_mode,
                   redis_timeout_ms=500)
    return gw.ratewall_plugin(cfg), ("exact" if store == "redis" else "per_process"), fail_mode


def setup(opts, out: Path) -> driver.Rig:
    short = opts.rw_short
    names = [n for n in (opts.rw_configs.split(",") if opts.rw_configs else (SHORT if short else ALL)) if n]
    bad = [n for n in names if n not in ALL + ["rw-rust-redis-open"]]
    if bad:
        raise ValueError(f"--rw-configs: unknown configuration(s) {bad}; known: {ALL + ['rw-rust-redis-open']}")
    policy = Policy(algorithm="fixed_window", by_user=Limit("user", 20, 60), by_tenant=Limit("tenant", 100000, 60))
    rounds, period = (5, 4.0) if short else (50, 6.0)
    burst = 2
    # full run: steady users alone for the first 150 s (the latency figures), then the burst
    driver.configure_users(GatewayUser, opts, rounds, period, burst_users=burst, burst_delay=0.0 if short else 150.0)
    n_users = max(opts.num_users or 0, GatewayUser.burst_users + 1)
    steady = [EMAIL.format(f"{driver.STEADY_PREFIX}-{i}") for i in range(n_users - GatewayUser.burst_users)]
    emails = steady + [EMAIL.format(driver.BURST_ID), EMAIL.format("warmup")]

    print("gateway: preparing the venv and the ratewall wheel ...", flush=True)
    gw.ensure_venv()
    started = []

    def stop_all():
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda p: p.stop(), reversed(started)))

    try:
        redis = Redis(out)
        started.append(redis)
        site = gw.Site(out, f"redis://127.0.0.1:{redis.port}/15")
        started.append(site)
        site.start_upstream()
        t = time.monotonic()
        site.prepare(emails, log=lambda m: print(m, flush=True))
        print(f"gateway: template ready in {time.monotonic() - t:.0f} s; starting {len(names)} gateway(s) "
              f"with {opts.rw_workers} workers each ...", flush=True)
        gws, modes, fail_modes = [], {}, {}
        for n in names:
            plugin, mode, fm = plugin_for(n, policy, redis.url)
            if mode == "per_process":
                mode = f"per_process:{opts.rw_workers}"
            modes[f"gw-{n}"] = mode
            fail_modes[f"gw-{n}"] = fm
            g = gw.Gateway(site, gw.GatewayConfig(n, plugin, opts.rw_workers))
            gws.append(g)
            started.append(g)
        t = time.monotonic()
        with ThreadPoolExecutor(len(gws)) as ex:
            list(ex.map(lambda g: g.wait(), gws))
        print(f"gateway: {len(gws)} gateway(s) up in {time.monotonic() - t:.0f} s; warming up ...", flush=True)
        warm = site.tokens[EMAIL.format("warmup")]
        for g in gws:
            for i in range(3):
                st, _, body = gw.rpc_call(g.url, warm, gw.TOOL, i)
                outcome, detail = classify_gateway_rpc(st, body)
                if outcome not in (Outcome.ALLOWED, Outcome.RATE_LIMITED):
                    raise gw.RigError(f"gateway {g.cfg.name}: warm-up call: {outcome.value} {st} {detail}")
    except BaseException:
        stop_all()
        raise

    team = site.team_id

    def target(g):
        url = g.url + "/rpc"

        def request(identity, n):
            tok = site.tokens[EMAIL.format(identity)]
            return "POST", url, {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}, gw.rpc_body(gw.TOOL, n)

        return driver.Target(g.cfg.name, f"gw-{g.cfg.name}", request, classify_gateway_rpc,
                             lambda ident: (EMAIL.format(ident), team, None))

    rig = driver.Rig(
        targets=[target(g) for g in gws],
        policy_of={f"gw-{n}": policy for n in names},
        mode_of=modes,
        stop=stop_all,
        baseline="none" if "none" in names else None,
        # memory stores: monotonic clocks anchored to the wall clock once per process
        eps_of={d: 0.05 for d, m in modes.items() if m.startswith("per_process")},
        description=(f"ContextForge gateway 1.1.0, {opts.rw_workers} uvicorn workers per gateway, JSON-RPC "
                     f"`tools/call` on `/rpc` ({gw.TOOL}, 3 upstream HTTP requests per call); policy "
                     f"`by_user: 20/m`, `by_tenant: 100000/m`, `fixed_window` (the peer's default algorithm; its "
                     f"windows start at each key's first call, ratewall's are epoch-aligned)."),
    )
    if opts.rw_fault:
        length = opts.rw_fault_seconds
        at = GatewayUser.rounds * GatewayUser.period * 0.4
        judged = [d for d, fm in fail_modes.items() if fm]

        def fault_plan(run):
            gevent.sleep(at)
            t0 = time.time()
            redis.pause()
            faults = [Fault(d, t0, t0 + length, fail_modes[d], distinguishable=False, settle=0.5) for d in judged]
            rig.faults.extend(faults)
            print(f"[fault] redis-server (pid {redis.proc.pid}) paused with SIGSTOP for {length} s", flush=True)
            gevent.sleep(length)
            redis.resume()
            for f in faults:
                f.end = time.time()
            print("[fault] redis-server resumed (SIGCONT)", flush=True)

        rig.fault_plan = fault_plan
        rig.description += f" Fault: Redis paused for {length} s at {at:.0f} s."
    return rig


class GatewayUser(driver.LoadUser):
    abstract = False
    network_timeout = 60.0


driver.register("gateway", setup)
