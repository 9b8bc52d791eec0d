"""ratewall's gateway plugin: a drop-in replacement for ``cpex-rate-limiter`` 0.1.12.

Configure it like the peer, changing only the ``kind:`` line::

    - name: RateLimiterPlugin
      kind: ratewall.gateway.RateLimiterPlugin
      hooks: [tool_pre_invoke, prompt_pre_fetch]
      mode: enforce
      priority: 20
      config:
        by_user: "30/m"
        by_tenant: "3000/m"
        by_tool: {search: "10/m"}
        backend: redis                       # or memory (default)
        redis_url: redis://redis:6379/0
        engine: rust                         # or python; env RATEWALL_ENGINE overrides

Every key of the peer keeps its meaning (the core's schema: ``docs/CONFIG.md``); config errors
raise ``ValueError`` at construction, naming the key and the value (run the gateway with
``PLUGINS_FAIL_ON_PLUGIN_ERROR=true`` so that such an error stops it instead of running it
without the plugin).

Hot path: one Rust call per hook (``Engine.check`` for memory, with the GIL held: ~0.3 us of
Rust, cheaper than a GIL hand-off between threads;
``Engine.check_async`` for Redis, an asyncio future resolved on the loop's own thread, see
``ratewall._ratewall.Completer``). Python only extracts the context and wraps the answer.

Memory-backend counters live in one bounded store per process (``src/registry.rs``), keyed by
cell (key prefix, tenant, algorithm, window, dimension, identity): they survive the gateway's
per-context instances, its 30 s rebuilds and config edits (an unchanged rule keeps its usage),
and nothing is kept per configuration. The store's bound is the first instance's
``memory_max_keys`` (another value is logged at WARN). ``shutdown`` releases connections, never
counters.

Unknown config keys are ignored with a WARN naming them (as the peer), unless ``strict: true``;
invalid values of known keys raise. Per-request failure lines are throttled process-wide to one
a second, each stating how many lines it stands for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from typing import Any, Mapping, Optional

from cpex.framework import (
    Plugin,
    PluginConfig,
    PluginContext,
    PluginViolation,
    PromptPrehookPayload,
    PromptPrehookResult,
    ToolPreInvokePayload,
    ToolPreInvokeResult,
)

from ._ratewall import Completer, Engine, compile_config, redis_script

__all__ = ["RateLimiterPlugin", "load_config", "user_identity"]

log = logging.getLogger(__name__)

ENGINE_ENV = "RATEWALL_ENGINE"
ENGINES = ("rust", "python")

# Answer codes of Engine.check / check_async (see src/convert.rs).
_UNLIMITED, _ALLOWED, _DENIED, _BACKEND_CLOSED, _BACKEND_OPEN, _CONTEXT = range(6)

_get_running_loop = asyncio.get_running_loop


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _engine_choice(config: Mapping[str, Any]) -> str:
    env = os.environ.get(ENGINE_ENV)
    if env is not None and env.strip():
        v = env.strip().lower()
        if v not in ENGINES:
            raise ValueError(
                f"invalid rate limiter config: {ENGINE_ENV}={env!r} is not valid; "
                'expected "rust" or "python"'
            )
        return v
    v = config.get("engine", "rust")
    if v is None:
        return "rust"
    if not isinstance(v, str) or v.strip().lower() not in ENGINES:
        raise ValueError(
            f'invalid rate limiter config: engine: {v!r} is not valid; expected "rust" or "python"'
        )
    return v.strip().lower()


def load_config(config: Optional[Mapping[str, Any]]) -> tuple[str, dict, str]:
    """Validate a plugin ``config:`` block. Returns ``(json_text, compiled, engine)``; raises
    ``ValueError`` naming the key and value."""
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise ValueError(
            f"invalid rate limiter config: <root>: expected a mapping of settings, got {config!r}"
        )
    try:
        text = json.dumps(dict(config), default=str)
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid rate limiter config: <root>: {e}") from None
    compiled = json.loads(compile_config(text))
    engine = _engine_choice(config)
    if compiled["ignored"]:
        _warn_once(
            ("ignored", compiled["ignored_note"]),
            "rate limiter: unknown config key(s) ignored: %s; every other setting is in force "
            "(set strict: true to refuse unknown keys)",
            compiled["ignored_note"],
        )
    if "redis_fallback" in config:
        log.warning(
            "rate limiter: redis_fallback=%r is ignored: ratewall never falls back to "
            "per-instance counters; fail_mode (open|closed) decides what a Redis failure does",
            config.get("redis_fallback"),
        )
    return text, compiled, engine


# --------------------------------------------------------------------------------------------
# Context extraction
# --------------------------------------------------------------------------------------------

_WS = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def user_identity(user: Any) -> Optional[str]:
    """The gateway's ``GlobalContext.user``: a string, or a dict whose first non-blank of
    ``email``, ``id``, ``sub`` is used. ``None`` (the core then uses ``anonymous``)."""
    if user is None:
        return None
    if isinstance(user, str):
        return user
    if isinstance(user, Mapping):
        for field in ("email", "id", "sub"):
            v = user.get(field)
            if v is not None:
                s = str(v).strip(_WS)
                if s:
                    return s
        return None
    return str(user)


def _text(v: Any) -> Optional[str]:
    if v is None or v.__class__ is str:
        return v
    return str(v)


def _trace_id(extensions: Any) -> Optional[str]:
    req = getattr(extensions, "request", None)
    if req is None:
        return None
    t = getattr(req, "trace_id", None)
    return t if isinstance(t, str) and t else None


# --------------------------------------------------------------------------------------------
# Result objects, built as cheaply as the framework allows
# --------------------------------------------------------------------------------------------
#
# Measured (docs/benchmarks/plugin.md): ToolPreInvokeResult(http_headers=h) validates every field
# (~1.4 us), model_construct() is pathological on these generic models (~300 us), copy() and
# model_copy() are slower than validation. Allocating the instance and filling its slots with the
# defaults of a validated template (fresh containers for the mutable ones) costs ~0.6 us. The
# layout is checked against a validated instance at import; on any mismatch (another cpex
# version) the plugin uses the validating constructor.

_new = object.__new__
_setattr = object.__setattr__
_LAYOUT = (
    "continue_processing",
    "modified_payload",
    "modified_extensions",
    "violation",
    "metadata",
    "denial_metadata",
    "background_tasks",
    "http_headers",
    "retry_delay_ms",
    "executions",
)


def _fast_factory(cls):
    def slow(http_headers=None, metadata=None):
        if metadata is None:
            return cls(http_headers=http_headers)
        return cls(http_headers=http_headers, metadata=metadata)

    try:
        template = cls()
        base = dict(template.__dict__)
        if (
            tuple(base) != _LAYOUT
            or template.__pydantic_extra__ is not None
            or template.__pydantic_private__ is not None
            or base["metadata"] != {}
            or base["background_tasks"] != []
            or base["executions"] != []
        ):
            return slow
    except Exception:  # pragma: no cover - another framework version
        return slow

    def fast(http_headers=None, metadata=None):
        m = _new(cls)
        d = base.copy()
        d["metadata"] = {} if metadata is None else metadata
        d["background_tasks"] = []
        d["executions"] = []
        d["http_headers"] = http_headers
        _setattr(m, "__dict__", d)
        _setattr(m, "__pydantic_fields_set__", {"http_headers"})
        _setattr(m, "__pydantic_extra__", None)
        _setattr(m, "__pydantic_private__", None)
        return m

    try:
        h = {"X-RateLimit-Limit": "1"}
        ok = fast(h).model_dump() == cls(http_headers=h).model_dump()
        ok = ok and fast(None, {"a": 1}).model_dump() == cls(metadata={"a": 1}).model_dump()
    except Exception:  # pragma: no cover
        ok = False
    return fast if ok else slow


_tool_result = _fast_factory(ToolPreInvokeResult)
_prompt_result = _fast_factory(PromptPrehookResult)


# --------------------------------------------------------------------------------------------
# Logging of per-request failures: at most one line per second per process, counting the rest
# --------------------------------------------------------------------------------------------


class _LogThrottle:
    """Per-request failure lines (a Redis outage, a refused context) for the whole process, both
    engines and every plugin instance (the gateway keeps one per context and rebuilds them):
    the first line of an interval is logged at once; the others in that interval are counted,
    and the count is logged when the interval ends (a timer on the running event loop) or, if
    there is no loop, by the next line, or at shutdown. So an outage logs about one line per
    second, each stating how many it stands for, and no failure goes uncounted."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.next = 0.0
        self.suppressed = 0
        self.last: Optional[tuple] = None  # (msg, args) of the latest suppressed line
        self.flush_loop: Any = None  # the loop a pending flush is scheduled on
        self.lock = threading.Lock()

    def warn(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        with self.lock:
            if now < self.next:
                self.suppressed += 1
                self.last = (msg, args)
                if self.flush_loop is None or self.flush_loop.is_closed():
                    try:
                        loop = _get_running_loop()
                    except RuntimeError:  # no loop: the next line (or shutdown) reports it
                        return
                    self.flush_loop = loop
                    loop.call_later(self.next - now, self.flush)
                return
            self.next = now + self.interval
            n, self.suppressed = self.suppressed, 0
            self.last = None
        if n:
            log.warning(msg + " (and %d similar lines suppressed)", *args, n)
        else:
            log.warning(msg, *args)

    def flush(self) -> None:
        """Log the count of lines suppressed so far (if any) and start a new interval."""
        with self.lock:
            self.flush_loop = None
            n, self.suppressed = self.suppressed, 0
            last, self.last = self.last, None
            if n:
                self.next = time.monotonic() + self.interval
        if n and last is not None:
            msg, args = last
            log.warning(
                "rate limiter: %d similar lines suppressed in the last %.0f s; latest: " + msg,
                n, self.interval, *args,
            )


_FAILURES = _LogThrottle()

# Configuration WARNs already logged (the gateway builds an instance per context and rebuilds it
# every 30 s: say each once per process).
_WARNED: set = set()
_WARNED_LOCK = threading.Lock()


def _warn_once(key: Any, msg: str, *args: Any) -> None:
    with _WARNED_LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    log.warning(msg, *args)


# --------------------------------------------------------------------------------------------
# Completers: one per event loop, process-wide (Rust engine with the Redis backend)
# --------------------------------------------------------------------------------------------

_COMPLETERS: dict = {}
_COMPLETERS_LOCK = threading.Lock()


def _completer() -> Completer:
    loop = _get_running_loop()
    c = _COMPLETERS.get(loop)
    if c is None:
        with _COMPLETERS_LOCK:
            for old in [lp for lp in _COMPLETERS if lp.is_closed()]:
                del _COMPLETERS[old]
            c = _COMPLETERS.get(loop)
            if c is None:
                c = Completer(loop)
                loop.add_reader(c.fileno(), c.drain)
                _COMPLETERS[loop] = c
    return c


# --------------------------------------------------------------------------------------------
# The plugin
# --------------------------------------------------------------------------------------------

_BACKEND_UNAVAILABLE_DESC = "Rate limiter backend unavailable; failing closed per fail_mode=closed"


class RateLimiterPlugin(Plugin):
    """Rate limits ``tool_pre_invoke`` and ``prompt_pre_fetch`` by user, user per server, tenant
    and tool. See the module doc."""

    def __init__(self, config: PluginConfig, *, clock: Any = None) -> None:
        """``clock`` (tests only): a ``ratewall._ratewall.ManualClock``; the Rust engine uses it,
        the Python engine reads ``clock.now_micros``. It gives the instance private counters."""
        super().__init__(config)
        text, compiled, engine = load_config(config.config)
        self.engine_name = engine
        self.backend = compiled["backend"]
        self.compiled = compiled
        if engine == "rust":
            self._engine: Any = Engine(text, clock)
        else:
            from .engine_py import PythonEngine

            script = redis_script() if self.backend == "redis" else ""
            if self.backend == "redis":
                try:
                    import redis.asyncio  # noqa: F401
                except ImportError as e:
                    raise ValueError(
                        "invalid rate limiter config: engine: 'python' with backend 'redis' needs "
                        "the redis package (pip install 'ratewall[redis]')"
                    ) from e
            self._engine = PythonEngine(
                compiled, script, None if clock is None else clock.now_micros
            )
        if self.backend == "memory":
            self._sync = self._engine.check
            self._async = None
        else:
            self._sync = None
            self._async = self._engine.check_async
        self._rust_async = engine == "rust"
        self._backend_meta = self.backend
        self._errors = _FAILURES
        if self.backend == "memory" and clock is None:
            wanted, used = compiled["memory_max_keys"], self._engine.store_max_keys
            if wanted != used:
                _warn_once(
                    ("memory_max_keys", engine, wanted, used),
                    "rate limiter: memory_max_keys=%d is not applied: the process-wide memory "
                    "store (%s engine) was created with memory_max_keys=%d by the first instance, "
                    "and that bound stays in force for the life of the process",
                    wanted, engine, used,
                )

    # -- lifecycle ------------------------------------------------------------------------------

    async def initialize(self) -> None:
        """Redis: connect now (a failure is logged; requests then follow ``fail_mode`` while the
        store reconnects in the background)."""
        if self.backend == "redis":
            try:
                err = await self._engine.connect(_completer() if self._rust_async else None)
            except Exception as e:  # never fail the gateway's startup on Redis
                err = str(e)
            if err:
                log.warning("rate limiter: Redis not available at startup: %s", err)

    async def shutdown(self) -> None:
        """Release the Redis connection. Memory counters are process-wide and stay."""
        self._errors.flush()
        self._engine.close()
        aclose = getattr(self._engine, "aclose", None)
        if aclose is not None:
            await aclose()

    # -- hooks ----------------------------------------------------------------------------------

    async def tool_pre_invoke(
        self,
        payload: ToolPreInvokePayload,
        context: PluginContext,
        extensions: Any = None,
    ) -> ToolPreInvokeResult:
        """Check the tool call against every configured dimension."""
        try:
            gc = context.global_context
            user = gc.user
            if user.__class__ is not str:
                user = user_identity(user)
            if self._sync is not None:
                r = self._sync(user, _text(gc.tenant_id), _text(gc.server_id), payload.name, True)
            elif self._rust_async:
                r = await self._async(
                    _completer(), user, _text(gc.tenant_id), _text(gc.server_id), payload.name, True
                )
            else:
                r = await self._async(
                    None, user, _text(gc.tenant_id), _text(gc.server_id), payload.name, True
                )
            if r[0] == _ALLOWED and extensions is None:
                return _tool_result(r[1])
            return self._finish(r, extensions, _tool_result, ToolPreInvokeResult, "tool_pre_invoke")
        except Exception as e:  # never break the gateway on an unexpected error
            return self._unexpected(e, ToolPreInvokeResult, "tool_pre_invoke")

    async def prompt_pre_fetch(
        self,
        payload: PromptPrehookPayload,
        context: PluginContext,
        extensions: Any = None,
    ) -> PromptPrehookResult:
        """Check the prompt fetch (prompts share the ``by_tool`` limits and the user and tenant
        counters; ``by_user_per_server`` does not apply)."""
        try:
            gc = context.global_context
            user = gc.user
            if user.__class__ is not str:
                user = user_identity(user)
            if self._sync is not None:
                r = self._sync(user, _text(gc.tenant_id), None, payload.prompt_id, False)
            elif self._rust_async:
                r = await self._async(
                    _completer(), user, _text(gc.tenant_id), None, payload.prompt_id, False
                )
            else:
                r = await self._async(None, user, _text(gc.tenant_id), None, payload.prompt_id, False)
            if r[0] == _ALLOWED and extensions is None:
                return _prompt_result(r[1])
            return self._finish(
                r, extensions, _prompt_result, PromptPrehookResult, "prompt_pre_fetch"
            )
        except Exception as e:
            return self._unexpected(e, PromptPrehookResult, "prompt_pre_fetch")

    # -- answers to results ---------------------------------------------------------------------

    def _meta(self, extensions: Any, allowed: int, throttled: int) -> Optional[dict]:
        if extensions is None or _trace_id(extensions) is None:
            return None
        return {
            "rate_limiter": {"allowed": allowed, "throttled": throttled, "backend": self._backend_meta}
        }

    def _finish(self, r: tuple, extensions: Any, fast, cls, hook: str):
        code, headers, extra = r
        if code == _ALLOWED or code == _UNLIMITED:
            return fast(headers, self._meta(extensions, 1, 0))
        if code == _DENIED:
            violation = PluginViolation(
                reason="Rate limit exceeded",
                description="Rate limit exceeded",
                code="RATE_LIMIT",
                http_status_code=429,
                http_headers=headers,
                details=extra,
            )
            meta = self._meta(extensions, 0, 1)
            if meta is None:
                return cls(continue_processing=False, violation=violation)
            return cls(continue_processing=False, violation=violation, metadata=meta)
        if code == _BACKEND_CLOSED:
            self._errors.warn(
                "RateLimiterPlugin.%s: backend error; blocking request (fail_mode=closed): %s",
                hook,
                extra,
            )
            return self._backend_unavailable(cls, extensions, headers)
        if code == _BACKEND_OPEN:
            self._errors.warn(
                "RateLimiterPlugin.%s: backend error; allowing request (fail_mode=open): %s",
                hook,
                extra,
            )
            return cls()
        # _CONTEXT
        field, message = extra
        self._errors.warn("rate limiter: refusing %s request: %s", hook.split("_")[0], message)
        violation = PluginViolation(
            reason="Rate limit context unavailable",
            description=message,
            code="RATE_LIMIT_CONTEXT_MISSING",
            http_status_code=503,
            details={"field": field, "error": message},
        )
        meta = self._meta(extensions, 0, 0)
        if meta is None:
            return cls(continue_processing=False, violation=violation)
        return cls(continue_processing=False, violation=violation, metadata=meta)

    def _backend_unavailable(self, cls, extensions: Any = None, headers: Any = None):
        # `headers` is the core renderer's output for the engine's BackendUnavailable decision;
        # only a failure outside the engine (no decision at all) falls back to the same value.
        violation = PluginViolation(
            reason="Rate limiter backend unavailable",
            description=_BACKEND_UNAVAILABLE_DESC,
            code="BACKEND_UNAVAILABLE",
            http_status_code=503,
            http_headers=headers or {"Retry-After": "1"},
            details={},
        )
        meta = self._meta(extensions, 0, 0)
        if meta is None:
            return cls(continue_processing=False, violation=violation)
        return cls(continue_processing=False, violation=violation, metadata=meta)

    def _unexpected(self, e: Exception, cls, hook: str):
        """A bug or a context the gateway never builds: apply fail_mode, never raise."""
        closed = self.compiled.get("fail_mode") == "closed"
        self._errors.warn(
            "RateLimiterPlugin.%s: unexpected error; %s request: %r",
            hook,
            "blocking" if closed else "allowing",
            e,
        )
        if closed:
            return self._backend_unavailable(cls)
        return cls()
