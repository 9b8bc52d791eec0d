"""Drivers: one per packaging and backend. Each declares the scenario features it can express;
the runner sends a scenario through every driver that can express it.

A driver is used from one thread at a time: ``prepare(scenario, config)`` (the scenario's policy
with the runner's backend keys: ``backend``, ``redis_url``, ``redis_key_prefix``), then
``send(request, at_micros)`` per request, then ``finish()``. Drivers on a manual clock set it to
``at_micros`` (the step's exact instant); the others run on the wall clock and ignore it.

Requests are the scenario's request mappings: ``user`` (absent: anonymous), ``tenant`` (absent:
no tenant), ``tool``, ``server``, ``cost``, ``batch`` (MCP batch: a list of tool names),
``descriptors`` (``{name: value}`` for ``limits``), ``rls`` (a ShouldRateLimit request).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any, Optional

import requests

from .scenario import RATE_LIMIT_HEADERS, Observation, Scenario

_RL_LOWER = {n.lower(): n for n in RATE_LIMIT_HEADERS}

# Features every driver has.
BASE = frozenset({"user", "tenant", "tool", "server"})
STATUS_BY_CODE = {0: 200, 1: 200, 2: 429, 3: 503, 4: 200, 5: 503}


def descriptor_header(name: str) -> str:
    return f"x-rw-d-{name.lower()}"


def descriptor_names(policy: dict) -> list[str]:
    names: list[str] = []
    for lim in policy.get("limits", []) or []:
        for d in lim.get("descriptors", []):
            if d not in names:
                names.append(d)
    return names


def rate_limit_lines(items) -> list[tuple[str, str]]:
    """The rate-limit header lines of an HTTP response, in order, names as the core spells them
    (HTTP/1.1 names are case-insensitive; Envoy and hyper send them in lower case)."""
    return [(_RL_LOWER[k.lower()], v) for k, v in items if k.lower() in _RL_LOWER]


class Driver:
    name = "?"
    packaging = "?"
    backend = "memory"
    features: frozenset = BASE
    manual_clock = False
    # HTTP drivers compare header names case-insensitively (see rate_limit_lines)
    http_names = False

    def can_run(self, scenario: Scenario) -> Optional[str]:
        """None if this driver can run `scenario`, else why not."""
        if scenario.packagings is not None and self.packaging not in scenario.packagings:
            return "the scenario names other packagings"
        if (self.backend.startswith("redis") and "redis" not in scenario.backends) or (
            self.backend == "memory" and "memory" not in scenario.backends
        ):
            return f"backend {self.backend} not in the scenario's backends"
        missing = scenario.features() - self.features
        if any(s.expect and "tool" not in s.request and "batch" not in s.request and "rls" not in s.request
               for s in scenario.steps) and "no_tool" not in self.features:
            missing.add("no_tool")
        if missing:
            return f"cannot express {sorted(missing)}"
        return None

    def prepare(self, scenario: Scenario, config: dict) -> None:
        raise NotImplementedError

    def send(self, req: dict, at_micros: int) -> Observation:
        raise NotImplementedError

    def finish(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# the core through the plugin's extension (Rust) and the pure-Python engine, called directly


class EngineDriver(Driver):
    """``ratewall._ratewall.Engine`` (the Rust core) called directly. Memory: on a ManualClock
    (exact instants). Redis: the core's Redis store on Redis ``TIME`` (wall clock)."""

    packaging = "core"

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"core-{backend}"
        self.manual_clock = backend == "memory"
        self.features = BASE | {"no_tool"} | ({"redis_down"} if backend == "redis" else set())

    def prepare(self, scenario, config):
        from ratewall import _ratewall

        self.clock = _ratewall.ManualClock() if self.manual_clock else None
        self.engine = _ratewall.Engine(json.dumps(config), self.clock)
        self.loop = None
        if self.backend != "memory":
            self.loop = asyncio.new_event_loop()
            self.completer = _ratewall.Completer(self.loop)
            self.loop.add_reader(self.completer.fileno(), self.completer.drain)
            err = self.loop.run_until_complete(self.engine.connect(self.completer))
            assert not err, f"{self.name}: connect: {err}"

    def send(self, req, at_micros):
        args = (req.get("user"), req.get("tenant"), req.get("server"), req.get("tool"), "server" in req)
        if self.loop is None:
            self.clock.set_micros(at_micros)
            r = self.engine.check(*args)
        else:
            r = self.loop.run_until_complete(self.engine.check_async(self.completer, *args))
        return answer_observation(r)

    def finish(self):
        self.engine.close()
        if self.loop is not None:
            self.loop.remove_reader(self.completer.fileno())
            self.loop.close()


