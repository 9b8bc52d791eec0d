"""Harness for the ratewall-server end-to-end tests: the real ratewall-server binary, a real redis-server, and
(in test_proxies.py) real nginx and Envoy, all on free loopback ports, started and stopped here."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("RATEWALL_SERVER_BIN", ROOT / "target" / "release" / "ratewall-server"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream:
    """The application behind a proxy: answers `status` to every request and records
    `(method, path, record(headers))` for each one in `seen`."""

    def __init__(self, status=200, record=lambda headers: headers.get("x-user-id")):
        self.seen = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self):
                upstream.seen.append((self.command, self.path, record(self.headers)))
                body = b"hello from upstream\n"
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def wait_until(pred, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception as e:  # noqa: BLE001 - keep polling until the deadline
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


class Server:
    """One ratewall-server process on a free loopback port."""

    def __init__(self, config: str | None, tmp: Path, env: dict | None = None, args=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # the gRPC listener on a free port too (never the default 8081, which may be taken)
        self.grpc_port = free_port()
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.config_path = None
        if config is not None:
            self.config_path = tmp / f"ratewall-{self.port}.yaml"
            self.config_path.write_text(config)
        assert BIN.exists(), f"{BIN} not found: run `cargo build --release -p ratewall-server`"
        cmd = [str(BIN), "--listen", f"127.0.0.1:{self.port}"]
        if not any(str(a).startswith("--grpc-listen") for a in args):
            cmd += ["--grpc-listen", self.grpc]
        if self.config_path:
            cmd += ["--config", str(self.config_path)]
        cmd += list(args)
        self.out = open(tmp / f"ratewall-{self.port}.out", "w+")
        self.err = open(tmp / f"ratewall-{self.port}.err", "w+")
        e = {k: v for k, v in os.environ.items() if not k.startswith("RATEWALL_")}
        e.setdefault("RUST_LOG", "info")
        e.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=self.err, env=e)
        try:
            wait_until(self._healthy, timeout=15, what=f"ratewall-server on {self.port}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"server did not start: {self.stderr()}")

    def _healthy(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"exited with {self.proc.returncode}: {self.stderr()}")
        return requests.get(self.url + "/healthz", timeout=1).status_code == 200

    def check(self, body=None, **kw):
        return requests.post(self.url + "/check", json=body if body is not None else {}, timeout=5, **kw)

    def metrics(self) -> str:
        return requests.get(self.url + "/metrics", timeout=5).text

    def metric(self, line_prefix: str) -> float:
        for line in self.metrics().splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"metric {line_prefix} not found")

    def stdout(self) -> str:
        self.out.flush()
        self.out.seek(0)
        return self.out.read()

    def stderr(self) -> str:
        self.err.flush()
        self.err.seek(0)
        return self.err.read()

    def send(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Redis:
    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rw-redis-")
        self.url = f"redis://127.0.0.1:{self.port}"
        self.start()

    def start(self):
        exe = shutil.which("redis-server")
        assert exe, "redis-server not installed (tests/run-all.sh installs it)"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis as redis_py

        self.client = redis_py.Redis(host="127.0.0.1", port=self.port)
        wait_until(lambda: self.client.ping(), what="redis-server")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
