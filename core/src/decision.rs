//! One decision over every dimension of a request.
//!
//! A store peeks every cell of a [`Plan`], passes the outcomes to [`Decision::combine`], and
//! commits every cell only if the result is allowed: **all-or-nothing**. A user over their own
//! limit never drains the tenant's or the tool's budget, and denied requests are counted nowhere.
//!
//! * Allowed: the reported cell is the one with the fewest remaining units (ties: plan order, i.e.
//!   user, user_per_server, tenant, tool, descriptors).
//! * Denied: `retry_at` is the latest of the denying cells' retry instants, i.e. the earliest time
//!   at which every denying cell admits the request; `Retry-After` is that delay rounded *up* to
//!   whole seconds, at least 1 (never too early). If some cell can never admit it (`cost > limit`)
//!   the reason is [`DenyReason::CostExceedsLimit`] and there is no `Retry-After`.
//!
//! # Shadow cells
//!
//! A cell with [`Cell::shadow`] is evaluated, counted and reported like any other, but never
//! denies the request: `allowed` is true iff every *enforced* (non-shadow) cell admits it. A shadow
//! cell that would deny keeps its own `outcome.allowed == false` (the would-be denial is visible
//! per dimension) and sets [`Decision::shadow_denied`].
//!
//! What the headers describe ([`Decision::reported`], `Retry-After`, the IETF policy list) is
//! chosen among the enforced cells only, so a client is never told about a limit that cannot
//! stop it. When *every* cell is shadow (global `shadow_mode`), they describe the would-be
//! decision instead, as envoyproxy/ratelimit's shadow mode does (its statuses keep the would-be
//! `OVER_LIMIT`, remaining 0, so Envoy's `X-RateLimit-*` headers show the would-be values while
//! the request passes): the reported cell is the one the would-be denial would report (or, if no
//! cell would deny, the one with the fewest remaining units), and there is never a `Retry-After`.
//!
//! # Commits
//!
//! A store commits cell `i` iff the decision is allowed, cell `i`'s own outcome admitted, and
//! `cell.cost > 0` ([`crate::store::commits`]): a shadow cell that would deny is not charged (for
//! itself it behaves as if enforced), and a cell of cost 0 is checked without consuming.

use smallvec::SmallVec;

use crate::algorithm::Outcome;
use crate::clock::Micros;
use crate::config::compile::PolicyName;
use crate::config::rate::Limit;
use crate::config::{Cell, DimensionKind, Plan};

/// Why a request was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// A dimension is out of quota; retry after `retry_after_secs`.
    Limited,
    /// The request's cost exceeds a dimension's whole limit: it can never pass.
    CostExceedsLimit,
    /// The backend could not answer and `fail_mode` is `closed`.
    BackendUnavailable,
}

impl DenyReason {
    /// Stable lowercase name (metrics label, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Limited => "limited",
            DenyReason::CostExceedsLimit => "cost_exceeds_limit",
            DenyReason::BackendUnavailable => "backend_unavailable",
        }
    }
}

/// Per-cell results of one decision.
pub type Dimensions = SmallVec<[DimensionResult; 4]>;

/// The result for one cell of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimensionResult {
    /// Dimension kind.
    pub dimension: DimensionKind,
    /// Policy name (bounded; see [`crate::config::Cell::name`]).
    pub name: PolicyName,
    /// The limit.
    pub limit: Limit,
    /// What the algorithm said (for a shadow cell: what it would have said if enforced).
    pub outcome: Outcome,
    /// The cell is shadow: its outcome never denies the request.
    pub shadow: bool,
}

impl DimensionResult {
    /// Whole seconds until this cell is no longer in the way, relative to the decision's `now`:
    /// for an admitting cell, until its usage is fully restored (`ceil((reset_at - now) / 1 s)`);
    /// for a denying cell, until it admits the request (`ceil((retry_at - now) / 1 s)`, at least
    /// 1), or `None` if it never can (`cost > limit`). Front ends report this per dimension.
    pub fn reset_in_secs(&self, now: Micros) -> Option<u64> {
        if self.outcome.allowed {
            Some(ceil_secs(self.outcome.reset_at.saturating_sub(now)))
        } else {
            self.outcome
                .retry_at
                .map(|t| ceil_secs(t.saturating_sub(now)).max(1))
        }
    }
}

