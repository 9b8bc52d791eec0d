"""Correctness verdicts from what the clients saw.

Each request is known only by the interval `[sent, answered]` in which the limiter decided it
(client clock; every process of a rig runs on this host's clock, and the interval is widened by
`EPS` for the memory stores' monotonic, wall-anchored clocks). The checks below only report a
violation that holds for *every* placement of the decisions inside their intervals, so they
never fail a correct limiter; the shorter the intervals against the window, the sharper they are.

Per cell (one counter: a dimension of the policy and its identity), with limit `L` per window
`W` and cost 1:

| algorithm | over-admission (never allowed) | denial must be explained by (else under-admission) |
|---|---|---|
| fixed_window | more than `L` admitted inside one epoch-aligned window | `L` admitted in the same window before it |
| sliding_window | more than `L` admitted inside any span shorter than `W` | `L` admitted in `(t - W, t]` |
| sliding_window_counter | more than `L` admitted inside one aligned window | `L` admitted in this and the previous aligned window (the estimate weighs the previous one by the part of it still in the last `W`: it may deny with fewer than `L` in the true last `W`; that much under-admission is the algorithm's) |
| token_bucket | more than `L + (b - a)·L/W` admitted inside any `[a, b]` | some `a` with more than `L - 1 + (t - a)·L/W` admitted in `[a, t)` (the bucket is empty) |
| gcra | more than `L + (b - a)/T` admitted inside any `[a, b]`, `T = ceil(W/L)` | some `a` with more than `L - 1 + (t - a)/T` admitted in `[a, t)` |

A request with several cells is admitted only if every cell admits (all or nothing), so each
cell's admitted set is checked on its own, and each denial must be explained by at least one of
its cells. Token bucket and GCRA admit exactly `L` in a burst and then one per `W/L` (`T`).

Counter domains (where the counters live) are judged by mode:

* `exact`: one shared set of counters (Redis, one ratewall-server, one Envoy's shared data);
* `per_process:N`: N processes with their own memory counters behind one address (gateway
  workers on the memory backend): over-admission bounds are N times the limit; a denial still
  needs `L` admitted (by the process that denied);
* `unlimited`: no rate-limit plugin: every request must be admitted;
* `unjudged`: counted and shown, not judged (the peer plugin).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass, field

from .classify import Outcome

EPS = 0.002  # seconds added on both sides of every interval
US = 1_000_000


@dataclass(frozen=True)
class Limit:
    dimension: str  # user | tenant | tool
    count: int
    window: int  # seconds

    def text(self) -> str:
        return f"{self.count}/{self.window}s"


@dataclass
class Policy:
    """The limits the load test configures (the subset of ratewall's schema every packaging and
    the peer share: `by_user`, `by_tenant`, `by_tool`; one rate each)."""

    algorithm: str = "fixed_window"
    by_user: Limit | None = None
    by_tenant: Limit | None = None
    by_tool: dict = field(default_factory=dict)  # tool name -> Limit

    def cells(self, user: str | None, tenant: str | None, tool: str | None) -> list[tuple[tuple, Limit]]:
        """The cells a request consumes: ((dimension, tenant, identity), limit). As in ratewall
        and the peer, a request's tenant scopes its user counter; no tenant, no tenant cell."""
        out = []
        if self.by_user is not None:
            out.append((("user", tenant, user or "anonymous"), self.by_user))
        if self.by_tenant is not None and tenant:
            out.append((("tenant", tenant, tenant), self.by_tenant))
        if tool is not None and tool in self.by_tool:
            out.append((("tool", tenant, tool), self.by_tool[tool]))
        return out

    def config(self) -> dict:
        """The policy as a ratewall/peer config block."""
        c = {"algorithm": self.algorithm}
        for name in ("by_user", "by_tenant"):
            lim = getattr(self, name)
            if lim is not None:
                c[name] = rate_text(lim)
        if self.by_tool:
            c["by_tool"] = {k: rate_text(v) for k, v in self.by_tool.items()}
        return c


def rate_text(lim: Limit) -> str:
    for unit, secs in (("h", 3600), ("m", 60), ("s", 1)):
        if lim.window == secs:
            return f"{lim.count}/{unit}"
    return f"{lim.count}/{lim.window}s"


