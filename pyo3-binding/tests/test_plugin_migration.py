"""Migrating from cpex-rate-limiter 0.1.12 must never end in silently unlimited traffic.

cpex skips a plugin that fails to construct and runs the gateway without it, unless
``PLUGINS_FAIL_ON_PLUGIN_ERROR=true`` (its ``fail_on_plugin_error`` setting, read from the
environment at start-up). So: the peer only warned about unknown keys, and ratewall does the same
by default (a WARN naming each key, every other setting in force); ``strict: true`` makes them
errors; invalid values of known keys are always errors. With ``PLUGINS_FAIL_ON_PLUGIN_ERROR=true``
every config either loads an enforcing plugin or stops the framework's start-up.

Each case runs in its own process: the framework reads its settings once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = r"""
import asyncio, json, logging, sys
from cpex.framework import GlobalContext, PluginManager, ToolPreInvokePayload

logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")

async def main():
    pm = PluginManager(sys.argv[1], timeout=30)
    try:
        await pm.initialize()
    except Exception as e:
        print(json.dumps({"started": False, "error": f"{type(e).__name__}: {e}"}))
        return
    codes = []
    gc = GlobalContext(request_id="r", user="alice@example.com", tenant_id="team-a")
    for _ in range(3):
        res, _ = await pm.invoke_hook("tool_pre_invoke", ToolPreInvokePayload(name="search", args={}), gc)
        codes.append("ok" if res.continue_processing else res.violation.code)
    print(json.dumps({"started": True, "plugins": pm.plugin_count, "codes": codes}))
    await pm.shutdown()

asyncio.run(main())
"""

# The peer's gateway entry (cpex-rate-limiter 0.1.12 keys), by_user 2/m so the third call is denied.
PEER = {"by_user": "2/m", "by_tenant": "3000/m", "by_tool": {}, "algorithm": "fixed_window",
        "fail_mode": "open", "redis_key_prefix": "rl"}

CASES = {
    "peer": PEER,
    # a key the peer did not know either (it warned): ignored with a WARN, the rest enforced
    "unknown_key": dict(PEER, redis_pool_size=10),
    "typo_key": dict(PEER, by_tenat="10/m"),
    "strict_unknown_key": dict(PEER, redis_pool_size=10, strict=True),
    "bad_value": dict(PEER, by_user=5),  # the peer silently ran without the user limit
    "bad_rate": dict(PEER, by_user="2/fortnight"),
}


def run(tmp_path, name: str, fail_on_error: bool | None) -> tuple[dict, str]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"plugins": [{
        "name": "RateLimiterPlugin", "kind": "ratewall.gateway.RateLimiterPlugin",
        "hooks": ["tool_pre_invoke", "prompt_pre_fetch"], "mode": "sequential", "priority": 20,
        "config": CASES[name]}], "plugin_dirs": []}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGINS_")}
    if fail_on_error is not None:
        env["PLUGINS_FAIL_ON_PLUGIN_ERROR"] = "true" if fail_on_error else "false"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.mark.parametrize("name", ["peer", "unknown_key", "typo_key"])
def test_peer_configs_load_and_enforce_by_default(tmp_path, name):
    result, log = run(tmp_path, name, None)
    assert result == {"started": True, "plugins": 1, "codes": ["ok", "ok", "RATE_LIMIT"]}
    if name == "unknown_key":
        assert 'unknown config key(s) ignored: "redis_pool_size"' in log
    if name == "typo_key":
        assert '"by_tenat" (did you mean "by_tenant"?)' in log


@pytest.mark.parametrize("name", ["strict_unknown_key", "bad_value", "bad_rate"])
def test_without_fail_on_plugin_error_a_bad_config_runs_the_gateway_without_the_plugin(
        tmp_path, name):
    """The framework's default (why docs/MIGRATION.md advises PLUGINS_FAIL_ON_PLUGIN_ERROR)."""
    result, log = run(tmp_path, name, None)
    assert result == {"started": True, "plugins": 0, "codes": ["ok", "ok", "ok"]}
    assert "Failed to load plugin RateLimiterPlugin" in log


@pytest.mark.parametrize("name", sorted(CASES))
def test_with_fail_on_plugin_error_every_config_enforces_or_refuses_to_start(tmp_path, name):
    result, log = run(tmp_path, name, True)
    if result["started"]:
        assert result == {"started": True, "plugins": 1, "codes": ["ok", "ok", "RATE_LIMIT"]}
        assert name in ("peer", "unknown_key", "typo_key")
    else:
        assert name in ("strict_unknown_key", "bad_value", "bad_rate")
        assert result["error"].startswith("RuntimeError: Plugin initialization failed: RateLimiterPlugin")
        needle = {"strict_unknown_key": "redis_pool_size", "bad_value": "by_user",
                  "bad_rate": "2/fortnight"}[name]
        assert needle in result["error"], result["error"]
