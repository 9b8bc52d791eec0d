"""The Redis store of the pure-Python engine: redis-py asyncio running the core's own Lua script
(``ratewall._ratewall.redis_script()``, the text of ``core/src/store/redis/script.lua``), one
``EVALSHA`` per request, ``EVAL`` once after ``NOSCRIPT``.

The script's header documents the call: ``KEYS`` = the plan's cell keys, ``ARGV`` = now (µs, or
empty for the server's ``TIME``), then (algorithm, count, window, cost, shadow) per cell; the reply is
``[admitted, now, (allowed, remaining, reset_at, retry_at or -1) per cell]``, combined here
exactly like the core's ``Decision::combine``.

``redis_cluster: true``: ``redis.asyncio.cluster.RedisCluster`` on the comma-separated seed
nodes. Every key of a request carries the tenant's hash tag (``{...}``), so the one script call
goes to the node owning that slot (redis-py refuses a call whose keys span slots).

TLS (``rediss://``): the certificate chain is always verified (``ssl_cert_reqs="required"``,
against ``redis_ssl_ca_certs`` or the system roots); ``redis_ssl_check_hostname: false`` skips
only the hostname comparison, as in the Rust engine.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Callable, Optional
from urllib.parse import unquote, urlsplit

from .algorithms import Outcome
from .decision import Decision
from .policy import Plan


class RedisStore:
    def __init__(
        self,
        settings: dict,
        algorithm: str,
        script: str,
        clock: Callable[[], int],
        manual_clock: bool = False,
    ) -> None:
        self.settings = settings
        self.algorithm = algorithm
        self.script = script
        self.sha = hashlib.sha1(script.encode("utf-8")).hexdigest()
        self.clock = clock
        # Client clock: the test clock, or clock: client; otherwise the server's TIME.
        self.client_clock = manual_clock or settings.get("clock") == "client"
        self.timeout = settings.get("timeout_ms", 50) / 1000.0
        self.clients: dict = {}  # event loop -> redis.asyncio.Redis (a client is bound to its loop)
        self.round_trips = 0
        self.errors = 0

    def _tls_kwargs(self) -> dict:
        s = self.settings
        if not s["url"].startswith("rediss://"):
            return {}
        kwargs: dict = {"ssl_cert_reqs": "required", "ssl_check_hostname": s.get("check_hostname", True)}
        if s.get("ca_certs"):
            kwargs["ssl_ca_certs"] = s["ca_certs"]
        if s.get("certfile"):
            kwargs["ssl_certfile"] = s["certfile"]
            kwargs["ssl_keyfile"] = s["keyfile"]
        return kwargs

    def _new_client(self):
        s = self.settings
        kwargs = {
            "socket_timeout": max(self.timeout, 0.001),
            "socket_connect_timeout": max(self.timeout, 1.0),
            **self._tls_kwargs(),
        }
        if not s.get("cluster"):
            import redis.asyncio as aioredis

            return aioredis.Redis.from_url(s["url"], **kwargs)
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        nodes = []
        username = password = None
        for part in s["url"].split(","):
            u = urlsplit(part.strip())
            if u.hostname is None:
                raise ValueError(f"redis_url: seed node {part.strip()!r} has no host")
            nodes.append(ClusterNode(u.hostname, u.port or 6379))
            if u.password is not None and password is None:
                username = unquote(u.username) if u.username else None
                password = unquote(u.password)
        if kwargs.pop("ssl_cert_reqs", None) is not None:
            kwargs["ssl"] = True
            kwargs["ssl_cert_reqs"] = "required"
        return RedisCluster(
            startup_nodes=nodes, username=username, password=password, **kwargs
        )

    def _client(self):
        loop = asyncio.get_running_loop()
        client = self.clients.get(loop)
        if client is None:
            for old in [lp for lp in self.clients if lp.is_closed()]:
                del self.clients[old]
            client = self._new_client()
            self.clients[loop] = client
        return client

    async def check(self, plan: Plan) -> Decision:
        if not plan.cells:
            return Decision(allowed=True, now=self.clock())
        keys = [c.key for c in plan.cells]
        args: list = ["" if not self.client_clock else str(self.clock())]
        for c in plan.cells:
            args += [self.algorithm, str(c.count), str(c.window_secs), str(c.cost),
                     "1" if c.shadow else "0"]
        client = self._client()
        from redis.exceptions import NoScriptError

        try:
            async with asyncio.timeout(self.timeout):
                self.round_trips += 1
                try:
                    reply = await client.evalsha(self.sha, len(keys), *keys, *args)
                except NoScriptError:
                    self.round_trips += 1
                    reply = await client.eval(self.script, len(keys), *keys, *args)
        except BaseException:
            self.errors += 1
            raise
        now = int(reply[1])
        outcomes = []
        for i in range(len(keys)):
            a, rem, reset_at, retry = (int(x) for x in reply[2 + 4 * i : 6 + 4 * i])
            outcomes.append(Outcome(a == 1, rem, reset_at, None if retry < 0 else retry))
        return Decision.combine(plan.cells, now, plan.cost, outcomes)

    async def aclose(self) -> None:
        try:
            loop: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        clients, self.clients = self.clients, {}
        for lp, client in clients.items():
            if lp is loop:
                await client.aclose()
