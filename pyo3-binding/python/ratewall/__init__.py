"""ratewall: a rate limiting engine (Rust core) and its cpex gateway plugin.

* ``ratewall.gateway.RateLimiterPlugin``: the plugin (drop-in for ``cpex-rate-limiter``);
* ``ratewall._ratewall``: the Rust extension (``Engine``, ``compile_config``, ...);
* ``ratewall.engine_py``: the pure-Python engine with the same semantics.
"""

from ._ratewall import Engine, ManualClock, __version__, compile_config

__all__ = ["Engine", "ManualClock", "__version__", "compile_config"]
