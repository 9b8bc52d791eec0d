"""Every `sh` block of docs/ARCHITECTURE.md, docs/MIGRATION.md and docs/OPERATIONS.md runs as
shown: from the repository root, with target/release and .venv/bin on PATH, a real redis-server
at $REDIS_URL and a free loopback port in $PORT (both started or chosen here)."""

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["docs/ARCHITECTURE.md", "docs/MIGRATION.md", "docs/OPERATIONS.md"]
BIN = ROOT / "target" / "release" / "ratewall-server"

# What some blocks must print (a substring of the block -> substrings of its output).
EXPECT = {
    "load_config(peer)": ["engine: rust", 'unknown key "by_usr"', "duplicate key after normalisation"],
    "--pattern 'rwdoc:*'": [":fw:60:t6:team-1:u17:alice@example.com", ":fw:60:t6:team-1:T"],
    "ratewall_(decisions_total": ["200 200 200 200 200 429", 'outcome="limited"} 1'],
    "redis_key_size.py": ["fixed_window", "gcra"],
    "--rw-fault": ["Verdict: PASS"],
    "--check-config": ["by_user"],
    "--mode validate": ["OK"],
}


def blocks():
    out = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for i, m in enumerate(re.finditer(r"^```sh\n(.*?)^```", text, re.S | re.M)):
            out.append(pytest.param(m.group(1), id=f"{Path(doc).stem}-{i}"))
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    exe = shutil.which("redis-server")
    assert exe, "redis-server is required (tests/run-all.sh installs it)"
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}"
    p.terminate()
    p.wait(10)


def test_the_docs_have_commands():
    assert len(blocks()) >= 6


@pytest.mark.timeout(600)
@pytest.mark.parametrize("script", blocks())
def test_doc_block_runs(script, redis_url):
    assert BIN.exists(), "build first: cargo build --release -p ratewall-server"
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / 'target' / 'release'}:{ROOT / '.venv' / 'bin'}:{env['PATH']}"
    env["REDIS_URL"] = redis_url
    env["PORT"] = str(free_port())
    env.pop("RATEWALL_CONFIG", None)
    p = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=580)
    out = p.stdout + p.stderr
    assert p.returncode == 0, f"exit {p.returncode}:\n{script}\n---\n{out[-4000:]}"
    for marker, wanted in EXPECT.items():
        if marker in script:
            for w in wanted:
                assert w in out, f"{w!r} not in the output of:\n{script}\n---\n{out[-4000:]}"