@dataclass
class Rec:
    """One request as the client saw it."""

    target: str
    domain: str
    user: str | None
    tenant: str | None
    tool: str | None
    t0: float
    t1: float
    outcome: Outcome
    detail: str = ""
    round: int = -1


@dataclass
class Fault:
    """A backend outage of `domain` (Redis paused) and the fail mode configured there."""

    domain: str
    start: float
    end: float
    fail_mode: str  # open | closed
    grace: float = 1.5  # after `end`, seconds the store may need to reconnect
    settle: float = 0.3  # after `start`, seconds before every answer must follow fail_mode
    # True when a fail-open admission can be told from a counted one (the service's answer has
    # no limit then); the gateway drops the plugin's headers on success, so it cannot
    distinguishable: bool = True


@dataclass
class DomainVerdict:
    domain: str
    mode: str
    algorithm: str
    requests: int = 0
    outcomes: dict = field(default_factory=dict)
    cells: int = 0
    windows: int = 0
    windows_over: int = 0
    windows_at_limit: int = 0
    violations: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


MAX_REPORTED = 20


def _add(v: DomainVerdict, msg: str) -> None:
    if len(v.violations) < MAX_REPORTED:
        v.violations.append(msg)
    elif len(v.violations) == MAX_REPORTED:
        v.violations.append("... (more violations not listed)")


# ------------------------------------------------------------------------------------------------
# per-cell checks; A = admitted intervals (s, e) in µs sorted by s
# ------------------------------------------------------------------------------------------------


