#!/usr/bin/env python3
"""Write the fuzz targets' seed corpora (fuzz/corpus/<target>/) from the repository's example
configurations (deploy/, docs/) and a few hand-written inputs covering every key and format.

    python3 fuzz/seeds.py      (idempotent: file names are content hashes)
"""

import hashlib
import json
import re
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"

CORE_KEYS = """
by_user: "10/s;100/m"
by_tenant: "1000 per hour"
by_user_per_server: "5/15m"
by_tool:
  echo: "2/s"
  Search Tool: "1/d"
limits:
  - name: per_ip
    descriptors: [remote_address]
    rate: "20/s"
  - name: per_path
    descriptors: [path, user]
    rate: "3/w"
    shadow_mode: true
algorithm: gcra
fail_mode: closed
headers: both
memory_max_keys: 1000
shadow_mode: false
"""

INLINE_DOMAINS = """
by_user: "1/y"
algorithm: fixed_window
domains:
  - domain: edge
    descriptors:
      - key: remote_address
        rate_limit: {unit: minute, requests_per_unit: 3, name: per_ip}
      - key: generic_key
        value: slow
        rate_limit: {unit: second, requests_per_unit: 1}
        shadow_mode: true
      - key: header_match
        value: api
        descriptors:
          - key: user
            rate_limit: {unit: hour, requests_per_unit: 2}
"""

DESCRIPTOR_DOCS = [
    """domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit: {unit: second, requests_per_unit: 500}
  - key: database
    value: default
    rate_limit: {unit: second, requests_per_unit: 500}
""",
    """---
domain: a
descriptors:
  - key: k
    value: "v*"
    rate_limit: {unit: day, requests_per_unit: 10, name: wild}
    descriptors:
      - key: sub
        rate_limit: {unlimited: true}
---
domain: b
descriptors:
  - key: generic_key
    rate_limit: {unit: week, requests_per_unit: 4294967295}
\x00k=vx,sub=1
generic_key=z
""",
    "domain: d\ndescriptors:\n  - key: remote_address\n    rate_limit:\n      unit: month\n      requests_per_unit: 7\n"
    "\x00remote_address=1.2.3.4\nremote_address\n",
]

RATES = [
    "60/m", "100/15m", "10 per minute", "5/s;100/m", "1/y", "12/12mo", "52/52w", "+7/ 2 h",
    "4294967295/366d", "1 per 3 seconds", "3/sec; 9/min; 27/hr; 81/day", "1/2y", "0/s", "5/x",
]

MCP = [
    {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "Echo", "arguments": {}}},
    {"jsonrpc": "2.0", "id": "a", "method": "prompts/get", "params": {"name": "summary"}},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 1, "result": {}},
    [{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}},
     {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "SEARCH TOOL"}},
     {"jsonrpc": "2.0", "method": "notifications/x"}, 42],
    # a check service answer (the target reads the bytes that way too)
    {"allowed": False, "limit": 5, "remaining": 0, "reset": 1700000001, "retry_after": 1,
     "headers": [["X-RateLimit-Limit", "5"], ["Retry-After", "1"]], "reason": "rate_limited"},
    {"allowed": True, "limit": 5, "remaining": 4, "headers": []},
]

CHECK = [
    {"user": "alice", "tool": "echo"},
    {"user": "bob", "tenant": "acme", "server": "srv-1", "tool": "Echo", "cost": 3},
    {"user": "c", "descriptors": {"remote_address": "10.0.0.1"}},
    {"tenant": "t", "cost": 0},
    {"user": "x" * 300},
    {"cost": 4294967296},
    {},
]


def pb_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_field(tag, wire, payload):
    key = pb_varint(tag << 3 | wire)
    if wire == 0:
        return key + pb_varint(payload)
    return key + pb_varint(len(payload)) + payload


def pb_str(tag, s):
    return pb_field(tag, 2, s.encode())