class PythonEngineDriver(Driver):
    """``ratewall.engine_py.PythonEngine`` (the pure-Python engine), memory store, manual clock."""

    packaging = "engine-py"
    name = "engine-py-memory"
    manual_clock = True
    features = BASE | {"no_tool"}

    def prepare(self, scenario, config):
        from ratewall.engine_py import PythonEngine
        from ratewall.gateway import load_config

        _, compiled, _ = load_config(config)
        self.now = 0
        self.engine = PythonEngine(compiled, "", lambda: self.now)

    def send(self, req, at_micros):
        self.now = at_micros
        return answer_observation(
            self.engine.check(req.get("user"), req.get("tenant"), req.get("server"), req.get("tool"), "server" in req)
        )


def answer_observation(r) -> Observation:
    code, headers, extra = r
    reason = None
    if code == 2 and isinstance(extra, dict):
        reason = extra.get("reason")
    elif code == 3:
        reason = "backend_unavailable"
    return Observation(STATUS_BY_CODE[code], list((headers or {}).items()), reason=reason, raw=r)


# ---------------------------------------------------------------------------------------------
# the gateway plugin through the real cpex framework


class PluginDriver(Driver):
    """ratewall.gateway.RateLimiterPlugin loaded by cpex (a TenantPluginManager reading a plugin
    YAML, as the gateway does), hooks invoked through the manager."""

    packaging = "plugin"

    def __init__(self, engine: str, backend: str, tmp: Path):
        self.engine_name = engine
        self.backend = backend
        self.name = f"plugin-{engine}-{backend}"
        self.tmp = tmp
        self.features = BASE | ({"redis_down"} if backend == "redis" else set())

    def prepare(self, scenario, config):
        import yaml
        from cpex.framework.manager import TenantPluginManager

        doc = {
            "plugins": [{
                "name": "RateLimiterPlugin",
                "kind": "ratewall.gateway.RateLimiterPlugin",
                "hooks": ["tool_pre_invoke", "prompt_pre_fetch"],
                "mode": "enforce",
                "priority": 20,
                "config": dict(config, engine=self.engine_name),
            }],
            "plugin_dirs": [],
        }
        path = self.tmp / f"{self.name}-{scenario.name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        self.loop = asyncio.new_event_loop()
        self.pm = TenantPluginManager(str(path), timeout=30)
        self.loop.run_until_complete(self.pm.initialize())
        assert self.pm.plugin_count == 1, f"{self.name}: plugin not loaded"
        self.n = 0

    def send(self, req, at_micros):
        from cpex.framework import GlobalContext, ToolPreInvokePayload

        self.n += 1
        gc = GlobalContext(request_id=f"r{self.n}", user=req.get("user"), tenant_id=req.get("tenant"),
                           server_id=req.get("server"))
        payload = ToolPreInvokePayload(name=req["tool"], args={})
        res, _ = self.loop.run_until_complete(self.pm.invoke_hook("tool_pre_invoke", payload, gc))
        v = res.violation
        if v is None:
            assert res.continue_processing, f"{self.name}: no violation but stopped: {res!r}"
            # cpex's manager drops an allowed result's http_headers (the gateway sends none on
            # success): nothing to compare unless a framework version starts passing them on.
            return Observation(200, None if res.http_headers is None else list(res.http_headers.items()), raw=res)
        reason = {"BACKEND_UNAVAILABLE": "backend_unavailable"}.get(v.code)
        if v.code == "RATE_LIMIT" and isinstance(v.details, dict):
            reason = v.details.get("reason")
        return Observation(v.http_status_code, list((v.http_headers or {}).items()), reason=reason, raw=v)

    def finish(self):
        self.loop.run_until_complete(self.pm.shutdown())
        self.loop.close()


# ---------------------------------------------------------------------------------------------
# ratewall-server: /check, /authz, RLS


