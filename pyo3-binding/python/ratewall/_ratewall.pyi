"""Typed stubs of the Rust extension ``ratewall._ratewall``."""

import asyncio
from typing import Any, Optional, Union

__version__: str
PLUGIN_KEYS: list[str]

# (code, headers, extra):
#   0 allowed, no limit applies: (0, None, None)
#   1 allowed: (1, headers | None, None)
#   2 denied (RATE_LIMIT, 429): (2, headers | None, details)
#   3 backend failed, fail_mode closed (503): (3, {"Retry-After": "1"}, message)
#   4 backend failed, fail_mode open: (4, None, message)
#   5 unusable context (RATE_LIMIT_CONTEXT_MISSING, 503): (5, None, (field, message))
Answer = tuple[int, Optional[dict[str, str]], Union[None, str, dict[str, Any], tuple[str, str]]]

def compile_config(config_json: str) -> str:
    """Validate a plugin config (JSON text); the compiled policy as JSON text. Raises ValueError."""

def redis_script() -> str:
    """The core's Redis Lua script."""

class ManualClock:
    def __init__(self, micros: int = 1_700_000_000_000_000) -> None: ...
    def now_micros(self) -> int: ...
    def set_micros(self, micros: int) -> None: ...
    def advance_micros(self, micros: int) -> None: ...

class Completer:
    """Resolves the futures of one asyncio event loop (register fileno()/drain with add_reader)."""

    def __init__(self, event_loop: asyncio.AbstractEventLoop) -> None: ...
    def fileno(self) -> int: ...
    def pending(self) -> int: ...
    def drain(self) -> None: ...

class Engine:
    def __init__(
        self,
        config_json: str,
        clock: Optional[ManualClock] = None,
        release_gil: bool = False,
    ) -> None:
        """``release_gil``: release the GIL around the memory check (measured slower with
        threads sharing a plugin: see docs/benchmarks/plugin.md; kept for that comparison)."""
    @property
    def backend(self) -> str: ...
    @property
    def store_max_keys(self) -> int:
        """Memory backend: the bound of the store in use (the process-wide store keeps the
        first engine's ``memory_max_keys``)."""
    @property
    def per_server(self) -> bool: ...
    def check(
        self,
        user: Optional[str],
        tenant: Optional[str],
        server: Optional[str],
        tool: Optional[str],
        per_server: bool,
    ) -> Answer: ...
    def check_async(
        self,
        completer: Completer,
        user: Optional[str],
        tenant: Optional[str],
        server: Optional[str],
        tool: Optional[str],
        per_server: bool,
    ) -> asyncio.Future[Answer]: ...
    def connect(self, completer: Completer) -> asyncio.Future[Optional[str]]: ...
    def close(self) -> None: ...
    def stats(self) -> tuple[int, int, int]: ...
