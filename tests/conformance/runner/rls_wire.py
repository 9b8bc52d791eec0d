"""The few messages of Envoy's Rate Limit Service v3 the RLS driver sends and reads, in protobuf
wire format (field numbers of envoy/service/ratelimit/v3/rls.proto and
envoy/extensions/common/ratelimit/v3/ratelimit.proto; checked against the `envoy-types` crate the
server is built with). grpcio carries the bytes; no generated code is needed for four messages.
"""

from __future__ import annotations

CODES = {0: "UNKNOWN", 1: "OK", 2: "OVER_LIMIT"}
UNITS = {0: "UNKNOWN", 1: "SECOND", 2: "MINUTE", 3: "HOUR", 4: "DAY", 5: "MONTH", 6: "YEAR", 7: "WEEK"}
METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:  # length-delimited
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _uint(num: int, n: int) -> bytes:
    return _varint(num << 3) + _varint(n)


def encode_request(domain: str, descriptors: list[dict], hits_addend: int | None = None) -> bytes:
    """descriptors: [{"entries": [[key, value], ...] or {key: value}, "hits_addend": n}]"""
    out = _field(1, domain.encode())
    for d in descriptors:
        entries = d["entries"].items() if isinstance(d["entries"], dict) else d["entries"]
        body = b"".join(_field(1, _field(1, str(k).encode()) + _field(2, str(v).encode())) for k, v in entries)
        if "hits_addend" in d:  # google.protobuf.UInt64Value: an explicit 0 is sent
            body += _field(3, _uint(1, d["hits_addend"]) if d["hits_addend"] else b"")
        out += _field(2, body)
    if hits_addend:
        out += _uint(3, hits_addend)
    return out


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _read_varint(buf, i)
        elif wt == 2:
            n, i = _read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        yield num, v


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def decode_response(buf: bytes) -> dict:
    """{"overall": code, "statuses": [{code, limit, remaining, reset}], "headers": [(k, v)]}"""
    out = {"overall": "UNKNOWN", "statuses": [], "headers": []}
    for num, v in _fields(buf):
        if num == 1:
            out["overall"] = CODES.get(v, str(v))
        elif num == 2:
            st = {"code": "UNKNOWN", "limit": None, "remaining": 0, "reset": None}
            for n2, v2 in _fields(v):
                if n2 == 1:
                    st["code"] = CODES.get(v2, str(v2))
                elif n2 == 2:
                    lim = {"requests_per_unit": 0, "unit": "UNKNOWN", "name": ""}
                    for n3, v3 in _fields(v2):
                        if n3 == 1:
                            lim["requests_per_unit"] = v3
                        elif n3 == 2:
                            lim["unit"] = UNITS.get(v3, str(v3))
                        elif n3 == 3:
                            lim["name"] = v3.decode()
                    st["limit"] = f"{lim['requests_per_unit']}/{lim['unit']} {lim['name']}"
                elif n2 == 3:
                    st["remaining"] = v2
                elif n2 == 4:
                    st["reset"] = dict(_fields(v2)).get(1, 0)
            out["statuses"].append(st)
        elif num == 3:
            kv = dict(_fields(v))
            out["headers"].append((kv.get(1, b"").decode(), kv.get(2, b"").decode()))
    return out
