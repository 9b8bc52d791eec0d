"""The header renderer (``core/src/headers.rs``): legacy, ietf, both or none."""

from __future__ import annotations

from .decision import BACKEND_UNAVAILABLE, Decision, ceil_secs


def render(decision: Decision, fmt: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if fmt == "none":
        return out
    if decision.reason == BACKEND_UNAVAILABLE:
        out.append(("Retry-After", "1"))
        return out
    rep = decision.reported_dim()
    if rep is None:
        return out
    reset_at = decision.reset_at()
    if reset_at is None:
        reset_at = decision.now
    remaining = rep.outcome.remaining
    if fmt in ("legacy", "both"):
        out.append(("X-RateLimit-Limit", str(rep.count)))
        out.append(("X-RateLimit-Remaining", str(remaining)))
        out.append(("X-RateLimit-Reset", str(ceil_secs(reset_at))))
    if fmt in ("ietf", "both"):
        all_shadow = all(d.shadow for d in decision.dimensions)
        policy = ", ".join(
            f'"{d.name}";q={d.count};w={d.window_secs}'
            for d in decision.dimensions
            if all_shadow or not d.shadow
        )
        out.append(("RateLimit-Policy", policy))
        if not decision.allowed and decision.retry_after_secs is not None:
            t = decision.retry_after_secs
        else:
            t = ceil_secs(max(reset_at - decision.now, 0))
        out.append(("RateLimit", f'"{rep.name}";r={remaining};t={t}'))
    if not decision.allowed and decision.retry_after_secs is not None:
        out.append(("Retry-After", str(decision.retry_after_secs)))
    return out
