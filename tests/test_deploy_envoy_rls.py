"""deploy/envoy-rls/: the files validate, and the README's commands run as shown.

* `envoy --mode validate` accepts both Envoy configs; `ratewall-server --check-config` accepts
  ratewall.yaml with its descriptor_config directory;
* the README's `sh` block runs under bash, from a copy of the repository layout, with two changes
  only: the ports (8080, 8081, 9000, 10000, 9901) are free ones, and `cargo build` is skipped (the
  test uses the binary already built) — `sleep 2` becomes a wait for Envoy's readiness (a slow
  machine). Its output is what the README says: five 200s, one 429 with Envoy's rate-limit
  headers, and the RLS call count in ratewall's metrics.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "http-service" / "e2e"))
from envoy_rig import away_from_window_edge, envoy_binary  # noqa: E402
from service_harness import BIN, free_port  # noqa: E402

pytestmark = pytest.mark.timeout(300)

DIR = ROOT / "deploy" / "envoy-rls"
PORTS = ("8080", "8081", "9000", "10000", "9901")


def readme_block() -> str:
    text = (DIR / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    assert blocks, "README.md has no sh block"
    return blocks[0]


def test_envoy_configs_validate():
    for name in ("envoy.yaml", "envoy-ext-authz-grpc.yaml"):
        p = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(DIR / name)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (name, p.stdout[-2000:], p.stderr[-2000:])


def test_ratewall_config_passes_check_config(tmp_path):
    assert BIN.exists(), f"{BIN}: cargo build --release -p ratewall-server"
    p = subprocess.run([str(BIN), "--config", str(DIR / "ratewall.yaml"), "--check-config"],
                       capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]})
    assert p.returncode == 0, p.stderr
    assert "descriptor_config: ratelimit" in p.stdout
    assert "domain: edge" in p.stdout, p.stdout
    # a broken copy of the rules is refused, naming the file
    bad = tmp_path / "envoy-rls"
    shutil.copytree(DIR, bad)
    (bad / "ratelimit" / "config.yaml").write_text("domain: edge\ndescriptors:\n  - value: v\n")
    p = subprocess.run([str(BIN), "--config", str(bad / "ratewall.yaml"), "--check-config"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stdout
    assert "config.yaml" in p.stderr and "key" in p.stderr, p.stderr


def test_readme_commands_run_as_shown(tmp_path):
    assert BIN.exists(), f"{BIN}: cargo build --release -p ratewall-server"
    ports = {p: str(free_port()) for p in PORTS}

    def sub(text: str) -> str:
        # whole numbers only (8080 must not touch 18080)
        return re.sub(r"\b(" + "|".join(PORTS) + r")\b", lambda m: ports[m.group(1)], text)

    # the repository layout the commands expect: deploy/envoy-rls (ports substituted), target/
    work = tmp_path / "repo"
    shutil.copytree(DIR, work / "deploy" / "envoy-rls")
    for f in (work / "deploy" / "envoy-rls").rglob("*.yaml"):
        f.write_text(sub(f.read_text()))
    (work / "target" / "release").mkdir(parents=True)
    os.symlink(BIN, work / "target" / "release" / "ratewall-server")

    lines = []
    for line in sub(readme_block()).splitlines():
        if line.startswith("cargo build"):
            continue
        if line.strip() == "sleep 2":
            line = (f"for i in $(seq 300); do curl -sf http://127.0.0.1:{ports['9901']}/ready >/dev/null && "
                    f"curl -sf http://127.0.0.1:{ports['8080']}/healthz >/dev/null && break; sleep 0.1; done")
        lines.append(line)
    script = "set -u\n" + "\n".join(lines) + "\nwait\n"
    env = dict(os.environ, PATH=f"{Path(envoy_binary()).parent}:{os.environ['PATH']}")
    env = {k: v for k, v in env.items() if not k.startswith("RATEWALL_")}
    away_from_window_edge(60, 15)
    proc = subprocess.Popen(["bash", "-c", script], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:  # anything the script left behind (it kills its jobs itself)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    codes = [ln for ln in out.splitlines() if re.fullmatch(r"\d{3}", ln)]
    assert codes == ["200"] * 5 + ["429"], (out, err[-3000:])
    head = out.lower()
    assert "http/1.1 429 too many requests" in head, out
    assert "x-envoy-ratelimited: true" in head
    assert 'x-ratelimit-limit: 5, 5;w=60;name="api_per_user", 1000;w=60, 100;w=1' in head, out
    assert "x-ratelimit-remaining: 0" in head
    reset = re.search(r"x-ratelimit-reset: (\d+)", head)
    retry = re.search(r"retry-after: (\d+)", head)
    assert reset and retry and reset.group(1) == retry.group(1), out
    assert 1 <= int(retry.group(1)) <= 60
    # one RLS call per request through Envoy (7 requests)
    assert 'ratewall_check_duration_seconds_count{endpoint="rls"} 7' in out, out
