"""Every response of a load test is exactly one `Outcome`.

A rate-limited response is a correct answer, not a failure; so is a fail-closed
`BACKEND_UNAVAILABLE` while the backend is down (the verdict decides whether one was expected).
Denials are recognised by their structure (status, code, data), never by a substring:

* gateway `/rpc`: HTTP 429 whose body is `{"error": {"code": -32602, "data": {"plugin_error_code":
  "RATE_LIMIT", ...}}}`; fail closed: HTTP 503 with `plugin_error_code: "BACKEND_UNAVAILABLE"`;
* gateway `/servers/{id}/mcp` tools/call: HTTP 200 with a JSON-RPC result `isError: true` whose
  content is the plugin's violation (code `RATE_LIMIT`), or a JSON-RPC error carrying the code;
* ratewall-server `/check` and `/authz`: 429 with the service's JSON (`allowed: false`,
  `reason: "limited"`); 503 with `reason: "backend_unavailable"`;
* Envoy with the wasm filter: 429 with the filter's JSON (`error: "rate_limited"`, `reason`) or,
  for MCP, a JSON-RPC error code -32000 with `error.data.reason`; 503 likewise with
  `reason: "backend_unavailable"`.

A 429 or 503 that does not have its packaging's structure is *not* a denial: it is a client or
server error (e.g. another limiter in the path), which fails the run.
"""

from __future__ import annotations

import enum
import json
from typing import Any


class Outcome(str, enum.Enum):
    ALLOWED = "allowed"
    RATE_LIMITED = "rate_limited"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    CLIENT_ERROR = "client_error"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"

    @property
    def is_infrastructure_error(self) -> bool:
        return self in (Outcome.CLIENT_ERROR, Outcome.SERVER_ERROR, Outcome.TIMEOUT, Outcome.CONNECTION_ERROR)


