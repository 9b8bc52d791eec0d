"""Classification of answers: denials are recognised by their structure, never by a substring.
The bodies are the shapes the real gateway, ratewall-server and the Envoy filter send (seen in
the load tests' runs)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rwload.classify import (  # noqa: E402
    Outcome,
    classify_envoy,
    classify_exception,
    classify_gateway_mcp,
    classify_gateway_rpc,
    classify_service,
)

GW_DENIED = json.dumps({"error": {"code": -32602, "message": "Plugin Violation: Rate limit exceeded", "data": {
    "description": "Rate limit exceeded", "details": {"limited": True, "reason": "limited"},
    "plugin_error_code": "RATE_LIMIT", "plugin_name": "RateLimiterPlugin"}}})
GW_CLOSED = json.dumps({"error": {"code": -32602, "message": "Plugin Violation: Rate limiter backend unavailable",
                                  "data": {"plugin_error_code": "BACKEND_UNAVAILABLE", "plugin_name": "RateLimiterPlugin"}}})
GW_OK = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "x"}], "isError": False}})


def test_gateway_rpc():
    assert classify_gateway_rpc(200, GW_OK)[0] is Outcome.ALLOWED
    assert classify_gateway_rpc(429, GW_DENIED)[0] is Outcome.RATE_LIMITED
    assert classify_gateway_rpc(503, GW_CLOSED)[0] is Outcome.BACKEND_UNAVAILABLE
    # the gateway's own limiter (or anything else) answering 429: not the plugin's denial
    assert classify_gateway_rpc(429, '{"detail": "Rate limit exceeded. RATE_LIMIT"}')[0] is Outcome.CLIENT_ERROR
    assert classify_gateway_rpc(503, '{"detail": "BACKEND_UNAVAILABLE"}')[0] is Outcome.SERVER_ERROR
    # a tool error or a JSON-RPC error in a 200 is not an admission
    tool_err = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": [], "isError": True}})
    assert classify_gateway_rpc(200, tool_err)[0] is Outcome.SERVER_ERROR
    assert classify_gateway_rpc(200, '{"jsonrpc":"2.0","id":1,"error":{"code":-32601}}')[0] is Outcome.CLIENT_ERROR
    assert classify_gateway_rpc(403, '{"detail":"Token is invalid"}')[0] is Outcome.CLIENT_ERROR
    assert classify_gateway_rpc(500, "oops")[0] is Outcome.SERVER_ERROR
    assert classify_gateway_rpc(200, "not json")[0] is Outcome.SERVER_ERROR


def test_gateway_mcp_tool_result():
    denied = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"isError": True, "content": [
        {"type": "text", "text": json.dumps({"code": "RATE_LIMIT", "plugin_name": "RateLimiterPlugin"})}]}})
    assert classify_gateway_mcp(200, denied)[0] is Outcome.RATE_LIMITED
    # a tool error that merely mentions RATE_LIMIT in its text is not a denial
    mention = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"isError": True, "content": [
        {"type": "text", "text": "upstream said RATE_LIMIT somewhere"}]}})
    assert classify_gateway_mcp(200, mention)[0] is Outcome.SERVER_ERROR
    assert classify_gateway_mcp(200, GW_OK)[0] is Outcome.ALLOWED


def test_service():
    ok = {"allowed": True, "reason": None, "limit": 10, "remaining": 9, "headers": [["X-RateLimit-Limit", "10"]]}
    assert classify_service(200, json.dumps(ok)) == (Outcome.ALLOWED, "")
    fail_open = {"allowed": True, "reason": None, "limit": None, "remaining": None, "headers": []}
    assert classify_service(200, json.dumps(fail_open)) == (Outcome.ALLOWED, "fail_open")
    denied = {"allowed": False, "reason": "limited", "limit": 10, "remaining": 0, "retry_after": 1}
    assert classify_service(429, json.dumps(denied))[0] is Outcome.RATE_LIMITED
    down = {"allowed": False, "reason": "backend_unavailable"}
    assert classify_service(503, json.dumps(down))[0] is Outcome.BACKEND_UNAVAILABLE
    assert classify_service(429, "Too Many Requests")[0] is Outcome.CLIENT_ERROR
    assert classify_service(503, "Service Unavailable")[0] is Outcome.SERVER_ERROR
    assert classify_service(400, '{"error": "bad", "field": "user"}')[0] is Outcome.CLIENT_ERROR


def test_envoy():
    plain = {"error": "rate_limited", "message": "Rate limit exceeded", "reason": "limited", "retry_after": 1}
    assert classify_envoy(429, json.dumps(plain))[0] is Outcome.RATE_LIMITED
    mcp = {"jsonrpc": "2.0", "id": 3, "error": {"code": -32000, "message": "m", "data": {"reason": "limited"}}}
    assert classify_envoy(429, json.dumps(mcp))[0] is Outcome.RATE_LIMITED
    down = {"error": "rate_limiter_unavailable", "reason": "backend_unavailable"}
    assert classify_envoy(503, json.dumps(down))[0] is Outcome.BACKEND_UNAVAILABLE
    # Envoy's own 503 (no healthy upstream) is a server error, its local_ratelimit 429 a client error
    assert classify_envoy(503, "no healthy upstream")[0] is Outcome.SERVER_ERROR
    assert classify_envoy(429, "local_rate_limited")[0] is Outcome.CLIENT_ERROR
    assert classify_envoy(200, "ok\n")[0] is Outcome.ALLOWED


def test_no_answer():
    assert classify_exception(TimeoutError("timed out")) is Outcome.TIMEOUT
    assert classify_exception(ConnectionRefusedError(111, "Connection refused")) is Outcome.CONNECTION_ERROR
    assert all(o.is_infrastructure_error for o in (Outcome.CLIENT_ERROR, Outcome.SERVER_ERROR, Outcome.TIMEOUT,
                                                    Outcome.CONNECTION_ERROR))
    assert not any(o.is_infrastructure_error for o in (Outcome.ALLOWED, Outcome.RATE_LIMITED,
                                                        Outcome.BACKEND_UNAVAILABLE))


def test_envoy_native_ratelimit():
    from rwload.classify import classify_envoy_rls

    assert classify_envoy_rls(429, b"", {"x-envoy-ratelimited": "true"})[0] is Outcome.RATE_LIMITED
    assert classify_envoy_rls(429, b"", {})[0] is Outcome.CLIENT_ERROR
    assert classify_envoy_rls(200, b"ok\n", {})[0] is Outcome.ALLOWED
    assert classify_envoy_rls(500, b"", {})[0] is Outcome.SERVER_ERROR
