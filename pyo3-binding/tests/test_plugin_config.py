"""Configuration: the peer's keys keep their meaning, errors name key and value."""

from __future__ import annotations

import json
import logging

import pytest

from ratewall._ratewall import compile_config
from ratewall.gateway import load_config
from rw_support import make_plugin

# cpex-rate-limiter 0.1.12's keys, as the gateway's plugins/config.yaml sets them.
PEER_CONFIG = {
    "by_user": "30/m",
    "by_user_per_server": "10/m",
    "by_tenant": "3000/m",
    "by_tool": {"search": "10/m", "Summarize": "5/s"},
    "algorithm": "token_bucket",
    "backend": "redis",
    "redis_url": "redis://redis:6379/0",
    "redis_key_prefix": "rl",
    "fail_mode": "closed",
}


def test_peer_config_is_accepted_with_same_meaning():
    c = json.loads(compile_config(json.dumps(PEER_CONFIG)))
    assert c["algorithm"] == "token_bucket" and c["backend"] == "redis"
    assert c["fail_mode"] == "closed" and c["prefix"] == "rl"
    assert c["by_user"] == [[30, 60, "by_user"]]
    assert c["by_user_per_server"] == [[10, 60, "by_user_per_server"]]
    assert c["by_tenant"] == [[3000, 60, "by_tenant"]]
    assert c["by_tool"] == {"search": [[10, 60, "tool:search"]], "summarize": [[5, 1, "tool:summarize"]]}
    assert c["redis"]["url"] == "redis://redis:6379/0"


def test_defaults_match_the_peer():
    c = json.loads(compile_config('{"allow_empty": true}'))
    assert (c["algorithm"], c["backend"], c["fail_mode"], c["prefix"]) == (
        "fixed_window", "memory", "open", "rl")
    assert c["by_user"] == [] and c["by_tool"] == {}


@pytest.mark.parametrize(
    "config, needles",
    [
        ({"by_user": "1/fortnight"}, ["by_user", "1/fortnight"]),
        ({}, ["the configuration is empty", "allow_empty"]),
        ({"fail_mode": "open"}, ["no limit is configured", "allow_empty"]),
        ({"by_user": 5}, ["by_user", "5"]),
        ({"by_tool": {"echo": "0/s"}}, ['by_tool["echo"]', "0"]),
        ({"algorithm": "leaky"}, ["algorithm", "leaky"]),
        ({"backend": "reddis"}, ["backend", "reddis"]),
        ({"fail_mode": "clsoed"}, ["fail_mode", "clsoed"]),
        ({"backend": "redis"}, ["redis_url"]),
        # an unknown key alone: ignored, so no limit is left, and the error says why
        ({"by_usr": "1/s"}, ["no limit is configured", '"by_usr" (did you mean "by_user"?)']),
        ({"by_usr": "1/s", "strict": True}, ["by_usr", "by_user"]),
        ({"by_user": "1/s", "strict": "yes"}, ["strict", "yes"]),
        ({"by_tool": {"Echo": "1/s", "echo ": "2/s"}}, ["by_tool", "Echo", "echo "]),
        ({"engine": "go", "by_user": "1/s"}, ["engine", "go"]),
        ({"limits": [{"name": "k", "descriptors": ["a"], "rate": "1/s"}]}, ["limits"]),
    ],
)
def test_errors_raise_at_construction_naming_key_and_value(config, needles):
    with pytest.raises(ValueError) as e:
        make_plugin(config)
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def test_engine_env_override(monkeypatch):
    monkeypatch.setenv("RATEWALL_ENGINE", "python")
    assert make_plugin({"by_user": "1/s", "engine": "rust"}).engine_name == "python"
    monkeypatch.setenv("RATEWALL_ENGINE", " Rust ")
    assert make_plugin({"by_user": "1/s", "engine": "python"}).engine_name == "rust"
    monkeypatch.setenv("RATEWALL_ENGINE", "java")
    with pytest.raises(ValueError, match="RATEWALL_ENGINE='java'"):
        make_plugin({"by_user": "1/s"})
    monkeypatch.delenv("RATEWALL_ENGINE")
    assert make_plugin({"by_user": "1/s"}).engine_name == "rust"
    assert make_plugin({"by_user": "1/s", "engine": "python"}).engine_name == "python"


def test_redis_fallback_is_accepted_and_warned(caplog):
    with caplog.at_level(logging.WARNING):
        _, c, _ = load_config({"by_user": "1/s", "redis_fallback": True})
    assert "redis_fallback" in caplog.text
    assert c["extra"] == {"redis_fallback": True}


def test_unknown_keys_are_ignored_with_a_warn_unless_strict(caplog):
    """As the peer: an unknown key is a WARN naming it (with the likely key), the rest of the
    config is in force; strict: true refuses it. Said once per process, not per instance."""
    cfg = {"by_user": "3/m", "by_tenat": "9/m", "zz_unknown_option": 1}
    with caplog.at_level(logging.WARNING, logger="ratewall.gateway"):
        _, c, _ = load_config(cfg)
        load_config(cfg)
    assert c["by_user"] == [[3, 60, "by_user"]] and c["by_tenant"] == []
    assert c["ignored"] == ["by_tenat", "zz_unknown_option"]
    lines = [r for r in caplog.records if "unknown config key" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "WARNING"
    assert '"by_tenat" (did you mean "by_tenant"?), "zz_unknown_option"' in lines[0].getMessage()
    assert "strict: true" in lines[0].getMessage()
    with pytest.raises(ValueError, match='by_tenat.*did you mean "by_tenant"'):
        load_config(dict(cfg, strict=True))
    # strict only concerns unknown keys: known keys' bad values are errors either way
    with pytest.raises(ValueError, match="by_user"):
        load_config({"by_user": "3/fortnight", "strict": False})


def test_empty_and_none_config():
    """A plugin config that enables no limit is refused (it must never mean "no limits"
    silently), unless it says so with allow_empty: true."""
    for cfg in (None, {}, {"fail_mode": "closed"}):
        with pytest.raises(ValueError, match="allow_empty"):
            load_config(cfg)
    p = make_plugin({"allow_empty": True})
    assert p.backend == "memory"


def test_manifest_and_entry_point():
    from importlib import metadata, resources

    import yaml

    manifest = yaml.safe_load(resources.files("ratewall").joinpath("plugin-manifest.yaml").read_text())
    assert manifest["kind"] == "ratewall.gateway.RateLimiterPlugin"
    assert set(manifest["available_hooks"]) == {"tool_pre_invoke", "prompt_pre_fetch"}
    assert set(manifest["default_configs"]) >= {"by_user", "by_tenant", "by_tool"}
    eps = [e for e in metadata.entry_points(group="cpex.plugins") if e.value.startswith("ratewall")]
    assert [e.value for e in eps] == ["ratewall.gateway:RateLimiterPlugin"]
    from ratewall.gateway import RateLimiterPlugin

    assert eps[0].load() is RateLimiterPlugin
