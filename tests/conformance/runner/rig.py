"""The real processes the drivers talk to, started once per test module: a redis-server, a
3-node Redis Cluster, five ratewall-server processes (/check and /authz on memory and on Redis,
and the one behind the remote-mode filter; the RLS drivers reuse the /check ones), and two Envoys
(the wasm filter in local mode and in remote mode, one listener per scenario). Everything binds
loopback on free ports and is stopped by pid at the end.

The process helpers are the e2e suites' own: ``Server`` from ``http-service/e2e/service_harness.py``
and ``Envoy``/``envoy_config``/``wasm_filter`` from ``proxy-wasm-filter/e2e/conftest.py``.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[3]
SERVER_BIN = ROOT / "target" / "release" / "ratewall-server"
FILTER_WASM = ROOT / "target" / "ratewall-wasm" / "ratewall_filter.wasm"


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def service_harness():
    return _module("rw_conformance_service_harness", ROOT / "http-service" / "e2e" / "service_harness.py")


def envoy_rig():
    return _module("rw_conformance_envoy_rig", ROOT / "proxy-wasm-filter" / "e2e" / "conftest.py")


def free_port(bus: bool = False) -> int:
    """A free loopback port (with `bus`, port + 10000 free too: the cluster bus)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if not bus:
            return p
        if p < 55000:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p + 10000))
                return p
            except OSError:
                continue
    raise RuntimeError("no free port")


def _wait_tcp(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"redis-server on {port} did not start")


class RedisServer:
    """A throwaway redis-server on a loopback port (no persistence)."""

    def __init__(self, extra=(), port=None):
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (tests/run-all.sh installs it)")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="rw-conf-redis-")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_tcp(self.port, self.proc)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """Three masters, slots spread by `redis-cli --cluster create`."""

    def __init__(self):
        self.nodes = [
            RedisServer(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                         "--cluster-node-timeout", "5000"], port=free_port(bus=True))
            for _ in range(3)
        ]
        try:
            out = subprocess.run(
                ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                 "--cluster-replicas", "0", "--cluster-yes"],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
            )
            if out.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout}{out.stderr}")
            deadline = time.monotonic() + 20
            while True:
                infos = [subprocess.run(["redis-cli", "-p", str(n.port), "cluster", "info"],
                                        capture_output=True, text=True, timeout=10).stdout for n in self.nodes]
                if all("cluster_state:ok" in i and "cluster_known_nodes:3" in i for i in infos):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster not ready: {infos}")
                time.sleep(0.1)
        except Exception:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


class EnvoyProcess:
    """One Envoy with one listener per scenario, each with that scenario's filter configuration."""

    def __init__(self, rig, listeners: dict[str, dict], tmp: Path, clusters=()):
        self.rig = rig
        names = list(listeners)
        base = rig.envoy_config([], 1, extra_clusters=list(clusters))
        template = base["static_resources"]["listeners"][0]
        hcm_filters = None
        out = []
        for i, name in enumerate(names):
            ls = copy.deepcopy(template)
            ls["name"] = f"l{i}"
            hcm = ls["filter_chains"][0]["filters"][0]["typed_config"]
            hcm_filters = hcm["http_filters"]
            hcm["http_filters"] = [rig.wasm_filter(listeners[name])] + hcm_filters
            out.append(ls)
        base["static_resources"]["listeners"] = out
        self.envoy = rig.Envoy(base, concurrency=1, tmp=tmp)
        ports = requests.get(self.envoy.admin + "/listeners?format=json", timeout=5).json()["listener_statuses"]
        by_name = {s["name"]: s["local_address"]["socket_address"]["port_value"] for s in ports}
        self.ports = {name: by_name[f"l{i}"] for i, name in enumerate(names)}

    def log_problems(self) -> str:
        log = self.envoy.log_text()
        return log[-3000:] if ("panicked" in log or "RuntimeError" in log) else ""

    def stop(self):
        self.envoy.stop()