def _json(body: bytes | str | None) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _generic(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.ALLOWED
    if status >= 500:
        return Outcome.SERVER_ERROR
    return Outcome.CLIENT_ERROR


def classify_exception(exc: BaseException | None) -> Outcome:
    """A request that got no HTTP answer."""
    name = type(exc).__name__.lower() if exc is not None else ""
    text = str(exc).lower() if exc is not None else ""
    if "timeout" in name or "timed out" in text or "timeout" in text:
        return Outcome.TIMEOUT
    return Outcome.CONNECTION_ERROR


# ------------------------------------------------------------------------------------------------
# The ContextForge gateway
# ------------------------------------------------------------------------------------------------


def _plugin_code(err: Any) -> str | None:
    """`plugin_error_code` of a JSON-RPC error object from the gateway, if it is a plugin's."""
    if not isinstance(err, dict):
        return None
    data = err.get("data")
    if isinstance(data, dict):
        code = data.get("plugin_error_code")
        if isinstance(code, str):
            return code
    return None


def classify_gateway_rpc(status: int, body: bytes | str | None) -> tuple[Outcome, str]:
    """A `POST /rpc` tools/call answer. Returns (outcome, detail)."""
    doc = _json(body)
    err = doc.get("error") if isinstance(doc, dict) else None
    code = _plugin_code(err)
    if status == 429:
        if code == "RATE_LIMIT" and isinstance(err, dict) and err.get("code") == -32602:
            return Outcome.RATE_LIMITED, "RATE_LIMIT"
        return Outcome.CLIENT_ERROR, f"429 without the plugin's RATE_LIMIT violation: {str(body)[:200]}"
    if status == 503:
        if code == "BACKEND_UNAVAILABLE":
            return Outcome.BACKEND_UNAVAILABLE, "BACKEND_UNAVAILABLE"
        return Outcome.SERVER_ERROR, f"503: {str(body)[:200]}"
    if status == 200:
        if not isinstance(doc, dict):
            return Outcome.SERVER_ERROR, "200 with a body that is not JSON"
        if "error" in doc:
            return Outcome.CLIENT_ERROR, f"JSON-RPC error: {str(doc['error'])[:200]}"
        res = doc.get("result")
        if isinstance(res, dict) and res.get("isError") is True:
            return Outcome.SERVER_ERROR, f"tool error: {str(res)[:200]}"
        if not isinstance(res, dict):
            return Outcome.SERVER_ERROR, "200 without a JSON-RPC result"
        return Outcome.ALLOWED, ""
    return _generic(status), f"HTTP {status}: {str(body)[:200]}"


def classify_gateway_mcp(status: int, body: bytes | str | None) -> tuple[Outcome, str]:
    """A streamable-HTTP `tools/call` answer from `/servers/{id}/mcp` (JSON response mode):
    the plugin's denial is HTTP 200 with a JSON-RPC result `isError: true` whose structured
    content or text is the violation, carrying the code `RATE_LIMIT`."""
    doc = _json(body)
    if status != 200 or not isinstance(doc, dict):
        return classify_gateway_rpc(status, body)
    err = doc.get("error")
    if err is not None:
        code = _plugin_code(err)
        if code == "RATE_LIMIT":
            return Outcome.RATE_LIMITED, "RATE_LIMIT"
        if code == "BACKEND_UNAVAILABLE":
            return Outcome.BACKEND_UNAVAILABLE, "BACKEND_UNAVAILABLE"
        return Outcome.CLIENT_ERROR, f"JSON-RPC error: {str(err)[:200]}"
    res = doc.get("result")
    if not isinstance(res, dict):
        return Outcome.SERVER_ERROR, "200 without a JSON-RPC result"
    if res.get("isError") is True:
        code = _violation_code_in_result(res)
        if code == "RATE_LIMIT":
            return Outcome.RATE_LIMITED, "RATE_LIMIT"
        if code == "BACKEND_UNAVAILABLE":
            return Outcome.BACKEND_UNAVAILABLE, "BACKEND_UNAVAILABLE"
        return Outcome.SERVER_ERROR, f"tool error: {str(res)[:200]}"
    return Outcome.ALLOWED, ""


def _violation_code_in_result(res: dict) -> str | None:
    """The violation code of a tool-error result: from `structuredContent` or `_meta` when the
    gateway puts it there, else from a content text that is itself a JSON object with a `code`
    or `plugin_error_code` field (a parsed field, not a substring)."""
    for holder in (res.get("structuredContent"), res.get("_meta")):
        if isinstance(holder, dict):
            for k in ("plugin_error_code", "code"):
                if isinstance(holder.get(k), str):
                    return holder[k]
    for c in res.get("content") or []:
        if isinstance(c, dict) and c.get("type") == "text":
            inner = _json(c.get("text"))
            if isinstance(inner, dict):
                for k in ("plugin_error_code", "code"):
                    if isinstance(inner.get(k), str):
                        return inner[k]
    return None


# ------------------------------------------------------------------------------------------------
# ratewall-server and Envoy
# ------------------------------------------------------------------------------------------------


def classify_service(status: int, body: bytes | str | None) -> tuple[Outcome, str]:
    """ratewall-server `/check` or `/authz` (its JSON body on every decision)."""
    doc = _json(body)
    decision = isinstance(doc, dict) and "allowed" in doc
    if status == 200 and decision and doc["allowed"] is True:
        # fail-open decisions are allowed with no limit: told apart for the fault verdict
        return Outcome.ALLOWED, "fail_open" if doc.get("limit") is None and not doc.get("headers") else ""
    if status == 429 and decision and doc["allowed"] is False and doc.get("reason") in ("limited", "cost_exceeds_limit"):
        return Outcome.RATE_LIMITED, doc["reason"]
    if status == 503 and decision and doc.get("reason") == "backend_unavailable":
        return Outcome.BACKEND_UNAVAILABLE, "backend_unavailable"
    return (Outcome.SERVER_ERROR if status == 200 else _generic(status)), f"HTTP {status}: {str(body)[:200]}"


def classify_envoy(status: int, body: bytes | str | None) -> tuple[Outcome, str]:
    """Envoy with ratewall's wasm filter (local or remote mode) in front of a 200 route: the
    filter's local reply on denial (plain JSON, or a JSON-RPC error -32000 for MCP)."""
    doc = _json(body)
    info = None
    if isinstance(doc, dict):
        if isinstance(doc.get("error"), dict) and doc["error"].get("code") == -32000:
            info = doc["error"].get("data")
        elif doc.get("error") in ("rate_limited", "rate_limiter_unavailable"):
            info = doc
    reason = info.get("reason") if isinstance(info, dict) else None
    if status == 429 and reason in ("limited", "cost_exceeds_limit"):
        return Outcome.RATE_LIMITED, reason
    if status == 503 and reason == "backend_unavailable":
        return Outcome.BACKEND_UNAVAILABLE, reason
    if 200 <= status < 300:
        return Outcome.ALLOWED, ""
    return _generic(status), f"HTTP {status}: {str(body)[:200]}"


def classify_envoy_rls(status: int, body: bytes | str | None, headers) -> tuple[Outcome, str]:
    """Envoy's native `ratelimit` filter (gRPC RLS): an OVER_LIMIT answer is Envoy's local reply
    429 carrying `x-envoy-ratelimited: true` (set by the filter, not by any upstream)."""
    flagged = headers is not None and str(headers.get("x-envoy-ratelimited", "")).lower() == "true"
    if status == 429 and flagged:
        return Outcome.RATE_LIMITED, "OVER_LIMIT"
    if 200 <= status < 300:
        return Outcome.ALLOWED, ""
    return _generic(status), f"HTTP {status}: {str(body)[:200]}"