SERVICE_KEYS = {
    "authz": {"cost_header": "x-rw-cost"},
    "rls_response_headers": True,
    "watch_config": False,
}


class ServiceProcess:
    """One ratewall-server, reconfigured per scenario (write the file, SIGHUP, wait for the new
    generation in /metrics). `Server` is http-service/e2e's harness."""

    def __init__(self, server_cls, tmp: Path, label: str):
        tmp = tmp / label
        tmp.mkdir(parents=True, exist_ok=True)
        self.server = server_cls('by_user: "1/s"\nwatch_config: false\n', tmp, env={"RUST_LOG": "warn"})
        self.url = self.server.url
        self.grpc = self.server.grpc

    def generation(self) -> int:
        return int(self.server.metric("ratewall_config_generation"))

    def configure(self, config: dict) -> None:
        import yaml

        cfg = dict(config)
        authz = dict(SERVICE_KEYS["authz"])
        names = descriptor_names(cfg)
        if names:
            authz["descriptors"] = {n: descriptor_header(n) for n in names}
        cfg.update({k: v for k, v in SERVICE_KEYS.items() if k != "authz"}, authz=authz)
        before = self.generation()
        self.server.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.server.send(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.generation() == before:
            if time.monotonic() > deadline:
                raise AssertionError(f"ratewall-server did not reload: {self.server.stderr()[-2000:]}")
            time.sleep(0.02)

    def stop(self):
        self.server.stop()


class ServiceCheckDriver(Driver):
    """POST /check on the real ratewall-server (release binary)."""

    packaging = "service-check"
    features = BASE | {"cost", "descriptors", "no_tool", "redis_down", "refusal"}

    def __init__(self, backend: str, process: ServiceProcess):
        self.backend = backend
        self.name = f"service-check-{backend}"
        self.proc = process
        self.session = requests.Session()

    def prepare(self, scenario, config):
        self.proc.configure(config)

    def send(self, req, at_micros):
        body = {k: req[k] for k in ("user", "tenant", "tool", "server", "descriptors", "cost") if k in req}
        r = self.session.post(self.proc.url + "/check", json=body, timeout=10)
        return service_observation(r)


class ServiceAuthzDriver(Driver):
    """Proxy mode: GET /authz/... with the identity in headers (as Envoy ext_authz, nginx
    auth_request and Traefik ForwardAuth send it)."""

    packaging = "service-authz"
    features = BASE | {"cost", "descriptors", "no_tool", "redis_down", "refusal"}

    def __init__(self, backend: str, process: ServiceProcess):
        self.backend = backend
        self.name = f"service-authz-{backend}"
        self.proc = process
        self.session = requests.Session()

    def prepare(self, scenario, config):
        self.proc.configure(config)

    def send(self, req, at_micros):
        h = {}
        for key, header in (("user", "x-user-id"), ("tenant", "x-tenant-id"), ("tool", "x-mcp-tool"),
                            ("server", "x-mcp-server"), ("cost", "x-rw-cost")):
            if key in req:
                h[header] = str(req[key]).strip()  # HTTP drops surrounding whitespace
        for n, v in (req.get("descriptors") or {}).items():
            h[descriptor_header(n)] = v
        r = self.session.get(self.proc.url + "/authz/api", headers=h, timeout=10)
        obs = service_observation(r)
        if obs.field == "x-rw-cost":
            obs.field = "cost"
        return obs


def service_observation(r: requests.Response) -> Observation:
    body = r.json()
    if r.status_code == 400:
        return Observation(400, [], field=body.get("field"), raw=body)
    lines = [(n, v) for n, v in body["headers"]]
    obs = Observation(r.status_code, lines, reason=body.get("reason"), raw=body)
    http = rate_limit_lines(r.raw.headers.items())
    if http != lines:
        obs.problems.append(f"HTTP headers {http} differ from the JSON body's {lines}")
    return obs


# ---------------------------------------------------------------------------------------------
# the wasm filter in Envoy


class EnvoyDriver(Driver):
    """ratewall-filter in a real Envoy 1.40, one listener per scenario (the scenario's own plugin
    configuration), started once for every scenario. Requests with a tool are MCP ``tools/call``
    POSTs, batches JSON-RPC arrays, the rest GETs; the identity is in headers."""

    http_names = True

    def __init__(self, mode: str, backend: str):
        self.mode = mode
        self.backend = backend
        self.packaging = f"envoy-{mode}"
        self.name = f"envoy-{mode}" + ("" if mode == "local" else f"-{backend}")
        self.features = BASE | {"batch", "descriptors", "no_tool"} | ({"redis_down"} if mode == "remote" else set())
        self.ports: dict[str, int] = {}
        self.service: Optional[ServiceProcess] = None
        self.session = requests.Session()

    def filter_config(self, scenario: Scenario, config: dict) -> dict:
        """The plugin configuration of this scenario's listener."""
        names = descriptor_names(scenario.policy)
        if self.mode == "local":
            cfg = {k: v for k, v in config.items() if k not in ("backend", "redis_url", "redis_timeout_ms")}
        else:
            cfg = {"mode": "remote", "remote_cluster": "ratewall", "remote_timeout_ms": 2000}
            for k in ("fail_mode", "headers"):
                if k in config:
                    cfg[k] = config[k]
        if names:
            cfg["descriptor_headers"] = {n: descriptor_header(n) for n in names}
        return cfg

    def prepare(self, scenario, config):
        self.port = self.ports[scenario.name]
        if self.service is not None:
            self.service.configure(config)

    def send(self, req, at_micros):
        h = {}
        for key, header in (("user", "x-user-id"), ("tenant", "x-tenant-id"), ("server", "x-server-id")):
            if key in req:
                h[header] = req[key].strip()  # HTTP drops surrounding whitespace
        for n, v in (req.get("descriptors") or {}).items():
            h[descriptor_header(n)] = v
        url = f"http://127.0.0.1:{self.port}/direct"
        if "batch" in req:
            calls = [mcp_call(t, i + 1) for i, t in enumerate(req["batch"])]
            r = self.session.post(url, data=json.dumps(calls), headers=dict(h, **{"content-type": "application/json"}), timeout=10)
        elif "tool" in req:
            r = self.session.post(url, data=json.dumps(mcp_call(req["tool"], 1)),
                                  headers=dict(h, **{"content-type": "application/json"}), timeout=10)
        else:
            r = self.session.get(url, headers=h, timeout=10)
        reason = None
        if r.status_code in (429, 503) and r.headers.get("content-type") == "application/json":
            body = r.json()
            first = body[0] if isinstance(body, list) else body
            data = first.get("error", {}).get("data", first) if "jsonrpc" in first else first
            reason = data.get("reason") if isinstance(data, dict) else None
        return Observation(r.status_code, rate_limit_lines(r.raw.headers.items()), reason=reason, raw=r.text)


def mcp_call(tool: str, id_: int) -> dict:
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": tool, "arguments": {}}}


class RlsDriver(Driver):
    """Envoy's Rate Limit Service v3 (``ShouldRateLimit``) on ratewall-server's gRPC listener,
    called with grpcio; the rules are the scenario policy's ``domains``."""

    packaging = "rls"
    features = frozenset({"rls", "redis_down"})
    http_names = True  # response_headers_to_add: Envoy adds them to an HTTP response

    def __init__(self, backend: str, process: Optional[ServiceProcess]):
        self.backend = backend
        self.name = f"rls-{backend}"
        self.proc = process

    def can_run(self, scenario):
        if "rls" not in scenario.features():
            return "not an RLS scenario"
        return super().can_run(scenario)

    def prepare(self, scenario, config):
        import grpc

        from .rls_wire import METHOD

        self.proc.configure(config)
        self.channel = grpc.insecure_channel(self.proc.grpc)
        self.call = self.channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

    def send(self, req, at_micros):
        import grpc

        from .rls_wire import decode_response, encode_request

        r = req["rls"]
        try:
            raw = self.call(encode_request(r["domain"], r["descriptors"], r.get("hits_addend")), timeout=10)
        except grpc.RpcError as e:
            status = {grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.INVALID_ARGUMENT: 400}.get(e.code(), 500)
            return Observation(status, [], raw=f"{e.code()}: {e.details()}")
        out = decode_response(raw)
        status = 200 if out["overall"] == "OK" else 429
        return Observation(status, out["headers"], rls=out, raw=out)

    def finish(self):
        self.channel.close()
