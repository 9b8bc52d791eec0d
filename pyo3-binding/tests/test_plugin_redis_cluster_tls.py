"""The Redis backend of both engines on a real 3-master Redis Cluster and over TLS: one script
call per request on the slot of the tenant's hash tag, and certificate checks where
``redis_ssl_check_hostname: false`` relaxes only the hostname comparison."""

from __future__ import annotations

import pytest
from cpex.framework import ToolPreInvokePayload

from rw_support import RedisCluster, TestPki, ctx, make_plugin

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def cluster():
    c = RedisCluster()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def pki():
    p = TestPki()
    yield p
    p.cleanup()


@pytest.fixture(params=["rust", "python"])
def engine(request):
    return request.param


def tool(name="search"):
    return ToolPreInvokePayload(name=name, args={})


async def test_cluster_enforces_exactly_on_every_node(cluster, engine):
    cfg = {"by_user": "3/m", "by_tenant": "1000/m", "by_tool": {"search": "1000/m"},
           "backend": "redis", "redis_cluster": True, "redis_url": cluster.url,
           "redis_key_prefix": f"cl-{engine}", "engine": engine, "redis_timeout_ms": 2000,
           "fail_mode": "closed"}
    p = make_plugin(cfg)
    await p.initialize()
    tenants = [f"team-{i}" for i in range(12)]
    try:
        for t in tenants:
            codes = []
            for _ in range(5):
                r = await p.tool_pre_invoke(tool(), ctx(user="u@x", tenant=t))
                codes.append("ok" if r.continue_processing else r.violation.code)
            assert codes == ["ok", "ok", "ok", "RATE_LIMIT", "RATE_LIMIT"], (t, codes)
        # a second instance (another gateway context) sees the same counters
        q = make_plugin(cfg)
        await q.initialize()
        r = await q.tool_pre_invoke(tool(), ctx(user="u@x", tenant=tenants[0]))
        assert r.violation is not None and r.violation.code == "RATE_LIMIT"
        await q.shutdown()
    finally:
        await p.shutdown()
    # The tenants' keys really are spread over the cluster's nodes (routing by hash tag), each
    # request's keys on one node.
    per_node = [len(n.client().keys(f"cl-{engine}:*")) for n in cluster.nodes]
    assert sum(per_node) == len(tenants) * 3, per_node
    assert sum(1 for k in per_node if k) >= 2, per_node


async def test_cluster_down_follows_fail_mode(engine):
    from rw_support import free_port

    seeds = ",".join(f"redis://127.0.0.1:{free_port()}" for _ in range(2))
    p = make_plugin({"by_user": "3/m", "backend": "redis", "redis_cluster": True,
                     "redis_url": seeds, "engine": engine, "redis_timeout_ms": 200,
                     "fail_mode": "closed"})
    await p.initialize()
    try:
        r = await p.tool_pre_invoke(tool(), ctx())
        assert r.violation.code == "BACKEND_UNAVAILABLE"
    finally:
        await p.shutdown()


async def _works(cfg: dict) -> bool:
    """True if a check reached Redis (allowed with headers); False if it was a backend error
    (fail_mode open: allowed without headers)."""
    p = make_plugin(dict(cfg, fail_mode="open", redis_timeout_ms=2000))
    await p.initialize()
    try:
        r = await p.tool_pre_invoke(tool(), ctx())
        assert r.continue_processing
        return r.http_headers is not None and "X-RateLimit-Limit" in r.http_headers
    finally:
        await p.shutdown()


async def test_tls_chain_and_hostname(pki, engine):
    server = pki.server()
    try:
        base = {"by_user": "50/m", "backend": "redis", "engine": engine,
                "redis_key_prefix": f"tls-{engine}"}
        by_name = f"rediss://localhost:{server.port}/0"
        by_ip = f"rediss://127.0.0.1:{server.port}/0"
        with_ca = dict(base, redis_ssl_ca_certs=pki.ca)
        assert await _works(dict(with_ca, redis_url=by_name))
        # the certificate names only "localhost": the hostname check refuses 127.0.0.1 ...
        assert not await _works(dict(with_ca, redis_url=by_ip))
        # ... unless redis_ssl_check_hostname is false,
        assert await _works(dict(with_ca, redis_url=by_ip, redis_ssl_check_hostname=False))
        # which never disables chain verification: without the CA (system roots only) the
        # server's chain is not trusted, hostname check or not.
        assert not await _works(dict(base, redis_url=by_name))
        assert not await _works(dict(base, redis_url=by_ip, redis_ssl_check_hostname=False))
    finally:
        server.stop()


async def test_tls_untrusted_self_signed_certificate(pki, engine):
    rogue = pki.server(rogue=True)
    try:
        cfg = {"by_user": "50/m", "backend": "redis", "engine": engine,
               "redis_key_prefix": f"tlsr-{engine}", "redis_ssl_ca_certs": pki.ca,
               "redis_url": f"rediss://localhost:{rogue.port}/0"}
        # right hostname, wrong issuer
        assert not await _works(cfg)
        assert not await _works(dict(cfg, redis_ssl_check_hostname=False))
    finally:
        rogue.stop()
