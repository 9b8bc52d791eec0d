"""The plugin loaded the way the gateway loads it: cpex's PluginManager reads a YAML plugin
config naming ratewall.gateway.RateLimiterPlugin and invokes the hooks."""

from __future__ import annotations

import pytest
import yaml
from cpex.framework import (
    GlobalContext,
    PluginManager,
    PluginViolationError,
    PromptPrehookPayload,
    ToolPreInvokePayload,
)
from cpex.framework.extensions import Extensions, RequestExtension

from rw_support import RedisServer

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


def write_config(tmp_path, mode: str, config: dict) -> str:
    doc = {
        "plugins": [{
            "name": "RateLimiterPlugin",
            "kind": "ratewall.gateway.RateLimiterPlugin",
            "hooks": ["tool_pre_invoke", "prompt_pre_fetch"],
            "mode": mode,
            "priority": 20,
            "tags": ["limits", "throttle"],
            "config": config,
        }],
        "plugin_dirs": [],
    }
    path = tmp_path / "plugins.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


async def manager(path: str) -> PluginManager:
    PluginManager.reset()
    pm = PluginManager(path, timeout=30)
    await pm.initialize()
    assert pm.plugin_count == 1
    return pm


GC = GlobalContext(request_id="req-1", user="alice@example.com", tenant_id="team-a", server_id="srv-1")
EXT = Extensions(request=RequestExtension(request_id="req-1", trace_id="0af7651916cd43dd8448eb211c80319c"))


def configs(redis_server, engine):
    memory = {"by_user": "2/m", "by_tool": {"search": "100/m"}, "engine": engine,
              "by_tenant": "50/m",
              # this test's own cells in the process-wide store
              "redis_key_prefix": f"fwm-{engine}"}
    redis = dict(memory, backend="redis", redis_url=redis_server.url,
                 redis_key_prefix=f"fw-{engine}", redis_timeout_ms=2000)
    return {"memory": memory, "redis": redis}


@pytest.mark.parametrize("engine", ["rust", "python"])
@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_sequential_enforces(tmp_path, redis_server, engine, backend):
    cfg = configs(redis_server, engine)[backend]
    pm = await manager(write_config(tmp_path, "sequential", cfg))
    try:
        payload = ToolPreInvokePayload(name="search", args={"q": "x"})
        res, _ = await pm.invoke_hook("tool_pre_invoke", payload, GC, extensions=EXT)
        assert res.continue_processing and res.violation is None
        res, _ = await pm.invoke_hook("prompt_pre_fetch", PromptPrehookPayload(prompt_id="p"), GC)
        assert res.continue_processing
        with pytest.raises(PluginViolationError) as e:
            await pm.invoke_hook("tool_pre_invoke", payload, GC, extensions=EXT,
                                 violations_as_exceptions=True)
        v = e.value.violation
        assert (v.code, v.http_status_code) == ("RATE_LIMIT", 429)
        assert v.http_headers["X-RateLimit-Limit"] == "2" and int(v.http_headers["Retry-After"]) >= 1
        assert v.plugin_name == "RateLimiterPlugin"
        res, _ = await pm.invoke_hook("tool_pre_invoke", payload, GC)
        assert res.continue_processing is False and res.violation.code == "RATE_LIMIT"
    finally:
        await pm.shutdown()
        PluginManager.reset()


@pytest.mark.parametrize("engine", ["rust", "python"])
@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_permissive_lets_requests_through(tmp_path, redis_server, engine, backend):
    cfg = configs(redis_server, engine)[backend]
    cfg = dict(cfg, by_user="1/m", redis_key_prefix=f"fwp-{backend}-{engine}")
    pm = await manager(write_config(tmp_path, "permissive", cfg))
    try:
        payload = ToolPreInvokePayload(name="search", args={})
        gc = GlobalContext(request_id="r", user=f"perm-{backend}-{engine}", tenant_id="team-p")
        for _ in range(3):
            res, _ = await pm.invoke_hook("tool_pre_invoke", payload, gc,
                                          violations_as_exceptions=True)
            assert res.continue_processing
        plugin = pm.get_plugin("RateLimiterPlugin")
        assert plugin is not None
    finally:
        await pm.shutdown()
        PluginManager.reset()