/// The verdict on one request, with per-dimension detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Admit the request?
    pub allowed: bool,
    /// Why not (denied only).
    pub reason: Option<DenyReason>,
    /// The instant the decision was taken (µs since epoch).
    pub now: Micros,
    /// Index into `dimensions` of the cell the headers describe.
    pub reported: Option<usize>,
    /// Denied and retryable: when every denying cell admits the request.
    pub retry_at: Option<Micros>,
    /// Denied and retryable: `ceil((retry_at - now) / 1 s)`, at least 1.
    pub retry_after_secs: Option<u64>,
    /// Every cell of the plan, in plan order (inline up to 4: no allocation per decision).
    pub dimensions: Dimensions,
    /// Request cost.
    pub cost: u64,
    /// Some shadow cell would have denied the request (it was allowed regardless, if nothing
    /// enforced denied it).
    pub shadow_denied: bool,
}

/// `ceil(us / 1e6)`.
pub fn ceil_secs(us: Micros) -> u64 {
    us.div_ceil(1_000_000)
}

impl Decision {
    /// No limit applies to this request.
    pub fn unlimited(now: Micros) -> Self {
        Self {
            allowed: true,
            reason: None,
            now,
            reported: None,
            retry_at: None,
            retry_after_secs: None,
            dimensions: Dimensions::new(),
            cost: 1,
            shadow_denied: false,
        }
    }

    /// The backend failed and `fail_mode: closed`: deny, retry in 1 s.
    pub fn backend_unavailable(now: Micros) -> Self {
        Self {
            allowed: false,
            reason: Some(DenyReason::BackendUnavailable),
            now,
            reported: None,
            retry_at: Some(now + 1_000_000),
            retry_after_secs: Some(1),
            dimensions: Dimensions::new(),
            cost: 1,
            shadow_denied: false,
        }
    }

    /// Combine one outcome per cell of `plan` (same order) into a decision.
    #[inline(always)]
    pub fn combine(plan: &Plan, now: Micros, outcomes: impl IntoIterator<Item = Outcome>) -> Self {
        let mut d = Self::pending(now, plan.cost);
        for (c, o) in plan.cells.iter().zip(outcomes) {
            d.push(c, o);
        }
        d.settle();
        d
    }

    /// The decision on a plan of one cell (the most common plan), as [`Self::combine`] would
    /// take it: the cell is the reported one whatever it says.
    #[inline(always)]
    pub fn single(cell: &Cell, now: Micros, cost: u64, outcome: Outcome) -> Self {
        let mut d = Self::pending(now, cost);
        d.push(cell, outcome);
        d.shadow_denied = cell.shadow && !outcome.allowed;
        d.allowed = cell.shadow || outcome.allowed;
        if d.allowed {
            d.reported = Some(0);
        } else {
            d.settle_denied(false);
        }
        d
    }

    /// Combine per-cell results (plan order) into a decision.
    #[inline(always)]
    pub fn from_results(dimensions: Dimensions, now: Micros, cost: u64) -> Self {
        let mut d = Self::pending(now, cost);
        d.dimensions = dimensions;
        d.settle();
        d
    }

    /// An empty decision to [`push`](Self::push) results into, then [`settle`](Self::settle).
    /// Stores build the decision in place this way (no per-cell scratch vector moved into it).
    #[inline(always)]
    pub fn pending(now: Micros, cost: u64) -> Self {
        Self {
            allowed: true,
            reason: None,
            now,
            reported: None,
            retry_at: None,
            retry_after_secs: None,
            dimensions: Dimensions::new(),
            cost,
            shadow_denied: false,
        }
    }

    /// Append the outcome of the next cell (plan order).
    #[inline(always)]
    pub fn push(&mut self, cell: &Cell, outcome: Outcome) {
        self.dimensions.push(DimensionResult {
            dimension: cell.dimension,
            name: cell.name,
            limit: cell.limit,
            outcome,
            shadow: cell.shadow,
        });
    }

