"""Shared helpers for the plugin tests (a real redis-server, plugin construction)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from cpex.framework import GlobalContext, PluginConfig, PluginContext


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway redis-server on a loopback port (no persistence)."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rw-redis-")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--enable-debug-command", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.02)
        else:
            self.stop()
            raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def plugin_config(config: dict, name: str = "RateLimiterPlugin") -> PluginConfig:
    return PluginConfig(
        name=name,
        kind="ratewall.gateway.RateLimiterPlugin",
        hooks=["tool_pre_invoke", "prompt_pre_fetch"],
        config=config,
    )


def make_plugin(config: dict, **kw):
    from ratewall.gateway import RateLimiterPlugin

    return RateLimiterPlugin(plugin_config(config), **kw)


def ctx(user="alice@example.com", tenant=None, server=None) -> PluginContext:
    return PluginContext(
        global_context=GlobalContext(request_id="r1", user=user, tenant_id=tenant, server_id=server)
    )


def engines():
    return ["rust", "python"]


os.environ.pop("RATEWALL_ENGINE", None)
