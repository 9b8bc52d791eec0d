"""Storage keys: the injective encoding of ``core/src/key.rs``.

::

    key       = prefix ":" tag ":" algorithm ":" window_secs ":" tenant dimension
    tag       = "{" 16 hex digits of FNV-1a-64("t" tenant) "}"  |  "{-}"
    tenant    = "t-" | "t" enc(tenant)
    dimension = ":u" enc(user) | ":s" enc(user) enc(server) | ":T" | ":k" enc(tool)
    enc(x)    = len ":" x   (x at most 64 bytes, len in bytes)   |   "#" hex(SHA-256(x))
"""

from __future__ import annotations

import hashlib

MAX_RAW_COMPONENT = 64
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


def enc(x: str) -> str:
    b = x.encode("utf-8")
    if len(b) <= MAX_RAW_COMPONENT:
        return f"{len(b)}:{x}"
    return "#" + hashlib.sha256(b).hexdigest()


def fnv1a64(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h ^= byte
        h = (h * _FNV_PRIME) & _MASK
    return h


def scope(prefix: str, tenant: str | None, key_tag: str, window_secs: int) -> str:
    """Everything up to the dimension part."""
    if tenant is None:
        return f"{prefix}:{{-}}:{key_tag}:{window_secs}:t-"
    tag = fnv1a64(b"t" + tenant.encode("utf-8"))
    return f"{prefix}:{{{tag:016x}}}:{key_tag}:{window_secs}:t{enc(tenant)}"


def user_key(user: str) -> str:
    return ":u" + enc(user)


def user_server_key(user: str, server: str) -> str:
    return ":s" + enc(user) + enc(server)


TENANT_KEY = ":T"


def tool_key(tool: str) -> str:
    return ":k" + enc(tool)
