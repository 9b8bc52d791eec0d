#!/usr/bin/env python3
"""Locust load test of ratewall-server: `POST /check` and `GET /authz`, memory and Redis, with
correctness verdicts.

    python loadtest/locust_service.py [--rw-short] [--rw-algorithm gcra] [--rw-fault] [--rw-out DIR]
    python loadtest/locust_service.py --help          # locust's options and the ones below

(the same as `locust -f loadtest/locust_service.py --headless -u 6 -r 6 -t 120s ...`).

Rig, all on free loopback ports: one redis-server; ratewall-server `mem` (memory store);
`redis-a` and `redis-b`, two instances on the one Redis (one counter set, `fail_mode: closed`);
`redis-open`, a third instance on the same Redis with its own key prefix and `fail_mode: open`.
Targets: `/check` and `/authz` on `mem` (one counter domain: both endpoints share the store),
`/check` on `redis-a` and `/authz` on `redis-b` (one domain across two instances), `/check` on
`redis-open`. Policy: `by_user` and `by_tenant` (every call consumes both, all or nothing), the
algorithm of `--rw-algorithm`.

`--rw-fault` pauses the Redis server with SIGSTOP in the middle of the run and resumes it with
SIGCONT: the fail-closed instances must answer 503 `backend_unavailable`, the fail-open one must
admit (with no rate-limit headers), and every answer must still be classified as such. Needs
`cargo build --release -p ratewall-server`.
"""

import sys
import time
from pathlib import Path

TENANT = "t1"
# The memory store's clock is monotonic and anchored to the wall clock at start-up; the wall
# clock's later corrections move them apart (seen here: 5-15 ms within a minute)
MEMORY_CLOCK_SLACK = 0.05


def arguments(parser):
    from rwload import driver as _driver

    _driver.add_common_arguments(parser, "service")
    g = parser.add_argument_group("service scenario")
    g.add_argument("--rw-algorithm", default="fixed_window",
                   choices=["fixed_window", "sliding_window", "sliding_window_counter", "token_bucket", "gcra"])
    g.add_argument("--rw-fault", action="store_true", help="pause Redis (SIGSTOP) mid-run, then resume it")
    g.add_argument("--rw-fault-seconds", type=float, default=0.0, help="length of the pause (default 1.5 short, 3 full)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from rwload.driver import exec_locust

    short = "--rw-short" in sys.argv
    exec_locust(__file__, doc=__doc__, arguments=arguments, users=6, run_time="60s" if short else "240s")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gevent  # noqa: E402
from locust import events  # noqa: E402

from rwload import driver  # noqa: E402
from rwload.classify import classify_service  # noqa: E402
from rwload.procs import RatewallServer, Redis  # noqa: E402
from rwload.verdict import Fault, Limit, Policy  # noqa: E402


@events.init_command_line_parser.add_listener
def _args(parser):
    arguments(parser)

def server_config(policy: Policy, backend: str, redis_url: str = "", prefix: str = "rl", fail_mode: str = "closed") -> str:
    lines = [f'algorithm: {policy.algorithm}', f'by_user: "{policy.by_user.count}/{policy.by_user.window}s"',
             f'by_tenant: "{policy.by_tenant.count}/{policy.by_tenant.window}s"', "headers: legacy",
             "watch_config: false", f"backend: {backend}"]
    if backend == "redis":
        lines += [f"redis_url: {redis_url}", f"redis_key_prefix: {prefix}", f"fail_mode: {fail_mode}",
                  "redis_timeout_ms: 50"]
    return "\n".join(lines) + "\n"


def check_target(name, domain, url):
    def request(identity, n):
        body = ('{"user": "%s", "tenant": "%s"}' % (identity, TENANT)).encode()
        return "POST", url + "/check", {"content-type": "application/json"}, body

    return driver.Target(name, domain, request, classify_service, lambda ident: (ident, TENANT, None))


def authz_target(name, domain, url):
    def request(identity, n):
        return "GET", url + f"/authz/api/items/{n}", {"x-user-id": identity, "x-tenant-id": TENANT}, None

    return driver.Target(name, domain, request, classify_service, lambda ident: (ident, TENANT, None))


def setup(opts, out: Path) -> driver.Rig:
    short = opts.rw_short
    policy = Policy(algorithm=opts.rw_algorithm, by_user=Limit("user", 10, 2), by_tenant=Limit("tenant", 5000, 2))
    started = []

    def stop_all():
        for p in reversed(started):
            try:
                p.stop()
            except Exception:  # noqa: BLE001
                pass

    try:
        redis = Redis(out)
        started.append(redis)
        mem = RatewallServer(out, server_config(policy, "memory"), "mem")
        started.append(mem)
        cfg = server_config(policy, "redis", redis.url, "rl", "closed")
        a = RatewallServer(out, cfg, "redis-a")
        started.append(a)
        b = RatewallServer(out, cfg, "redis-b")
        started.append(b)
        o = RatewallServer(out, server_config(policy, "redis", redis.url, "rlopen", "open"), "redis-open")
        started.append(o)
    except BaseException:
        stop_all()
        raise
    targets = [
        check_target("mem /check", "service-memory", mem.url),
        authz_target("mem /authz", "service-memory", mem.url),
        check_target("redis-a /check", "service-redis", a.url),
        authz_target("redis-b /authz", "service-redis", b.url),
        check_target("redis-open /check", "service-redis-open", o.url),
    ]
    rig = driver.Rig(
        targets=targets,
        policy_of={d: policy for d in ("service-memory", "service-redis", "service-redis-open")},
        mode_of={d: "exact" for d in ("service-memory", "service-redis", "service-redis-open")},
        stop=stop_all,
        baseline="mem /check",
        eps_of={"service-memory": MEMORY_CLOCK_SLACK},
        description=(f"ratewall-server, policy `by_user: {policy.by_user.count}/{policy.by_user.window}s`, "
                     f"`by_tenant: {policy.by_tenant.count}/{policy.by_tenant.window}s`, `{policy.algorithm}`; "
                     "`mem`: memory store; `redis-a` + `redis-b`: two instances on one Redis (fail closed); "
                     "`redis-open`: same Redis, own prefix, fail open."),
    )
    rounds, period = (10, 1.0) if short else (120, 1.0)
    driver.configure_users(ServiceUser, opts, rounds, period, burst_users=2)
    if opts.rw_fault:
        length = opts.rw_fault_seconds or (1.5 if short else 3.0)
        at = (ServiceUser.rounds * ServiceUser.period) * 0.4

        def fault_plan(run):
            gevent.sleep(at)
            t0 = time.time()
            redis.pause()
            faults = [Fault("service-redis", t0, t0 + length, "closed"),
                      Fault("service-redis-open", t0, t0 + length, "open")]
            rig.faults.extend(faults)
            print(f"[fault] redis-server (pid {redis.proc.pid}) paused with SIGSTOP for {length} s", flush=True)
            gevent.sleep(length)
            redis.resume()
            t1 = time.time()
            for f in faults:
                f.end = t1
            print("[fault] redis-server resumed (SIGCONT)", flush=True)

        rig.fault_plan = fault_plan
        rig.description += f" Fault: Redis paused for {length} s at {at:.0f} s."
    return rig


class ServiceUser(driver.LoadUser):
    abstract = False


driver.register("service", setup)