    /// Decide from the pushed results: allowed iff every enforced cell admits; pick the reported
    /// cell and, when denied, `retry_at` / `Retry-After` (module docs). No results: unlimited.
    ///
    /// One pass over the cells decides an admitted request (the hot path); denials take a second
    /// pass in [`Self::settle_denied`].
    #[inline(always)]
    pub fn settle(&mut self) {
        self.reason = None;
        self.reported = None;
        self.retry_at = None;
        self.retry_after_secs = None;
        self.shadow_denied = false;
        if self.dimensions.is_empty() {
            self.allowed = true;
            self.cost = 1;
            return;
        }
        let mut enforced_denied = false;
        let mut shadow_denied = false;
        // Fewest remaining (first on ties) among the enforced cells. `remaining <= count <=
        // u32::MAX`, so the first enforced cell always beats the initial `u64::MAX`.
        let (mut best, mut best_rem) = (usize::MAX, u64::MAX);
        for (i, d) in self.dimensions.iter().enumerate() {
            if d.shadow {
                shadow_denied |= !d.outcome.allowed;
            } else {
                enforced_denied |= !d.outcome.allowed;
                if d.outcome.remaining < best_rem {
                    (best, best_rem) = (i, d.outcome.remaining);
                }
            }
        }
        self.shadow_denied = shadow_denied;
        self.allowed = !enforced_denied;
        let all_shadow = best == usize::MAX;
        if self.allowed && !all_shadow {
            self.reported = Some(best);
            return;
        }
        if self.allowed && !shadow_denied {
            // Every cell is shadow and none would deny: the fewest remaining among them all.
            let mut any = 0;
            for (i, d) in self.dimensions.iter().enumerate() {
                if d.outcome.remaining < self.dimensions[any].outcome.remaining {
                    any = i;
                }
            }
            self.reported = Some(any);
            return;
        }
        self.settle_denied(all_shadow);
    }

    /// [`Self::settle`] for a denial, or (every cell shadow) a would-be denial: the cell that
    /// can never admit the request, else the one admitting it last, among the described cells.
    #[inline(never)]
    fn settle_denied(&mut self, all_shadow: bool) {
        let mut never = None;
        let mut latest: Option<(usize, Micros)> = None;
        for (i, r) in self.dimensions.iter().enumerate() {
            if r.outcome.allowed || (r.shadow && !all_shadow) {
                continue;
            }
            match r.outcome.retry_at {
                None => {
                    never.get_or_insert(i);
                }
                Some(t) => {
                    if latest.is_none_or(|(_, best)| t > best) {
                        latest = Some((i, t));
                    }
                }
            }
        }
        if self.allowed {
            // Shadow only: describe the would-be denial, without Retry-After.
            self.reported = never.or(latest.map(|(i, _)| i));
            return;
        }
        if let Some(i) = never {
            self.reason = Some(DenyReason::CostExceedsLimit);
            self.reported = Some(i);
        } else if let Some((i, t)) = latest {
            self.reason = Some(DenyReason::Limited);
            self.reported = Some(i);
            self.retry_at = Some(t);
            self.retry_after_secs = Some(ceil_secs(t.saturating_sub(self.now)).max(1));
        }
    }

    /// The reported cell, if any.
    pub fn reported(&self) -> Option<&DimensionResult> {
        self.reported.and_then(|i| self.dimensions.get(i))
    }

    /// The instant the headers call "reset": for an allowed request the reported cell's full
    /// restore; for a denied one `now + Retry-After` (so `Reset` and `Retry-After` agree).
    pub fn reset_at(&self) -> Option<Micros> {
        match (self.allowed, self.retry_after_secs) {
            (false, Some(s)) => Some(self.now + s * 1_000_000),
            _ => self.reported().map(|r| r.outcome.reset_at.max(self.now)),
        }
    }

    /// The `X-RateLimit-Reset` value: [`Self::reset_at`] in whole Unix seconds, rounded up;
    /// `None` when no cell is reported (no limit applied, or the backend failed). The `reset`
    /// field of `/check` answers.
    pub fn reset_at_secs(&self) -> Option<u64> {
        self.reported()?;
        self.reset_at().map(ceil_secs)
    }

    /// Remaining units of the reported cell.
    pub fn remaining(&self) -> Option<u64> {
        self.reported().map(|r| r.outcome.remaining)
    }

    /// Every cell this decision checked, with its result: `plan` is the plan the decision was
    /// taken on ([`Self::dimensions`] is in plan order, one result per cell), so the pairs are
    /// `(plan.cells[i], dimensions[i])`. A decision without results (no limit applied, or the
    /// backend failed) yields nothing. Front ends count per-cell metrics from this (the cell's
    /// own cost is in [`Cell::cost`], e.g. an RLS descriptor's `hits_addend`).
    pub fn cells<'a>(
        &'a self,
        plan: &'a Plan,
    ) -> impl Iterator<Item = (&'a Cell, &'a DimensionResult)> + 'a {
        plan.cells.iter().zip(self.dimensions.iter())
    }
}
