"""The compiled limits and the per-request plan (``Policy::plan`` in
``core/src/config/compile.rs``). The limits come from the core's own validation
(``ratewall._ratewall.compile_config``), so both engines enforce the same configuration."""

from __future__ import annotations

from typing import NamedTuple, Optional

from . import keys
from .text import clean, normalize_name

MAX_COUNT = 4_294_967_295  # u32::MAX: config::rate::MAX_COUNT
_SERVER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class ContextError(Exception):
    """The request's context cannot be evaluated (nothing is consumed)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


SERVER_ID_MISSING = "server_id is required when by_user_per_server is configured"
SERVER_ID_INVALID = (
    "server_id may contain only ASCII letters, digits, hyphen, underscore, and period"
)
SERVER_ID_TOO_LONG = "server_id exceeds the maximum length of 128 bytes"


class Cell(NamedTuple):
    key: str
    count: int
    window_secs: int
    window_us: int
    dimension: str
    name: str
    cost: int  # units this cell consumes (0: checked, never consumed)
    shadow: bool  # evaluated and reported, never denies


class Plan(NamedTuple):
    cells: list[Cell]
    cost: int  # the request's nominal cost; each cell carries its own


def _limits(specs) -> list[tuple[int, int, str]]:
    return [(int(c), int(w), str(n)) for c, w, n in specs]


class Policy:
    def __init__(self, compiled: dict) -> None:
        self.prefix: str = compiled["prefix"]
        self.key_tag: str = compiled["key_tag"]
        self.algorithm: str = compiled["algorithm"]
        self.by_user = _limits(compiled["by_user"])
        self.by_user_per_server = _limits(compiled["by_user_per_server"])
        self.by_tenant = _limits(compiled["by_tenant"])
        self.by_tool = {k: _limits(v) for k, v in compiled["by_tool"].items()}
        self.shadow_mode: bool = bool(compiled.get("shadow_mode", False))

    @property
    def has_per_server(self) -> bool:
        return bool(self.by_user_per_server)

    def _push(self, out, limits, dimension, tenant, dim_part, cost):
        for count, window, name in limits:
            key = keys.scope(self.prefix, tenant, self.key_tag, window) + dim_part
            out.append(
                Cell(key, count, window, window * 1_000_000, dimension, name, cost, self.shadow_mode)
            )

    def plan(
        self,
        user: Optional[str],
        tenant: Optional[str],
        server: Optional[str],
        tool: Optional[str],
        per_server: bool,
        cost: int = 1,
    ) -> Plan:
        cost = max(cost, 1)
        if cost > MAX_COUNT:
            raise ContextError("cost", f"cost {cost} exceeds the maximum of {MAX_COUNT}")
        tenant = clean(tenant)
        user = clean(user) or "anonymous"
        srv = None
        if per_server and self.by_user_per_server:
            srv = clean(server)
            if srv is None:
                raise ContextError("server_id", SERVER_ID_MISSING)
            if len(srv.encode("utf-8")) > 128:
                raise ContextError("server_id", SERVER_ID_TOO_LONG)
            if not all(ch in _SERVER_CHARS for ch in srv):
                raise ContextError("server_id", SERVER_ID_INVALID)
        cells: list[Cell] = []
        if self.by_user:
            self._push(cells, self.by_user, "user", tenant, keys.user_key(user), cost)
        if self.by_user_per_server and srv is not None:
            self._push(
                cells, self.by_user_per_server, "user_per_server", tenant,
                keys.user_server_key(user, srv), cost,
            )
        if self.by_tenant and tenant is not None:
            self._push(cells, self.by_tenant, "tenant", tenant, keys.TENANT_KEY, cost)
        if tool is not None and self.by_tool:
            norm = normalize_name(tool)
            limits = self.by_tool.get(norm)
            if limits:
                self._push(cells, limits, "tool", tenant, keys.tool_key(norm), cost)
        return Plan(cells, cost)
