//! Per-descriptor answers of an RLS request, read off the core's [`Decision`].
//!
//! The request's overall answer is the decision itself ([`DescriptorPlan::overall_code`]).
//! Each descriptor's status, in request order:
//!
//! | descriptor | code | `current_limit` | `limit_remaining` | `duration_until_reset` |
//! |---|---|---|---|---|
//! | no rule, unknown domain, whitelisted, replaced | `OK` | none | 0 | none |
//! | `unlimited: true` | `OK` | none | `u32::MAX` | none |
//! | `requests_per_unit: 0`, hit | `OVER_LIMIT` | 0 per its unit | 0 | until the end of the current unit window (aligned to the epoch, as envoyproxy/ratelimit's) |
//! | `requests_per_unit: 0`, `hits_addend` 0 | `OK` | 0 per its unit | 0 | as above |
//! | limited | its deciding cell's verdict | that cell's limit | that cell's remaining | that cell's reset |
//!
//! The deciding cell of a descriptor with several limits is chosen as [`Decision`] chooses over
//! a request: among its cells that deny, one that can never admit the request if any, else the
//! one whose retry instant is latest; if none denies, the one with the fewest remaining units
//! (ties: the first). Its `remaining` is what the algorithm reports: after this request when the
//! cell admits it, now when it denies it (units are charged only if the whole request is
//! allowed). `duration_until_reset` is [`crate::decision::DimensionResult::reset_in_secs`]:
//! for an admitting cell, until its usage is fully restored (the end of the current window for
//! `fixed_window`, which is envoyproxy/ratelimit's value), for a denying one until it admits the
//! request; none if it never can (`hits_addend` above the limit). `limit_remaining` saturates at
//! `u32::MAX`, the protocol's type.
//!
//! A shadow descriptor that would be over its limit answers `OK` with `shadow: true` (and its
//! would-be remaining); its cell is not charged.
//!
//! If the decision did not come from this plan's cells (the store failed and the packaging
//! applied `fail_mode`), each limited descriptor answers with the decision's verdict
//! (`OVER_LIMIT` when denied, shadow descriptors `OK`), its first limit, remaining 0 and the
//! decision's `Retry-After` as its reset.

use crate::config::compile::PolicyName;
use crate::decision::{Decision, DimensionResult};

use super::plan::{DescriptorPlan, Slot};
use super::unit::Unit;

/// A descriptor's (or the request's) verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    /// Within its limits (or no limit).
    Ok,
    /// Over a limit.
    OverLimit,
}

/// The limit a descriptor's status describes (RLS `current_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentLimit {
    /// The limit's count per window.
    pub requests_per_unit: u64,
    /// The unit whose length is the window; `None` when the window is not one unit (a multiplier
    /// such as `100/15m`: report `UNKNOWN` and use `window_secs`).
    pub unit: Option<Unit>,
    /// The window in seconds.
    pub window_secs: u64,
    /// The rule's configured `name`, if any.
    pub name: Option<PolicyName>,
}

/// One descriptor's answer (RLS `DescriptorStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorStatus {
    /// `Ok`, `OverLimit` (a shadow descriptor over its limit: `Ok` with `shadow`).
    pub code: StatusCode,
    /// The deciding limit; `None` when no limit applies or the rule is unlimited.
    pub current_limit: Option<CurrentLimit>,
    /// Units remaining, saturated at `u32::MAX`.
    pub limit_remaining: u64,
    /// Whole seconds until the deciding limit resets (module doc).
    pub duration_until_reset_secs: Option<u64>,
    /// The descriptor is in shadow mode and would have been over its limit.
    pub shadow: bool,
}

impl DescriptorStatus {
    const FREE: DescriptorStatus = DescriptorStatus {
        code: StatusCode::Ok,
        current_limit: None,
        limit_remaining: 0,
        duration_until_reset_secs: None,
        shadow: false,
    };
}

fn current(r: &DimensionResult, name: Option<PolicyName>) -> CurrentLimit {
    CurrentLimit {
        requests_per_unit: r.limit.count(),
        unit: Unit::of_window(r.limit.window_secs()),
        window_secs: r.limit.window_secs(),
        name,
    }
}