def _aligned_counts(A, w_us):
    """Admitted intervals that lie entirely inside each aligned window."""
    definite = defaultdict(int)
    for s, e in A:
        if s // w_us == e // w_us:
            definite[s // w_us] += 1
    return definite


def _possible_in_window(A, w_us, k, before):
    """Admitted intervals that may lie in aligned window k and before instant `before`."""
    lo, hi = k * w_us, (k + 1) * w_us
    return sum(1 for s, e in A if s < min(before, hi) and e >= lo)


def _over_fixed(A, lim, scale):
    """Can every admitted request be placed in an aligned window its interval touches, with at
    most `cap` per window? Earliest-deadline-first over the windows is optimal for this."""
    import heapq

    w = lim.window * US
    cap = scale * lim.count
    spans = sorted((s // w, e // w) for s, e in A)
    out = []
    heap = []  # last windows of the requests that may go to the current window
    i = 0
    k = spans[0][0] if spans else 0
    while i < len(spans) or heap:
        if not heap and i < len(spans):
            k = max(k, spans[i][0])
        while i < len(spans) and spans[i][0] <= k:
            heapq.heappush(heap, spans[i][1])
            i += 1
        placed = 0
        while heap and placed < cap:
            heapq.heappop(heap)
            placed += 1
        late = 0
        while heap and heap[0] <= k:
            heapq.heappop(heap)
            late += 1
        if late:
            out.append(f"{cap + late} admitted that can only lie in window [{k * lim.window}, "
                       f"{(k + 1) * lim.window}) s (limit {cap})")
        k += 1
    return out


def _explains_fixed(A, lim, s, e):
    w = lim.window * US
    return any(_possible_in_window(A, w, k, e) >= lim.count for k in range(s // w, e // w + 1))


def _explains_swc(A, lim, s, e):
    w = lim.window * US
    for k in range(s // w, e // w + 1):
        if _possible_in_window(A, w, k - 1, e) + _possible_in_window(A, w, k, e) >= lim.count:
            return True
    return False


def _over_sliding(A, lim, scale):
    w = lim.window * US
    cap = scale * lim.count
    out = []
    for i, (si, _) in enumerate(A):
        n = 0
        for j in range(i, len(A)):
            sj, ej = A[j]
            if sj >= si + w:
                break
            if ej < si + w:
                n += 1
        if n > cap:
            out.append(f"{n} admitted inside a span shorter than {lim.window} s from t={si / US:.3f} (limit {cap})")
            break
    return out


def _explains_sliding(A, lim, s, e):
    w = lim.window * US
    return sum(1 for sa, ea in A if ea > s - w and sa < e) >= lim.count


def _rate(lim: Limit, algorithm: str) -> float:
    """Refill per µs of token bucket (L/W) and GCRA (1/T, T = ceil(W/L) µs)."""
    w = lim.window * US
    if algorithm == "gcra":
        return 1.0 / math.ceil(w / lim.count)
    return lim.count / w


def _over_bucket(A, lim, scale, algorithm):
    rho = _rate(lim, algorithm) * scale
    burst = scale * lim.count
    horizon = 2 * lim.window * US
    out = []
    for i, (a, _) in enumerate(A):
        ends = []
        for j in range(i, len(A)):
            sj, ej = A[j]
            if sj > a + horizon:
                break
            ends.append(ej)
        ends.sort()
        for n, b in enumerate(ends, start=1):
            if n > burst + rho * (b - a) + 1e-9:
                out.append(f"{n} admitted inside [{a / US:.3f}, {b / US:.3f}] s "
                           f"(at most {burst + rho * (b - a):.2f})")
                return out
    return out


def _explains_bucket(A_by_end, lim, s, e, algorithm):
    """Could the bucket be empty at some d in [s, e]? It is iff some a <= d has
    A[a, d) > L - 1 + rho (d - a). The count is at most P(a) = #{x: e_x >= a, s_x < e} and the
    bound at least L - 1 + rho max(0, s - a); P only grows at the e_x, so a = s and a = e_x < s
    are the candidates. `A_by_end` = (ends sorted, intervals sorted by end)."""
    rho = _rate(lim, algorithm)
    ends, items = A_by_end
    k = bisect.bisect_left(ends, s)  # items[:k] end before s
    p = sum(1 for sx, _ in items[k:] if sx < e)
    if p > lim.count - 1:
        return True
    for i in range(k - 1, -1, -1):
        p += 1  # s_x <= e_x < s <= e
        need = lim.count - 1 + rho * (s - items[i][1])
        if p > need + 1e-9:
            return True
        if need >= p + i:  # even all i earlier admissions cannot catch up with the refill
            return False
    return False


def _over_swc(A, lim, scale):
    """Each admission in window k at elapsed e needs p (W - e) + (c + 1) W <= L W, p = admitted in
    window k-1, c = admitted before it in k. Flag an admission for which this fails even with
    the fewest admissions that must be counted (definitely in k-1; definitely in k and ended
    before it was sent) and the latest elapsed time its interval allows."""
    w = lim.window * US
    cap = scale * lim.count
    definite = defaultdict(list)
    for s, e in A:
        if s // w == e // w:
            definite[s // w].append(e)
    for k in definite:
        definite[k].sort()
    for s, e in A:
        bad = True
        for k in range(s // w, e // w + 1):
            p = len(definite.get(k - 1, ()))
            c = bisect.bisect_left(definite.get(k, []), s)
            el = min(e, (k + 1) * w - 1) - k * w
            if p * (w - el) + (c + 1) * w <= cap * w:
                bad = False
                break
        if bad:
            return [f"an admission at t={s / US:.3f} s exceeds the sliding-window estimate "
                    f"(previous window {len(definite.get(s // w - 1, ()))}, this one "
                    f"{bisect.bisect_left(definite.get(s // w, []), s)} before it, limit {cap})"]
    return []


def check_cell_over(A, lim, algorithm, scale=1):
    if algorithm == "fixed_window":
        return _over_fixed(A, lim, scale)
    if algorithm == "sliding_window_counter":
        return _over_fixed(A, lim, scale) or _over_swc(A, lim, scale)
    if algorithm == "sliding_window":
        return _over_sliding(A, lim, scale)
    return _over_bucket(A, lim, scale, algorithm)


def explains(A, A_by_end, lim, algorithm, s, e) -> bool:
    if algorithm == "fixed_window":
        return _explains_fixed(A, lim, s, e)
    if algorithm == "sliding_window_counter":
        return _explains_swc(A, lim, s, e)
    if algorithm == "sliding_window":
        return _explains_sliding(A, lim, s, e)
    return _explains_bucket(A_by_end, lim, s, e, algorithm)


# ------------------------------------------------------------------------------------------------
# domains
# ------------------------------------------------------------------------------------------------


def _in_fault(r: Rec, faults: list[Fault]) -> Fault | None:
    for f in faults:
        if r.t1 >= f.start and r.t0 <= f.end + f.grace:
            return f
    return None


def judge_domain(domain: str, recs: list[Rec], policy: Policy, mode: str, faults: list[Fault] = (),
                 eps: float = EPS, expect_denials: bool = False) -> DomainVerdict:
    """`eps`: seconds by which the limiter's clock may differ from the client's (2 ms for
    Redis `TIME` and Envoy on this host; more for a memory store, whose clock is monotonic and
    anchored to the wall clock once: the wall clock's later corrections separate them)."""
    v = DomainVerdict(domain, mode, policy.algorithm, requests=len(recs))

    def _iv(r: Rec) -> tuple[int, int]:
        return int((r.t0 - eps) * US), int(math.ceil((r.t1 + eps) * US))

    counts = defaultdict(int)
    for r in recs:
        counts[r.outcome.value] += 1
    v.outcomes = dict(counts)
    faults = [f for f in faults if f.domain == domain]

    # 1. outcomes that are never right
    for r in recs:
        f = _in_fault(r, faults)
        if r.outcome.is_infrastructure_error:
            _add(v, f"{r.target}: {r.outcome.value} at t={r.t0:.3f} ({r.detail})")
        elif r.outcome is Outcome.BACKEND_UNAVAILABLE:
            if f is None or f.fail_mode != "closed":
                _add(v, f"{r.target}: backend_unavailable outside a fail-closed outage at t={r.t0:.3f}")
        elif r.outcome is Outcome.ALLOWED and r.detail == "fail_open":
            if f is None or f.fail_mode != "open":
                _add(v, f"{r.target}: a fail-open admission outside a fail-open outage at t={r.t0:.3f}")
    for f in faults:
        inside = [r for r in recs if r.t0 >= f.start + f.settle and r.t1 <= f.end]
        want = Outcome.BACKEND_UNAVAILABLE if f.fail_mode == "closed" else Outcome.ALLOWED
        seen = sum(1 for r in inside if r.outcome is want)
        wrong = [r for r in inside if r.outcome not in (want, Outcome.RATE_LIMITED)]
        v.notes.append(f"outage {f.start:.3f}-{f.end:.3f} ({f.end - f.start:.1f} s, fail_mode {f.fail_mode}): "
                       f"{len(inside)} calls answered inside it, {seen} {want.value}")
        if not inside:
            _add(v, f"no request completed inside the outage [{f.start:.3f}, {f.end:.3f}]: the fault was not exercised")
        elif seen == 0:
            _add(v, f"fail_mode {f.fail_mode}: no {want.value} answer during the outage")
        for r in wrong[:5]:
            _add(v, f"during the outage (fail_mode {f.fail_mode}): {r.outcome.value} at t={r.t0:.3f}")

    if mode == "unjudged":
        v.notes.append("not judged (counts only)")
        if expect_denials and recs and not any(r.outcome is Outcome.RATE_LIMITED for r in recs):
            v.notes.append("no call was rate-limited")
        return v
    if mode == "unlimited":
        for r in recs:
            if r.outcome is Outcome.RATE_LIMITED:
                _add(v, f"{r.target}: rate-limited with no rate-limit plugin at t={r.t0:.3f}")
        return v
    if expect_denials and recs and not any(r.outcome is Outcome.RATE_LIMITED for r in recs):
        # every scenario drives one identity far above its limit
        _add(v, "no call was rate-limited: the limiter is not in the path (did the plugin load?)")
    scale = 1
    if mode.startswith("per_process:"):
        scale = int(mode.split(":", 1)[1])

    # 2. per-cell admitted sets. Fail-open admissions are not in the counters. Where they cannot
    # be told apart (the gateway), every admission of a fail-open outage is left out, and the
    # denials that such admissions could explain (up to one window after it) are not judged.
    open_faults = [f for f in faults if f.fail_mode == "open" and not f.distinguishable]
    horizon = max((lim.window for _, lim in policy.cells("u", "t", None)), default=0) + \
        max((lim.window for lim in policy.by_tool.values()), default=0)
    blind = [Fault(f.domain, f.start, f.end, f.fail_mode, f.grace + horizon) for f in open_faults]
    per_cell = defaultdict(list)
    limits = {}
    for r in recs:
        if r.outcome is not Outcome.ALLOWED or r.detail == "fail_open":
            continue
        if _in_fault(r, open_faults):
            continue
        for key, lim in policy.cells(r.user, r.tenant, r.tool):
            per_cell[key].append(_iv(r))
            limits[key] = lim
    for key in per_cell:
        per_cell[key].sort()
    v.cells = len(per_cell)
    for key, A in per_cell.items():
        for msg in check_cell_over(A, limits[key], policy.algorithm, scale):
            _add(v, f"over-admission on {key[0]} {key[2]!r}: {msg}")

    # 3. every denial is explained by one of its cells. A call that timed out at the store
    # during an outage (answered by fail_mode) may still be executed by Redis when it resumes:
    # it may have consumed, at any instant up to the end of the outage. Such calls can explain
    # a denial (never an over-admission).
    possible = {k: list(A) for k, A in per_cell.items()}
    for r in recs:
        f = _in_fault(r, faults)
        if f is None or not (r.outcome is Outcome.BACKEND_UNAVAILABLE or
                             (r.outcome is Outcome.ALLOWED and (r.detail == "fail_open" or not f.distinguishable))):
            continue
        s0, _ = _iv(r)
        for key, lim in policy.cells(r.user, r.tenant, r.tool):
            possible.setdefault(key, []).append((s0, int((f.end + f.grace) * US)))
    for key in possible:
        possible[key].sort()
    by_end = {}
    for key, A in possible.items():
        srt = sorted(A, key=lambda x: x[1])
        by_end[key] = ([x[1] for x in srt], srt)
    for r in recs:
        if r.outcome is not Outcome.RATE_LIMITED or _in_fault(r, blind):
            continue
        s, e = _iv(r)
        cells = policy.cells(r.user, r.tenant, r.tool)
        if not any(explains(possible.get(k, []), by_end.get(k, ([], [])), lim, policy.algorithm, s, e)
                   for k, lim in cells):
            _add(v, f"under-admission: {r.target} denied user {r.user!r} at t={r.t0:.3f}-{r.t1:.3f} "
                    f"with no cell at its limit")

    # 4. exactness figures for aligned windows (fixed window): windows whose offered load was
    # above the limit, and how many of them admitted exactly the limit
    if policy.algorithm == "fixed_window":
        offered = defaultdict(int)
        cell_limit = {}
        for r in recs:
            if r.outcome not in (Outcome.ALLOWED, Outcome.RATE_LIMITED) or r.detail == "fail_open" \
                    or _in_fault(r, faults):
                continue
            s, e = _iv(r)
            for key, lim in policy.cells(r.user, r.tenant, r.tool):
                w = lim.window * US
                if s // w == e // w:
                    offered[(key, s // w)] += 1
                    cell_limit[key] = lim
        for (key, k), n in offered.items():
            lim = cell_limit[key]
            v.windows += 1
            if n > lim.count:
                v.windows_over += 1
                w = lim.window * US
                cell = per_cell.get(key, [])
                definite = sum(1 for a, b in cell if a // w == k == b // w)
                touching = sum(1 for a, b in cell if a // w <= k <= b // w)
                if scale == 1 and definite <= lim.count <= touching:
                    v.windows_at_limit += 1
                elif scale > 1 and definite <= scale * lim.count and touching >= lim.count:
                    v.windows_at_limit += 1
    return v


@dataclass
class RunVerdict:
    domains: list
    infrastructure_errors: int

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.domains)


def judge(recs: list[Rec], policy_of: dict, mode_of: dict, faults: list[Fault] = (), eps_of: dict | None = None,
          expect_denials: bool = True) -> RunVerdict:
    """Every domain of a run; `expect_denials`: the run drove an identity above its limit, so a
    limiter that never denied is not in the path."""
    by_domain = defaultdict(list)
    for r in recs:
        by_domain[r.domain].append(r)
    out = []
    for domain in sorted(set(mode_of) | set(by_domain)):
        out.append(judge_domain(domain, by_domain.get(domain, []), policy_of[domain], mode_of.get(domain, "exact"),
                                faults, (eps_of or {}).get(domain, EPS), expect_denials))
    infra = sum(1 for r in recs if r.outcome.is_infrastructure_error)
    return RunVerdict(out, infra)
