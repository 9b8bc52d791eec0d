"""The five algorithms as pure state transitions (``core/src/algorithm/*.rs``).

Each algorithm has ``peek(state, now, cost, count, window_us) -> Outcome`` (no mutation),
``commit(state, now, cost, count, window_us) -> new state`` and ``expires_at(state, count,
window_us)``. ``peek`` is defined for cost 0 (check without consuming: the current state); stores
never commit a cost of 0. Time is integer microseconds; states are small tuples (``None`` = fresh). The
arithmetic is the Rust code's, on Python integers (no overflow, so the results are identical for
every limit the configuration accepts).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import NamedTuple, Optional


class Outcome(NamedTuple):
    allowed: bool
    remaining: int
    reset_at: int
    retry_at: Optional[int]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --- fixed window: state (window index, count) -------------------------------------------------


def fw_current(s, now, w):
    i = now // w
    if s is not None and s[0] == i:
        return i, s[1]
    return i, 0


def fw_peek(s, now, cost, l, w):
    i, used = fw_current(s, now, w)
    end = (i + 1) * w
    if used + cost <= l:
        return Outcome(True, l - used - cost, end, None)
    return Outcome(False, max(l - used, 0), end, end if cost <= l else None)


def fw_commit(s, now, cost, l, w):
    i, used = fw_current(s, now, w)
    return (i, used + cost)


def fw_expires(s, l, w):
    return (s[0] + 1) * w


# --- sliding window (log): state = sorted list of admission instants ---------------------------


def _first_live(log, now, w):
    # first index with t + w > now, i.e. t > now - w
    return bisect_right(log, now - w)


def sw_peek(s, now, cost, l, w):
    log = s or []
    start = _first_live(log, now, w)
    n = len(log) - start
    newest = log[-1] if log else None
    # An expired log is a fresh one: its reset is never in the past (as the core's sliding_window).
    log_reset = now if newest is None else max(newest + w, now)
    if n + cost <= l:
        if cost == 0:  # nothing is added: the log's own reset
            return Outcome(True, l - n, log_reset, None)
        stamp = now if newest is None else max(newest, now)
        return Outcome(True, l - n - cost, stamp + w, None)
    retry_at = None
    if cost <= l:
        k = n + cost - l
        idx = start + k - 1
        if idx < len(log):
            retry_at = log[idx] + w
    return Outcome(False, max(l - n, 0), log_reset, retry_at)


def sw_commit(s, now, cost, l, w):
    # In place (the store replaces the state it passed in): copying the log, or deleting its
    # expired head on every call, is O(log length) per request, i.e. O(L). Expired entries are
    # dropped once they are at least half of the log (amortised O(1)); until then they sit in
    # front of the live ones, where _first_live skips them, so no decision changes and the log
    # holds at most 2 L + cost entries.
    log = [] if s is None else s
    start = _first_live(log, now, w)
    if start and 2 * start >= len(log):
        del log[:start]
    stamp = max(log[-1], now) if log else now
    if cost == 1:
        log.append(stamp)
    else:
        log.extend([stamp] * cost)
    return log


def sw_expires(s, l, w):
    return s[-1] + w if s else 0


# --- sliding window counter: state (window index, prev, curr) ----------------------------------


def _swc_view(s, now, w):
    i = now // w
    e = now - i * w
    if s is None:
        return i, 0, 0, e
    if s[0] == i:
        return i, s[1], s[2], e
    if s[0] + 1 == i:
        return i, s[2], 0, e
    return i, 0, 0, e


def _swc_reset(i, p, k, w, now):
    if k > 0:
        return (i + 2) * w
    if p > 0:
        return (i + 1) * w
    return now


def swc_peek(s, now, cost, l, w):
    i, p, k, e = _swc_view(s, now, w)
    weighted_prev = p * (w - e)
    budget = l * w
    if weighted_prev + (k + cost) * w <= budget:
        return Outcome(
            True,
            (budget - weighted_prev - (k + cost) * w) // w,
            _swc_reset(i, p, k + cost, w, now),
            None,
        )
    remaining = max(budget - (weighted_prev + k * w), 0) // w
    if cost > l:
        retry_at = None
    elif k + cost <= l:
        e1 = w - min((l - k - cost) * w // p, w)
        retry_at = i * w + e1
    else:
        e2 = w - min((l - cost) * w // k, w)
        retry_at = (i + 1) * w + e2
    return Outcome(False, remaining, _swc_reset(i, p, k, w, now), retry_at)


def swc_commit(s, now, cost, l, w):
    i, p, k, _ = _swc_view(s, now, w)
    return (i, p, k + cost)


def swc_expires(s, l, w):
    return (s[0] + 2) * w


# --- token bucket: state (tokens, last, rem); fresh = full ------------------------------------


def _tb_refill(s, now, l, w):
    if s is None:
        return l, 0
    tokens, last, rem = s
    d = min(max(now - last, 0), w)
    acc = d * l + rem
    tokens = tokens + acc // w
    if tokens >= l:
        return l, 0
    return tokens, acc % w


def _tb_time_for(need, rem, l, w):
    return _ceil_div(max(need * w - rem, 0), l)


def tb_peek(s, now, cost, l, w):
    tokens, rem = _tb_refill(s, now, l, w)
    if tokens >= cost:
        left = tokens - cost
        rem_after = 0 if left >= l else rem
        return Outcome(True, left, now + _tb_time_for(l - left, rem_after, l, w), None)
    return Outcome(
        False,
        tokens,
        now + _tb_time_for(l - tokens, rem, l, w),
        now + _tb_time_for(cost - tokens, rem, l, w) if cost <= l else None,
    )


def tb_commit(s, now, cost, l, w):
    tokens, rem = _tb_refill(s, now, l, w)
    last = now if s is None else max(now, s[1])
    return (tokens - min(cost, tokens), last, rem)


def tb_expires(s, l, w):
    tokens, last, rem = s
    return last + _tb_time_for(l - min(tokens, l), rem, l, w)


# --- GCRA: state = theoretical arrival time ----------------------------------------------------


def _gcra_params(l, w):
    t = _ceil_div(w, l)
    return t, t * l


def gcra_peek(s, now, cost, l, w):
    t, tau = _gcra_params(l, w)
    tat0 = now if s is None else max(s, now)
    new_tat = tat0 + cost * t
    if new_tat <= now + tau:
        return Outcome(True, (now + tau - new_tat) // t, new_tat, None)
    return Outcome(
        False,
        max(now + tau - tat0, 0) // t,
        tat0,
        new_tat - tau if cost <= l else None,
    )


def gcra_commit(s, now, cost, l, w):
    t, _ = _gcra_params(l, w)
    return (now if s is None else max(s, now)) + cost * t


def gcra_expires(s, l, w):
    return s


class Algorithm(NamedTuple):
    name: str
    key_tag: str
    peek: object
    commit: object
    expires_at: object


ALGORITHMS = {
    a.name: a
    for a in (
        Algorithm("fixed_window", "fw", fw_peek, fw_commit, fw_expires),
        Algorithm("sliding_window", "sw", sw_peek, sw_commit, sw_expires),
        Algorithm("sliding_window_counter", "swc", swc_peek, swc_commit, swc_expires),
        Algorithm("token_bucket", "tb", tb_peek, tb_commit, tb_expires),
        Algorithm("gcra", "gcra", gcra_peek, gcra_commit, gcra_expires),
    )
}