/// The deciding result among `cells` (module doc); `None` if `cells` is empty.
fn deciding<'d>(
    cells: impl Iterator<Item = &'d DimensionResult> + Clone,
) -> Option<&'d DimensionResult> {
    let mut denying = cells.clone().filter(|r| !r.outcome.allowed).peekable();
    if denying.peek().is_some() {
        let mut never = None;
        let mut latest: Option<&DimensionResult> = None;
        for r in denying {
            match r.outcome.retry_at {
                None => {
                    never.get_or_insert(r);
                }
                Some(t) => {
                    if latest.is_none_or(|b| b.outcome.retry_at.is_some_and(|bt| t > bt)) {
                        latest = Some(r);
                    }
                }
            }
        }
        return never.or(latest);
    }
    let mut best: Option<&DimensionResult> = None;
    for r in cells {
        if best.is_none_or(|b| r.outcome.remaining < b.outcome.remaining) {
            best = Some(r);
        }
    }
    best
}

impl DescriptorPlan {
    /// The request's overall code: the decision's verdict.
    pub fn overall_code(&self, decision: &Decision) -> StatusCode {
        if decision.allowed {
            StatusCode::Ok
        } else {
            StatusCode::OverLimit
        }
    }

    /// One status per request descriptor, in request order (module doc).
    pub fn statuses(&self, decision: &Decision) -> Vec<DescriptorStatus> {
        let from_plan = decision.dimensions.len() == self.plan.cells.len();
        self.slots
            .iter()
            .map(|slot| match *slot {
                Slot::Free => DescriptorStatus::FREE,
                Slot::Unlimited => DescriptorStatus {
                    limit_remaining: u64::from(u32::MAX),
                    ..DescriptorStatus::FREE
                },
                Slot::Blocked {
                    unit,
                    hit,
                    shadow,
                    name,
                } => {
                    let window = unit.secs();
                    let now_secs = decision.now / 1_000_000;
                    DescriptorStatus {
                        code: if hit && !shadow {
                            StatusCode::OverLimit
                        } else {
                            StatusCode::Ok
                        },
                        current_limit: Some(CurrentLimit {
                            requests_per_unit: 0,
                            unit: Some(unit),
                            window_secs: window,
                            name,
                        }),
                        limit_remaining: 0,
                        duration_until_reset_secs: Some(window - now_secs % window),
                        shadow: hit && shadow,
                    }
                }
                Slot::Limited {
                    start,
                    len,
                    shadow,
                    name,
                } => {
                    let refs = self
                        .refs
                        .get(usize::from(start)..usize::from(start) + usize::from(len))
                        .unwrap_or(&[]);
                    if !from_plan {
                        let first = refs
                            .first()
                            .and_then(|&i| self.plan.cells.get(usize::from(i)));
                        let denied = !decision.allowed && !shadow;
                        return DescriptorStatus {
                            code: if denied {
                                StatusCode::OverLimit
                            } else {
                                StatusCode::Ok
                            },
                            current_limit: first.map(|c| CurrentLimit {
                                requests_per_unit: c.limit.count(),
                                unit: Unit::of_window(c.limit.window_secs()),
                                window_secs: c.limit.window_secs(),
                                name,
                            }),
                            limit_remaining: 0,
                            duration_until_reset_secs: if decision.allowed {
                                None
                            } else {
                                decision.retry_after_secs
                            },
                            shadow: false,
                        };
                    }
                    let cells = refs
                        .iter()
                        .filter_map(|&i| decision.dimensions.get(usize::from(i)));
                    let Some(r) = deciding(cells) else {
                        return DescriptorStatus::FREE;
                    };
                    let over = !r.outcome.allowed;
                    DescriptorStatus {
                        code: if over && !shadow {
                            StatusCode::OverLimit
                        } else {
                            StatusCode::Ok
                        },
                        current_limit: Some(current(r, name)),
                        limit_remaining: r.outcome.remaining.min(u64::from(u32::MAX)),
                        duration_until_reset_secs: r.reset_in_secs(decision.now),
                        shadow: over && shadow,
                    }
                }
            })
            .collect()
    }
}
