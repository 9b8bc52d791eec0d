"""The real ContextForge gateway (`mcp-contextforge-gateway` 1.1.0, PyPI) as a load-test target.

Facts this relies on (see the project's gateway notes): the gateway needs Python 3.12 (its own
venv, `loadtest/.venv-gw`, made by `ensure_venv`), reads `./.env` from its working directory (each
instance runs in its own empty folder and gets everything through its environment), has its own
rate-limit middleware on by default (turned off here so only the plugin limits), and serves every
call with no plugin when a plugin fails to load (the log is checked).

Set-up is done once on a template database (migrations, a team, users, the upstream MCP server);
every gateway instance then starts on its own copy of it, with the same secrets, so one set of
tokens works on all of them and they can run side by side.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .classify import Outcome, classify_gateway_rpc
from .procs import ROOT, Proc, RigError, free_port, http_status, wait_until

GW_VENV = Path(os.environ.get("RATEWALL_GW_VENV", ROOT / "loadtest" / ".venv-gw"))
GW_PY = GW_VENV / "bin" / "python"
GW_REQUIREMENTS = ROOT / "loadtest" / "requirements-gateway.txt"
WHEEL_DIR = ROOT / "target" / "wheels"
HERE = Path(__file__).resolve().parent

TEAM_NAME = "loadtest-team"
UPSTREAM_NAME = "echo-up"
TOOL = "echo-up-echo"  # the upstream's `echo`, as the gateway federates it (slug of the name + tool)


def _python312() -> str:
    # A pyenv shim named python3.12 is on PATH even when 3.12 is not the selected version (it
    # then exits 127), so every candidate must run; pyenv's own 3.12 interpreters come first.
    candidates = [str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"), reverse=True)]
    found = shutil.which("python3.12")
    if found:
        candidates.append(found)
    for c in candidates:
        try:
            if subprocess.run([c, "--version"], capture_output=True, timeout=30).returncode == 0:
                return c
        except (OSError, subprocess.SubprocessError):
            continue
    raise RigError("Python 3.12 not found (the gateway needs >= 3.12, < 3.14): install it or put it on PATH")


def ensure_venv(log=print) -> None:
    """Create `loadtest/.venv-gw` (Python 3.12, the gateway, the peer plugin) if absent, then
    install ratewall from a wheel built by `maturin build --release` (abi3: one wheel for every
    Python >= 3.11), rebuilt when the sources changed."""
    if not GW_PY.exists():
        log(f"creating {GW_VENV} (Python 3.12, mcp-contextforge-gateway) ...")
        subprocess.run([_python312(), "-m", "venv", str(GW_VENV)], check=True)
        subprocess.run([str(GW_PY), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([str(GW_PY), "-m", "pip", "install", "-q", "-r", str(GW_REQUIREMENTS)], check=True)
    maturin = shutil.which("maturin") or str(Path(sys.executable).parent / "maturin")
    out = subprocess.run(
        [maturin, "build", "--release", "-m", str(ROOT / "pyo3-binding" / "Cargo.toml"), "-o", str(WHEEL_DIR)],
        check=True, capture_output=True, text=True,
    )
    wheel = None
    for line in (out.stdout + out.stderr).splitlines():
        if "Built wheel" in line and line.rstrip().endswith(".whl"):
            wheel = line.rsplit(" ", 1)[1].strip()
    if wheel is None:
        raise RigError(f"maturin did not report a wheel:\n{out.stdout}\n{out.stderr}")
    wheel_path = Path(wheel) if Path(wheel).is_absolute() else ROOT / wheel
    subprocess.run([str(GW_PY), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel_path)],
                   check=True)


@dataclass
class GatewayConfig:
    """One gateway instance: a name, its plugins (None = no rate-limit plugin) and workers."""

    name: str
    plugin: dict | None = None  # one entry of the plugins file
    workers: int = 1


def ratewall_plugin(config: dict) -> dict:
    return {"name": "RateLimiterPlugin", "kind": "ratewall.gateway.RateLimiterPlugin",
            "hooks": ["tool_pre_invoke", "prompt_pre_fetch"], "mode": "enforce", "priority": 20,
            "config": config}


def peer_plugin(config: dict) -> dict:
    return {"name": "RateLimiterPlugin", "kind": "cpex_rate_limiter.rate_limiter.RateLimiterPlugin",
            "hooks": ["tool_pre_invoke", "prompt_pre_fetch"], "mode": "enforce", "priority": 20,
            "config": config}


@dataclass
class Site:
    """Secrets, the template database, users and tokens shared by every gateway of a run."""

    workdir: Path
    cache_redis_url: str  # the gateway's own REDIS_URL (private; never the default port)
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    enc_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    admin_email: str = "admin@loadtest.example.com"
    admin_password: str = field(default_factory=lambda: "Adm1n!" + secrets.token_urlsafe(24))
    user_password: str = field(default_factory=lambda: "Us3r!" + secrets.token_urlsafe(24))
    template_db: Path | None = None
    team_id: str | None = None
    tokens: dict = field(default_factory=dict)  # email -> token
    upstream: Proc | None = None
    upstream_port: int = 0

    def env(self, db: Path, port: int, plugins_file: Path | None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RATEWALL_", "PLUGINS_", "MCPGATEWAY_"))}
        env.update({
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "DATABASE_URL": f"sqlite:///{db.resolve()}",  # absolute: the gateway runs in its own folder
            "JWT_SECRET_KEY": self.jwt_secret,
            "AUTH_ENCRYPTION_SECRET": self.enc_secret,
            "PLATFORM_ADMIN_EMAIL": self.admin_email,
            "PLATFORM_ADMIN_PASSWORD": self.admin_password,
            "DEFAULT_USER_PASSWORD": self.user_password,
            "SSRF_ALLOW_LOCALHOST": "true",
            "SSRF_ALLOW_PRIVATE_NETWORKS": "true",
            "CACHE_TYPE": "memory",
            "REDIS_URL": self.cache_redis_url,
            "MCPGATEWAY_UI_ENABLED": "false",
            "MCPGATEWAY_ADMIN_API_ENABLED": "false",
            # the gateway's own limiter would throttle and rewrite X-RateLimit-* by itself
            "RATE_LIMITING_ENABLED": "false",
            "RATE_LIMITING_REDIS_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
            "PLUGINS_ENABLED": "true" if plugins_file else "false",
        })
        if plugins_file:
            env["PLUGINS_CONFIG_FILE"] = str(plugins_file)
        return env

    # -- template ------------------------------------------------------------------------------

    def start_upstream(self) -> None:
        self.upstream_port = free_port()
        self.upstream = Proc("mcp-upstream", [GW_PY, HERE / "mcp_upstream.py", self.upstream_port],
                             self.workdir / "mcp-upstream.log")
        try:
            wait_until(lambda: _tcp_open(self.upstream_port), 20, "the MCP upstream", self.upstream)
        except BaseException:
            self.upstream.stop()
            raise

    def prepare(self, users: list[str], log=print) -> None:
        """Run migrations on a fresh database, create the team and users, register the upstream,
        mint tokens; keep the database as the template every instance copies."""
        d = self.workdir / "gw-template"
        d.mkdir(parents=True, exist_ok=True)
        db = d / "mcp.db"
        for old in d.glob("mcp.db*"):
            old.unlink()
        log("gateway: preparing the template database (migrations, team, users, upstream) ...")
        gw = _start(self, "gw-template", d, db, None, 1)
        try:
            admin = self.mint([{"email": self.admin_email, "admin": True, "teams": None}])[0]
            h = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
            team = _json(gw.url + "/teams/", {"name": TEAM_NAME, "description": "load test",
                                             "visibility": "private"}, h)
            self.team_id = team["id"]
            for email in users:
                _json(gw.url + "/auth/email/admin/users",
                      {"email": email, "password": self.user_password, "full_name": "Load Test"}, h)
                _json(gw.url + f"/teams/{self.team_id}/members", {"email": email, "role": "member"}, h)
            _json(gw.url + "/gateways", {"name": UPSTREAM_NAME, "url": f"http://127.0.0.1:{self.upstream_port}/mcp",
                                         "transport": "STREAMABLEHTTP", "visibility": "team",
                                         "team_id": self.team_id}, h)
            toks = self.mint([{"email": e, "teams": [self.team_id]} for e in users])
            self.tokens = dict(zip(users, toks))
            # one call through the template proves the path works before anything is measured
            r = rpc_call(gw.url, self.tokens[users[-1]], TOOL, 1)
            if classify_gateway_rpc(r[0], r[2])[0] is not Outcome.ALLOWED:
                raise RigError(f"a tool call through the template gateway failed: {r[0]} {r[2][:500]!r}")
        finally:
            gw.stop()
        # fold the write-ahead log into the file, so a plain copy of mcp.db has everything
        if not db.exists() or db.stat().st_size == 0:
            raise RigError(f"the template gateway left no database at {db}")
        for _ in range(50):
            with sqlite3.connect(db) as c:
                busy = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                break
            time.sleep(0.2)
        else:
            raise RigError(f"could not checkpoint {db}: still in use")
        self.template_db = db

    def mint(self, specs: list[dict]) -> list[str]:
        env = self.env(self.workdir / "unused.db", 1, None)
        p = subprocess.run([str(GW_PY), str(HERE / "gw_tokens.py")], input=json.dumps(specs), env=env,
                           capture_output=True, text=True, timeout=120, cwd=self.workdir)
        if p.returncode != 0:
            raise RigError(f"minting tokens failed: {p.stderr[-2000:]}")
        return json.loads(p.stdout)

    def stop(self) -> None:
        if self.upstream:
            self.upstream.stop()


class Gateway:
    """One running gateway instance (its own folder and database copy)."""

    def __init__(self, site: Site, cfg: GatewayConfig):
        self.cfg = cfg
        d = site.workdir / f"gw-{cfg.name}"
        d.mkdir(parents=True, exist_ok=True)
        db = d / "mcp.db"
        # a write-ahead log left by an earlier run in this folder would be replayed into the copy
        for old in d.glob("mcp.db*"):
            old.unlink()
        shutil.copy(site.template_db, db)
        plugins = None
        if cfg.plugin is not None:
            plugins = d / "plugins.yaml"
            plugins.write_text(yaml.safe_dump({"plugins": [cfg.plugin], "plugin_dirs": []}, sort_keys=False))
        self.proc, self.url = _launch(site, cfg.name, d, db, plugins, cfg.workers)

    def wait(self) -> None:
        wait_until(lambda: http_status(self.url + "/health") == 200, 600, f"gateway {self.cfg.name}", self.proc)
        log = self.proc.tail(1_000_000)
        if "Failed to load plugin" in log or "failed to load plugin" in log.lower():
            raise RigError(f"gateway {self.cfg.name}: the plugin did not load:\n{log[-3000:]}")

    def stop(self) -> None:
        self.proc.stop(timeout=15)


def _launch(site: Site, name: str, d: Path, db: Path, plugins: Path | None, workers: int):
    port = free_port()
    # keep-alive longer than any pause between two calls of a user (uvicorn's default 5 s closes
    # pooled connections under the client's feet: a request on a closing connection fails)
    args = [GW_VENV / "bin" / "mcpgateway", "--host", "127.0.0.1", "--port", port, "--timeout-keep-alive", 600]
    if workers > 1:
        # uvicorn kills a worker that misses a 5 s health check; a worker importing the gateway
        # on a loaded 2-core machine can take longer than that, and would be restarted forever
        args += ["--workers", workers, "--timeout-worker-healthcheck", 120]
    proc = Proc(f"gateway-{name}", args, d / "gateway.log", env=site.env(db, port, plugins), cwd=d)
    return proc, f"http://127.0.0.1:{port}"


class _Started:
    def __init__(self, proc, url):
        self.proc, self.url = proc, url

    def stop(self):
        self.proc.stop(timeout=15)


def _start(site: Site, name: str, d: Path, db: Path, plugins: Path | None, workers: int) -> _Started:
    proc, url = _launch(site, name, d, db, plugins, workers)
    try:
        wait_until(lambda: http_status(url + "/health") == 200, 300, f"gateway {name}", proc)
    except BaseException:
        proc.stop(timeout=15)
        raise
    return _Started(proc, url)


def _tcp_open(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def _json(url: str, body: dict, headers: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise RigError(f"POST {url} -> {e.code}: {e.read()[:2000]!r}") from None


def rpc_body(tool: str, n: int) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                       "params": {"name": tool, "arguments": {"text": f"call {n}"}}}).encode()


def rpc_call(url: str, token: str, tool: str, n: int, timeout: float = 30) -> tuple[int, dict, bytes]:
    """One JSON-RPC tools/call on `/rpc` (stdlib; the load itself goes through locust)."""
    req = urllib.request.Request(url + "/rpc", data=rpc_body(tool, n), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_all(gws: list[Gateway]) -> None:
    t0 = time.monotonic()
    for g in gws:
        g.wait()
    return time.monotonic() - t0
