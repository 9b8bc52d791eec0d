"""One decision over every dimension of a request (``core/src/decision.rs``): all-or-nothing,
shadow cells (evaluated, never denying), the reported dimension, ``retry_at`` and
``Retry-After``, and the one commit rule (:func:`commits`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .algorithms import Outcome

LIMITED = "limited"
COST_EXCEEDS_LIMIT = "cost_exceeds_limit"
BACKEND_UNAVAILABLE = "backend_unavailable"


def ceil_secs(us: int) -> int:
    return -(-us // 1_000_000)


@dataclass
class DimensionResult:
    dimension: str
    name: str
    count: int
    window_secs: int
    outcome: Outcome
    shadow: bool = False


@dataclass
class Decision:
    allowed: bool
    now: int
    reason: Optional[str] = None
    reported: Optional[int] = None
    retry_at: Optional[int] = None
    retry_after_secs: Optional[int] = None
    dimensions: list[DimensionResult] = field(default_factory=list)
    cost: int = 1
    shadow_denied: bool = False

    @classmethod
    def combine(cls, cells, now: int, cost: int, outcomes: list[Outcome]) -> "Decision":
        dims = [
            DimensionResult(c.dimension, c.name, c.count, c.window_secs, o, c.shadow)
            for c, o in zip(cells, outcomes)
        ]
        if not dims:
            return cls(allowed=True, now=now)
        allowed = all(d.outcome.allowed for d in dims if not d.shadow)
        shadow_denied = any(not d.outcome.allowed for d in dims if d.shadow)
        d = cls(allowed=allowed, now=now, dimensions=dims, cost=cost, shadow_denied=shadow_denied)
        # The cells the headers describe: the enforced ones, or every cell if all are shadow.
        all_shadow = all(r.shadow for r in dims)
        described = [all_shadow or not r.shadow for r in dims]
        if allowed and not (all_shadow and shadow_denied):
            best = None
            for i, r in enumerate(dims):
                if described[i] and (best is None or r.outcome.remaining < dims[best].outcome.remaining):
                    best = i
            d.reported = best
            return d
        never = None
        latest = None  # (index, retry_at)
        for i, r in enumerate(dims):
            if r.outcome.allowed or not described[i]:
                continue
            if r.outcome.retry_at is None:
                if never is None:
                    never = i
            elif latest is None or r.outcome.retry_at > latest[1]:
                latest = (i, r.outcome.retry_at)
        if allowed:  # shadow only: the would-be denial, without Retry-After
            d.reported = never if never is not None else (None if latest is None else latest[0])
            return d
        if never is not None:
            d.reason = COST_EXCEEDS_LIMIT
            d.reported = never
        elif latest is not None:
            d.reason = LIMITED
            d.reported = latest[0]
            d.retry_at = latest[1]
            d.retry_after_secs = max(ceil_secs(max(latest[1] - now, 0)), 1)
        return d

    def commits(self, i: int, cell) -> bool:
        """The one commit rule (``ratewall_core::store::commits``): cell ``i`` consumes iff the
        request is allowed, the cell's own outcome admitted it, and its cost is above 0."""
        return self.allowed and cell.cost > 0 and self.dimensions[i].outcome.allowed

    def describes(self, r: DimensionResult) -> bool:
        return not r.shadow or all(x.shadow for x in self.dimensions)

    def reported_dim(self) -> Optional[DimensionResult]:
        if self.reported is None or self.reported >= len(self.dimensions):
            return None
        return self.dimensions[self.reported]

    def reset_at(self) -> Optional[int]:
        if not self.allowed and self.retry_after_secs is not None:
            return self.now + self.retry_after_secs * 1_000_000
        rep = self.reported_dim()
        return None if rep is None else max(rep.outcome.reset_at, self.now)

    def remaining(self) -> Optional[int]:
        rep = self.reported_dim()
        return None if rep is None else rep.outcome.remaining

    def details(self) -> dict:
        """Per-dimension details of a denial or of a shadow denial (the Rust engine's
        ``convert::details``)."""
        violated, allowed = [], []
        for r in self.dimensions:
            e = {
                "dimension": r.dimension,
                "policy": r.name,
                "limit": r.count,
                "window": r.window_secs,
                "remaining": r.outcome.remaining,
                "shadow": r.shadow,
            }
            if r.outcome.allowed:
                e["reset_in"] = ceil_secs(max(r.outcome.reset_at - self.now, 0))
                allowed.append(e)
            else:
                ra = r.outcome.retry_at
                e["reset_in"] = None if ra is None else max(ceil_secs(max(ra - self.now, 0)), 1)
                violated.append(e)
        return {
            "limited": not self.allowed,
            "shadow_denied": self.shadow_denied,
            "reason": self.reason,
            "remaining": self.remaining(),
            "reset_in": self.retry_after_secs,
            "dimensions": {"violated": violated, "allowed": allowed},
        }
