"""The gRPC listener of the real ratewall-server binary: where it listens (flag, environment, file,
default), how it is turned off, what a taken or bad address does, and graceful shutdown with the
HTTP listener."""

import signal
import socket
import subprocess

import pytest

from service_harness import BIN, Server, free_port, wait_until

pytestmark = pytest.mark.timeout(120)


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def grpc_line(out: str) -> str:
    return next(ln for ln in out.splitlines() if ln.startswith("# gRPC"))


def run(args, env=None):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=30, env=env or {})


def test_listens_where_told_and_stops_with_http(tmp_path):
    s = Server("by_user: \"5/m\"\n", tmp_path)
    assert accepts(s.grpc_port)
    wait_until(lambda: f"gRPC listening on {s.grpc}" in s.stdout(), what="gRPC line")
    assert s.stop(signal.SIGTERM) == 0
    assert not accepts(s.grpc_port) and not accepts(s.port)


def test_off_from_the_flag_and_from_the_file(tmp_path):
    s = Server("by_user: \"5/m\"\n", tmp_path, args=["--grpc-listen", "off"])
    assert "gRPC listening" not in s.stdout()
    assert grpc_line(s.stdout()) == "# gRPC (RLS v3, ext_authz v3): off"
    s.stop()
    # the file alone
    cfg = tmp_path / "off.yaml"
    cfg.write_text("by_user: \"5/m\"\ngrpc_listen: off\n")
    port = free_port()
    proc = subprocess.Popen([str(BIN), "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={})
    try:
        wait_until(lambda: accepts(port), what="HTTP listener")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert grpc_line(out).endswith(": off") and "gRPC listening" not in out, out
    # precedence: flag > environment > file > default
    cfg.write_text(f"by_user: \"5/m\"\ngrpc_listen: 127.0.0.1:{port}\n")
    p = run(["--config", str(cfg), "--check-config"])
    assert p.returncode == 0, p.stderr
    assert f"grpc_listen: 127.0.0.1:{port}" in p.stdout
    assert grpc_line(p.stdout).endswith(f": 127.0.0.1:{port}")
    p = run(["--config", str(cfg), "--check-config"], env={"RATEWALL_GRPC_LISTEN": "off"})
    assert grpc_line(p.stdout).endswith(": off")
    p = run(["--config", str(cfg), "--check-config", "--grpc-listen", "127.0.0.1:1"],
            env={"RATEWALL_GRPC_LISTEN": "off"})
    assert grpc_line(p.stdout).endswith(": 127.0.0.1:1")
    p = run(["--check-config"])
    assert grpc_line(p.stdout).endswith(": 127.0.0.1:8081")


def test_bad_and_taken_addresses(tmp_path):
    cfg = tmp_path / "bad.yaml"
    for value, expect in [("nowhere", "grpc_listen"), ("true", "grpc_listen")]:
        cfg.write_text(f"grpc_listen: {value}\n")
        p = run(["--config", str(cfg), "--check-config"])
        assert p.returncode == 2 and expect in p.stderr, (value, p.stderr)
    p = run(["--grpc-listen", "nowhere", "--check-config"])
    assert p.returncode == 2 and "--grpc-listen" in p.stderr, p.stderr
    # an explicitly configured address that is taken: exit 1 naming it
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        p = run(["--listen", f"127.0.0.1:{free_port()}", "--grpc-listen", f"127.0.0.1:{port}"])
        assert p.returncode == 1, p.stderr
        assert f"cannot listen (gRPC) on 127.0.0.1:{port}" in p.stderr


def test_a_taken_default_address_warns_and_serves_http(tmp_path):
    """8081 taken (by this test, or already by someone else): without an explicit address the
    server starts anyway, says so at WARN, and serves HTTP."""
    held = socket.socket()
    try:
        try:
            held.bind(("127.0.0.1", 8081))
            held.listen()
        except OSError:
            pass  # taken by another process: the same situation
        # (the harness always passes --grpc-listen: start this one by hand)
        port = free_port()
        proc = subprocess.Popen([str(BIN), "--listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={"RUST_LOG": "warn"})
        try:
            wait_until(lambda: accepts(port), what="HTTP listener")
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "gRPC listener not started" in err, err
    finally:
        held.close()
