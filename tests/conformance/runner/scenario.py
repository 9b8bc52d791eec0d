"""Scenario files: loading (strict: an unknown key is an error naming the file and the key), the
features a scenario needs, and the comparison of what a driver saw with what the file expects.

A scenario is a policy (the core's schema, ``docs/CONFIG.md``), a timed list of steps, and for
each request step the expected decision and header lines. See ``docs/CONFORMANCE.md``.

Time: the runner picks ``t0``, a wall-clock instant that is a multiple of the scenario's
``align`` seconds (so a fixed window starts there), and every step runs at ``t0 + at``. In
expected header lines, ``{t0+N}`` stands for the Unix second ``t0 + N``. Fields that count
seconds (``Retry-After``, ``X-RateLimit-Reset``, the ``t=`` of ``RateLimit``) are compared within
``TIME_TOLERANCE`` seconds for drivers on the wall clock (a request lands a few ms after its
instant, and a ceiling can move by one); drivers on a manual clock run each step exactly at
``t0 + at`` and must match exactly. Everything else is compared byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, Optional

import yaml

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"

TIME_TOLERANCE = 1
TIME_HEADERS = {"retry-after", "x-ratelimit-reset"}
# Every header name the core's renderer can produce (ratewall_core::headers::NAMES).
RATE_LIMIT_HEADERS = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "RateLimit-Policy",
    "RateLimit",
    "Retry-After",
)
PACKAGINGS = ("core", "engine-py", "service-check", "service-authz", "rls", "plugin", "envoy-local", "envoy-remote")

_SCENARIO_KEYS = {"description", "align", "backends", "policy", "steps", "xfail", "packagings"}
_REQUEST_KEYS = {"at", "user", "tenant", "tool", "server", "cost", "batch", "descriptors", "rls", "via", "expect", "repeat", "note"}
_EVENT_KEYS = {"at", "stop_redis", "note"}
_EXPECT_KEYS = {"status", "reason", "headers", "rls", "field"}
_RLS_KEYS = {"domain", "descriptors", "hits_addend"}
_RLS_DESC_KEYS = {"entries", "hits_addend"}
_RLS_EXPECT_KEYS = {"overall", "statuses"}
_RLS_STATUS_KEYS = {"code", "limit", "remaining", "reset"}


class ScenarioError(ValueError):
    pass


@dataclass
class Step:
    """One request (``expect`` set) or one event (``stop_redis``)."""

    at: Optional[float]
    request: dict[str, Any] = dc_field(default_factory=dict)
    expect: Optional[dict[str, Any]] = None
    via: Optional[str] = None
    stop_redis: bool = False


@dataclass
class Scenario:
    name: str
    description: str
    align: int
    backends: tuple[str, ...]
    policy: dict[str, Any]
    steps: list[Step]
    # driver name -> reason: the case is xfail(strict=True) there
    xfail: dict[str, str]
    # packagings the file restricts itself to (None: every one that can express it)
    packagings: Optional[tuple[str, ...]]

    @property
    def requests(self) -> list[Step]:
        return [s for s in self.steps if s.expect is not None]

    @property
    def cross(self) -> bool:
        return any(s.via for s in self.steps)

    def features(self) -> set[str]:
        """What a driver must express to run this scenario."""
        f: set[str] = set()
        p = self.policy
        if p.get("limits"):
            f.add("descriptors")
        if p.get("domains"):
            f.add("rls")
        if any(s.stop_redis for s in self.steps):
            f.add("redis_down")
        for s in self.requests:
            r = s.request
            for key in ("cost", "batch", "descriptors", "rls"):
                if key in r:
                    f.add(key)
            if "field" in (s.expect or {}):
                f.add("refusal")
        return f


def _check_keys(where: str, obj: Any, allowed: set[str]) -> dict:
    if not isinstance(obj, dict):
        raise ScenarioError(f"{where}: expected a mapping, got {obj!r}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ScenarioError(f"{where}: unknown key {unknown[0]!r}; expected one of {sorted(allowed)}")
    return obj


def _header_line(where: str, line: Any) -> tuple[str, str]:
    if not isinstance(line, str) or ": " not in line:
        raise ScenarioError(f"{where}: expected a header line 'Name: value', got {line!r}")
    name, value = line.split(": ", 1)
    if name not in RATE_LIMIT_HEADERS:
        raise ScenarioError(f"{where}: {name!r} is not a header the core renders ({', '.join(RATE_LIMIT_HEADERS)})")
    return name, value


def load(path: Path) -> Scenario:
    name = path.stem
    doc = yaml.safe_load(path.read_text())
    _check_keys(name, doc, _SCENARIO_KEYS)
    for key in ("description", "policy", "steps"):
        if key not in doc:
            raise ScenarioError(f"{name}: missing {key!r}")
    align = doc.get("align", 1)
    if not isinstance(align, int) or align < 1:
        raise ScenarioError(f"{name}: align: expected whole seconds >= 1, got {align!r}")
    backends = tuple(doc.get("backends", ["memory", "redis"]))
    if not backends or not set(backends) <= {"memory", "redis"}:
        raise ScenarioError(f"{name}: backends: expected a non-empty subset of [memory, redis], got {backends!r}")
    packagings = doc.get("packagings")
    if packagings is not None:
        packagings = tuple(packagings)
        bad = set(packagings) - set(PACKAGINGS)
        if bad:
            raise ScenarioError(f"{name}: packagings: unknown {sorted(bad)}; expected some of {PACKAGINGS}")
    steps = []
    for i, raw in enumerate(doc["steps"]):
        where = f"{name}: steps[{i}]"
        if isinstance(raw, dict) and "stop_redis" in raw:
            _check_keys(where, raw, _EVENT_KEYS)
            steps.append(Step(at=float(raw["at"]), stop_redis=bool(raw["stop_redis"])))
            continue
        _check_keys(where, raw, _REQUEST_KEYS)
        if "expect" not in raw:
            raise ScenarioError(f"{where}: a request needs 'expect'")
        exp = dict(_check_keys(f"{where}.expect", raw["expect"], _EXPECT_KEYS))
        if "status" not in exp:
            raise ScenarioError(f"{where}.expect: missing 'status'")
        exp["headers"] = [_header_line(f"{where}.expect.headers[{j}]", h) for j, h in enumerate(exp.get("headers", []))]
        if "rls" in exp:
            rls = _check_keys(f"{where}.expect.rls", exp["rls"], _RLS_EXPECT_KEYS)
            for j, st in enumerate(rls.get("statuses", [])):
                _check_keys(f"{where}.expect.rls.statuses[{j}]", st, _RLS_STATUS_KEYS)
        req = {k: v for k, v in raw.items() if k not in ("at", "expect", "via", "repeat", "note")}
        if "rls" in req:
            _check_keys(f"{where}.rls", req["rls"], _RLS_KEYS)
            for j, d in enumerate(req["rls"]["descriptors"]):
                _check_keys(f"{where}.rls.descriptors[{j}]", d, _RLS_DESC_KEYS)
        at = raw.get("at")
        for k in range(int(raw.get("repeat", 1))):
            steps.append(Step(at=None if (at is None or k) else float(at), request=req, expect=exp, via=raw.get("via")))
    xfail = dict(doc.get("xfail", {}) or {})
    return Scenario(name, doc["description"], align, backends, doc["policy"], steps, xfail, packagings)


def load_all() -> list[Scenario]:
    return [load(p) for p in sorted(SCENARIO_DIR.glob("*.yaml"))]


# ---------------------------------------------------------------------------------------------
# comparison


@dataclass
class Observation:
    """What a driver saw for one request."""

    status: int
    headers: Optional[list[tuple[str, str]]]
    reason: Optional[str] = None
    field: Optional[str] = None
    rls: Optional[dict] = None
    # free text for failure messages (a body, a result repr)
    raw: Any = None
    # the driver's own consistency failures (e.g. HTTP headers differing from the JSON body)
    problems: list[str] = dc_field(default_factory=list)


_T0 = re.compile(r"\{t0\+(\d+)\}")


def expand(value: str, t0: int) -> str:
    return _T0.sub(lambda m: str(t0 + int(m.group(1))), value)


def _split_ratelimit(value: str) -> tuple[str, Optional[int]]:
    m = re.fullmatch(r'(.*;t=)(\d+)', value)
    if not m:
        return value, None
    return m.group(1), int(m.group(2))


def header_diffs(expected: list[tuple[str, str]], seen: list[tuple[str, str]], t0: int, tolerance: int,
                 case_insensitive_names: bool) -> list[str]:
    """Differences between expected and seen header lines (names, order, values)."""
    def nm(n: str) -> str:
        return n.lower() if case_insensitive_names else n

    exp = [(n, expand(v, t0)) for n, v in expected]
    out = []
    if [nm(n) for n, _ in exp] != [nm(n) for n, _ in seen]:
        return [f"header names/order: expected {[n for n, _ in exp]}, saw {[n for n, _ in seen]}"]
    for (n, ev), (_, sv) in zip(exp, seen):
        low = n.lower()
        if low in TIME_HEADERS:
            try:
                ok = abs(int(ev) - int(sv)) <= tolerance
            except ValueError:
                ok = False
        elif low == "ratelimit":
            (ep, et), (sp, st) = _split_ratelimit(ev), _split_ratelimit(sv)
            ok = ep == sp and et is not None and st is not None and abs(et - st) <= tolerance
        else:
            ok = ev == sv
        if not ok:
            out.append(f"{n}: expected {ev!r}, saw {sv!r}")
    return out


def diffs(step: Step, obs: Observation, t0: int, tolerance: int, case_insensitive_names: bool) -> list[str]:
    exp = step.expect or {}
    out = list(obs.problems)
    if obs.status != exp["status"]:
        out.append(f"status: expected {exp['status']}, saw {obs.status}")
    if "reason" in exp and obs.reason is not None and obs.reason != exp["reason"]:
        out.append(f"reason: expected {exp['reason']!r}, saw {obs.reason!r}")
    if "field" in exp and obs.field != exp["field"]:
        out.append(f"refused field: expected {exp['field']!r}, saw {obs.field!r}")
    if "rls" in exp:
        out += rls_diffs(exp["rls"], obs.rls or {}, tolerance)
    if obs.headers is not None:  # None: the packaging does not expose them (see the driver)
        out += header_diffs(exp.get("headers", []), obs.headers, t0, tolerance, case_insensitive_names)
    return out


def rls_diffs(exp: dict, seen: dict, tolerance: int) -> list[str]:
    out = []
    if "overall" in exp and seen.get("overall") != exp["overall"]:
        out.append(f"rls overall: expected {exp['overall']}, saw {seen.get('overall')}")
    if "statuses" in exp:
        ss = seen.get("statuses", [])
        if len(ss) != len(exp["statuses"]):
            return out + [f"rls statuses: expected {len(exp['statuses'])}, saw {ss}"]
        for i, (e, s) in enumerate(zip(exp["statuses"], ss)):
            for k in ("code", "limit", "remaining"):
                if k in e and e[k] != s.get(k):
                    out.append(f"rls statuses[{i}].{k}: expected {e[k]!r}, saw {s.get(k)!r}")
            if "reset" in e:
                er, sr = e["reset"], s.get("reset")
                if (er is None) != (sr is None) or (er is not None and abs(er - sr) > tolerance):
                    out.append(f"rls statuses[{i}].reset: expected {er!r}, saw {sr!r}")
    return out
