"""Envoy 1.40 configurations for the load tests: a loopback listener, the filters under test, and
a `direct_response` 200 route (no upstream application in the measurement)."""

from __future__ import annotations

import json

from .procs import WASM


def wasm_filter(plugin_config: dict, vm_id: str = "ratewall") -> dict:
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "ratewall",
                "root_id": "ratewall",
                "allow_on_headers_stop_iteration": True,
                "failure_policy": "FAIL_CLOSED",
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": json.dumps(plugin_config)},
                "vm_config": {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": str(WASM)}}},
            },
        },
    }


def native_ratelimit_filter(domain: str, cluster: str = "ratewall_rls", timeout: str = "0.2s",
                            fail_closed: bool = True) -> dict:
    """Envoy's native `envoy.filters.http.ratelimit` asking a gRPC Rate Limit Service (RLS) —
    ratewall-server's `--grpc-listen` once it exists. The descriptors come from the route's
    `rate_limits` (see `rls_route_rate_limits`)."""
    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": domain,
            "timeout": timeout,
            "failure_mode_deny": fail_closed,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": {
                "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
                "transport_api_version": "V3",
            },
        },
    }


def rls_route_rate_limits() -> list:
    """Route actions that make the RLS descriptors (user), (tenant) from the identity headers."""
    return [
        {"actions": [{"request_headers": {"header_name": "x-user-id", "descriptor_key": "user"}}]},
        {"actions": [{"request_headers": {"header_name": "x-tenant-id", "descriptor_key": "tenant"}}]},
    ]


def cluster(name: str, port: int, http2: bool = False) -> dict:
    c = {
        "name": name,
        "connect_timeout": "0.25s",
        "type": "STATIC",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }
    if http2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return c


def config(filters: list, clusters: list = (), route_rate_limits: list | None = None) -> dict:
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}
    vhost = {"name": "all", "domains": ["*"], "routes": [route]}
    if route_rate_limits:
        vhost["rate_limits"] = route_rate_limits
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "connection_balance_config": {"exact_balance": {}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "route_config": {"name": "local", "virtual_hosts": [vhost]},
                        "http_filters": list(filters) + [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }],
                    },
                }]}],
            }],
            "clusters": list(clusters),
        },
    }
