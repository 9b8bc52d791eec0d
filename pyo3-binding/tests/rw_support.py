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


def free_port_with_bus() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        p = free_port()
        if p + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        return p
    raise RuntimeError("no free port pair for a cluster node")


class RedisServer:
    """A throwaway redis-server on a loopback port (no persistence). ``tls``: a
    ``(cert, key, ca)`` triple of PEM paths makes it TLS-only (``--port 0 --tls-port``)."""

    def __init__(self, extra: tuple = (), port: int | None = None, tls: tuple | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="rw-redis-")
        ports = ["--port", str(self.port)]
        if tls is not None:
            cert, key, ca = tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert,
                     "--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(
            [exe, *ports, "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--enable-debug-command", "yes", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.02)
        else:
            self.stop()
            raise RuntimeError("redis-server did not start")
        if self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")

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


class RedisCluster:
    """A local 3-master Redis Cluster (no replicas), joined with ``redis-cli --cluster create``."""

    def __init__(self) -> None:
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(3):
                self.nodes.append(RedisServer(
                    ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "5000"), port=free_port_with_bus()))
            subprocess.run(
                ["redis-cli", "--cluster", "create",
                 *[f"127.0.0.1:{n.port}" for n in self.nodes],
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
            )
            deadline = time.monotonic() + 20
            while True:
                infos = [n.client().cluster("info") for n in self.nodes]
                if all(i.get("cluster_state") == "ok" and int(i.get("cluster_known_nodes", 0)) == 3
                       for i in infos):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("cluster did not become ok")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """Comma-separated seed node URLs."""
        return ",".join(f"redis://127.0.0.1:{n.port}" for n in self.nodes)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


class TestPki:
    """A CA, a server certificate for ``localhost`` only (not 127.0.0.1, to exercise hostname
    checks) signed by it, and a second, unrelated self-signed certificate for ``localhost``
    (an untrusted chain). Made with the ``openssl`` command line tool."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rw-pki-")
        d = self.dir
        p = lambda name: os.path.join(d, name)  # noqa: E731

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run("req", "-x509", *ec, "-keyout", p("ca.key"), "-out", p("ca.pem"), "-days", "2",
            "-subj", "/CN=ratewall test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        run("req", *ec, "-keyout", p("server.key"), "-out", p("server.csr"),
            "-subj", "/CN=localhost")
        with open(p("server.ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n")
        run("x509", "-req", "-in", p("server.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
            "-CAcreateserial", "-out", p("server.pem"), "-days", "2", "-extfile", p("server.ext"))
        run("req", "-x509", *ec, "-keyout", p("rogue.key"), "-out", p("rogue.pem"), "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost")
        self.ca, self.server_cert, self.server_key = p("ca.pem"), p("server.pem"), p("server.key")
        self.rogue_cert, self.rogue_key = p("rogue.pem"), p("rogue.key")

    def server(self, rogue: bool = False) -> RedisServer:
        """A TLS-only redis-server presenting the CA-signed certificate, or the rogue one."""
        if rogue:
            return RedisServer(tls=(self.rogue_cert, self.rogue_key, self.rogue_cert))
        return RedisServer(tls=(self.server_cert, self.server_key, self.ca))

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