def descriptor(entries, limit=None, hits=None, negative=False):
    out = b"".join(pb_field(1, 2, pb_str(1, k) + pb_str(2, v)) for k, v in entries)
    if limit:
        out += pb_field(2, 2, pb_field(1, 0, limit[0]) + pb_field(2, 0, limit[1]))
    if hits is not None:
        out += pb_field(3, 2, pb_field(1, 0, hits) if hits else b"")
    if negative:
        out += pb_field(4, 0, 1)
    return out


def rls(domain, descriptors, hits=0):
    out = pb_str(1, domain) + b"".join(pb_field(2, 2, d) for d in descriptors)
    return out + (pb_field(3, 0, hits) if hits else b"")


RLS = [
    rls("edge", [descriptor([("remote_address", "10.0.0.1")])]),
    rls("edge", [descriptor([("generic_key", "slow")]), descriptor([("header_match", "api"), ("user", "u")])], 2),
    rls("edge", [descriptor([("header_match", "api"), ("path", "/admin/x")], hits=0)]),
    rls("edge", [descriptor([("remote_address", "1.1.1.1")], limit=(10, 2), hits=3)]),
    rls("e", [descriptor([("k", "v")], limit=(4294967295, 6))], 4294967295),
    rls("edge", [descriptor([("remote_address", "x")], negative=True)]),
    rls("nope", [descriptor([("a", "b")])]),
]

# control byte: bits 0-2 algorithm (mod 5), 3 three dimensions, 4 four slots, 5 XOR over slots
# the filter wrote, 6-7 clock step; then the slot bytes
SLOTS = [bytes([c]) for c in (0x20, 0x21, 0x22, 0x23, 0x24, 0x38, 0x39, 0x3A, 0x3B, 0x7C, 0xBC, 0xFA)]
SLOTS += [
    bytes([0x00]) + struct.pack("<Q", 0),
    bytes([0x01]) + struct.pack("<QH", 0, 3) + b"abc" + struct.pack("<QI", 2**63, 16) + struct.pack("<QQ", 5, 2**64 - 1),
    bytes([0x24]) + bytes(8) + struct.pack("<H", 0xFFFF),
]


def write(target, blobs):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    for b in blobs:
        if isinstance(b, str):
            b = b.encode()
        (d / hashlib.sha1(b).hexdigest()[:16]).write_bytes(b)


def yaml_blocks():
    out = []
    for md in sorted((ROOT / "docs").glob("*.md")):
        out += re.findall(r"```yaml\n(.*?)```", md.read_text(), re.S)
    return out


def main():
    configs = [p.read_text() for p in sorted(ROOT.glob("deploy/*/ratewall.yaml"))]
    configs += yaml_blocks() + [CORE_KEYS, INLINE_DOMAINS, "", "allow_empty: true\n", "{}"]
    write("config_yaml", configs)
    try:
        import yaml  # optional: JSON seeds from the YAML ones

        docs = []
        for c in configs:
            try:
                v = yaml.safe_load(c)
            except yaml.YAMLError:
                continue
            if isinstance(v, dict):
                v = {k: v[k] for k in v if k not in ("listen", "grpc_listen", "descriptor_config")}
                docs.append(json.dumps(v, indent=1))
    except ImportError:
        docs = []
    write("config_json", docs + ['{"by_user": "2/s", "by_tool": {"Echo": "5/m"}}', "[]", "{"])
    write("rate", RATES)
    rls_files = [p.read_text() for p in sorted(ROOT.glob("deploy/envoy-rls/ratelimit/*.yaml"))]
    write("descriptors", rls_files + DESCRIPTOR_DOCS)
    write("mcp_body", [json.dumps(m) for m in MCP] + ["not json", "[]", "[" * 200])
    write("check_body", [json.dumps(c) for c in CHECK] + ['{"user": 5}', '{"user": "a", "user": "b"}'])
    write("slot_decode", SLOTS)
    write("rls_request", RLS)


if __name__ == "__main__":
    main()
