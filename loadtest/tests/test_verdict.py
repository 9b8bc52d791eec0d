"""The load tests' verdicts against reference simulations of each algorithm: a correct history
passes, one extra admission (over-admission) or one needless denial (under-admission) fails.
Pure Python, no servers."""

import math
import random
import sys
from collections import deque
from fractions import Fraction
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rwload.classify import Outcome  # noqa: E402
from rwload.verdict import Fault, Limit, Policy, Rec, judge_domain  # noqa: E402

US = 1_000_000
ALGOS = ["fixed_window", "sliding_window", "sliding_window_counter", "token_bucket", "gcra"]


class Sim:
    """Exact reference models (integer µs), one per algorithm, cost 1, state starts empty/full."""

    def __init__(self, algorithm, lim: Limit):
        self.a, self.L, self.W = algorithm, lim.count, lim.window * US
        self.k, self.c, self.p = None, 0, 0
        self.log = deque()
        self.tokens, self.last = Fraction(self.L), None
        self.T = math.ceil(self.W / self.L)
        self.tat = None

    def peek(self, t):
        if self.a == "fixed_window":
            return (self.c if self.k == t // self.W else 0) + 1 <= self.L
        if self.a == "sliding_window":
            return sum(1 for x in self.log if x > t - self.W) < self.L
        if self.a == "sliding_window_counter":
            k = t // self.W
            c, p = self._swc(k)
            e = t - k * self.W
            return p * (self.W - e) + (c + 1) * self.W <= self.L * self.W
        if self.a == "token_bucket":
            return self._tokens(t) >= 1
        tat = self.tat if self.tat is not None else t
        return max(tat, t) + self.T - t <= self.L * self.T

    def _swc(self, k):
        if self.k is None:
            return 0, 0
        if k == self.k:
            return self.c, self.p
        if k == self.k + 1:
            return 0, self.c
        return 0, 0

    def _tokens(self, t):
        if self.last is None:
            return self.tokens
        return min(Fraction(self.L), self.tokens + Fraction(self.L * (t - self.last), self.W))

    def commit(self, t):
        if self.a == "fixed_window":
            if self.k != t // self.W:
                self.k, self.c = t // self.W, 0
            self.c += 1
        elif self.a == "sliding_window":
            self.log.append(t)
        elif self.a == "sliding_window_counter":
            k = t // self.W
            self.c, self.p = self._swc(k)
            self.k = k
            self.c += 1
        elif self.a == "token_bucket":
            self.tokens, self.last = self._tokens(t) - 1, t
        else:
            tat = self.tat if self.tat is not None else t
            self.tat = max(tat, t) + self.T


def history(algorithm, lim, seed, users=("u1",), tenant_lim=None, n=400, span=6.0, jitter=0.004):
    """Random arrivals with idle gaps, decided by the simulators (all or nothing over the user
    and tenant cells); each request's interval is [t - jitter, t + jitter]."""
    rnd = random.Random(seed)
    t0 = 1_800_000_000.0
    times = sorted(t0 + rnd.random() * span for _ in range(n))
    times = [t for t in times if not (t0 + 2.0 < t < t0 + 3.5)]  # an idle gap
    sims = {}
    recs = []
    for t in times:
        u = rnd.choice(users)
        cells = [("u", u, lim)] + ([("t", "t1", tenant_lim)] if tenant_lim else [])
        for c in cells:
            sims.setdefault(c[:2], Sim(algorithm, c[2]))
        tu = int(t * US)
        ok = all(sims[c[:2]].peek(tu) for c in cells)
        if ok:
            for c in cells:
                sims[c[:2]].commit(tu)
        recs.append(Rec("t", "d", u, "t1" if tenant_lim else None, None, t - rnd.random() * jitter,
                        t + rnd.random() * jitter, Outcome.ALLOWED if ok else Outcome.RATE_LIMITED))
    return recs


def policy(algorithm, lim, tenant_lim=None):
    return Policy(algorithm=algorithm, by_user=lim, by_tenant=tenant_lim)


@pytest.mark.parametrize("algorithm", ALGOS)
def test_a_correct_history_passes(algorithm):
    lim = Limit("user", 5, 1)
    for seed in range(5):
        recs = history(algorithm, lim, seed)
        assert sum(r.outcome is Outcome.RATE_LIMITED for r in recs) > 50  # the limit was reached
        v = judge_domain("d", recs, policy(algorithm, lim), "exact")
        assert v.ok, v.violations


@pytest.mark.parametrize("algorithm", ALGOS)
def test_all_or_nothing_over_user_and_tenant_passes(algorithm):
    lim, tlim = Limit("user", 4, 1), Limit("tenant", 9, 1)
    recs = history(algorithm, lim, 7, users=("a", "b", "c"), tenant_lim=tlim, n=600)
    v = judge_domain("d", recs, policy(algorithm, lim, tlim), "exact")
    assert v.ok, v.violations


@pytest.mark.parametrize("algorithm", ALGOS)
def test_one_extra_admission_is_over_admission(algorithm):
    lim = Limit("user", 5, 1)
    recs = history(algorithm, lim, 3, jitter=0.001)
    flagged = 0
    denied = [i for i, r in enumerate(recs) if r.outcome is Outcome.RATE_LIMITED]
    for i in denied[::7]:
        bad = list(recs)
        bad[i] = Rec(**{**recs[i].__dict__, "outcome": Outcome.ALLOWED})
        v = judge_domain("d", bad, policy(algorithm, lim), "exact")
        flagged += any("over-admission" in m for m in v.violations)
    tried = len(denied[::7])
    # every flip is a real over-admission; the interval slack hides only a few (bucket types)
    assert flagged >= 0.75 * tried, (flagged, tried)
    if algorithm in ("fixed_window", "sliding_window"):
        assert flagged == tried


@pytest.mark.parametrize("algorithm", ALGOS)
def test_a_needless_denial_is_under_admission(algorithm):
    lim = Limit("user", 5, 1)
    recs = history(algorithm, lim, 4)
    # the first request after the idle gap, and the very first one: the cell cannot be full
    firsts = [0, next(i for i, r in enumerate(recs) if r.t0 > recs[0].t0 + 3.4)]
    for i in firsts:
        assert recs[i].outcome is Outcome.ALLOWED
        bad = list(recs)
        bad[i] = Rec(**{**recs[i].__dict__, "outcome": Outcome.RATE_LIMITED})
        v = judge_domain("d", bad, policy(algorithm, lim), "exact")
        assert any("under-admission" in m for m in v.violations), (algorithm, i)


def test_fixed_window_exactness_figures():
    lim = Limit("user", 5, 1)
    recs = history("fixed_window", lim, 1)
    v = judge_domain("d", recs, policy("fixed_window", lim), "exact")
    assert v.windows_over > 0 and v.windows_at_limit == v.windows_over


def test_infrastructure_errors_and_misplaced_fail_modes_fail_the_run():
    lim = Limit("user", 5, 1)
    recs = history("fixed_window", lim, 2)
    t = recs[10].t0
    for outcome in (Outcome.SERVER_ERROR, Outcome.TIMEOUT, Outcome.CONNECTION_ERROR, Outcome.CLIENT_ERROR,
                    Outcome.BACKEND_UNAVAILABLE):
        bad = recs + [Rec("t", "d", "zz", None, None, t, t + 0.01, outcome)]
        assert not judge_domain("d", bad, policy("fixed_window", lim), "exact").ok, outcome


def test_fail_closed_outage():
    lim = Limit("user", 1000, 1)
    t0 = 1_800_000_000.0
    recs = [Rec("t", "d", "u", None, None, t0 + i * 0.01, t0 + i * 0.01 + 0.005, Outcome.ALLOWED) for i in range(100)]
    f = Fault("d", t0 + 0.3, t0 + 0.9, "closed")
    for r in recs:
        if f.start + 0.05 < r.t0 and r.t1 < f.end:
            r.outcome = Outcome.BACKEND_UNAVAILABLE
    # allowed requests right at the start of the pause are fine (the store's timeout runs)
    assert judge_domain("d", recs, policy("fixed_window", lim), "exact", [f]).ok
    # a fail-closed store that admits during the outage is wrong
    wrong = [Rec(**{**r.__dict__}) for r in recs]
    wrong[75].outcome = Outcome.ALLOWED
    assert not judge_domain("d", wrong, policy("fixed_window", lim), "exact", [f]).ok
    # and a 503 outside the outage is wrong
    late = recs + [Rec("t", "d", "u", None, None, t0 + 5, t0 + 5.01, Outcome.BACKEND_UNAVAILABLE)]
    assert not judge_domain("d", late, policy("fixed_window", lim), "exact", [f]).ok


def test_per_process_and_unlimited_modes():
    lim = Limit("user", 5, 1)
    recs = history("fixed_window", lim, 5)
    doubled = recs + [Rec(**{**r.__dict__, "t0": r.t0 + 1e-4, "t1": r.t1 + 1e-4}) for r in recs]
    assert not judge_domain("d", doubled, policy("fixed_window", lim), "exact").ok
    assert judge_domain("d", doubled, policy("fixed_window", lim), "per_process:2").ok
    assert not judge_domain("d", recs, policy("fixed_window", lim), "unlimited").ok
    allowed = [Rec(**{**r.__dict__, "outcome": Outcome.ALLOWED}) for r in recs]
    assert judge_domain("d", allowed, policy("fixed_window", lim), "unlimited").ok
