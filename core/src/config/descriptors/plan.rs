//! Planning one RLS request: a domain and its descriptors become one [`Plan`].
//!
//! For each request descriptor, in order: its `limit` override if it has one (in a known
//! domain), else the rule it matches (`super::tree`). Then every matched rule whose `name` is
//! in the `replaces` of any matched rule of the request is dropped. Each remaining limited rule
//! contributes one cell per limit, costing the descriptor's `hits_addend` (absent: the request's,
//! where 0 means 1; present and 0: checked without consuming). Two descriptors that name the same
//! counter (same domain, entries, algorithm and window) share one cell whose cost is the sum of
//! theirs, so the store sees each key once; if their limits differ the request is refused
//! ([`DescriptorError::ConflictingLimits`]), as no single answer would be right for both.
//!
//! The work per request: a bounds pass over the entries, one tree walk per descriptor (binary
//! searches, no allocation), and per cell one key string. The plan's vectors are the only other
//! allocations (cells; the per-descriptor bookkeeping is inline up to 4 descriptors / 8 cells).

use smallvec::SmallVec;

use crate::config::compile::{Cell, DimensionKind, Plan, Policy, PolicyName};
use crate::config::rate::{Limit, MAX_COUNT};
use crate::key::{cell_key, DimKey};

use super::tree::{Domain, Rule, RuleLimit};
use super::unit::Unit;
use super::{Entry, MAX_DESCRIPTORS, MAX_ENTRIES, MAX_REQUEST_BYTES};

/// A request's own limit for one descriptor (RLS `RateLimitDescriptor.limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOverride {
    /// Requests per unit (1 ..= the largest count a limit may have).
    pub requests_per_unit: u64,
    /// The unit.
    pub unit: Unit,
}

/// One descriptor of an RLS request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestDescriptor<'a> {
    /// Its entries, in order (at least one).
    pub entries: &'a [Entry<'a>],
    /// The request's own limit for it: replaces rule matching (in a known domain).
    pub limit: Option<LimitOverride>,
    /// Units it consumes; `None`: the request's `hits_addend` (0 meaning 1); `Some(0)`: checked
    /// without consuming.
    pub hits_addend: Option<u64>,
}

/// An RLS request that cannot be planned. Nothing is consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptorError {
    /// The domain is empty.
    EmptyDomain,
    /// The request has no descriptors.
    NoDescriptors,
    /// More than [`MAX_DESCRIPTORS`] descriptors.
    TooManyDescriptors(usize),
    /// A descriptor without entries.
    NoEntries(usize),
    /// A descriptor with more than [`MAX_ENTRIES`] entries: `(descriptor, count)`.
    TooManyEntries(usize, usize),
    /// An entry with an empty key: `(descriptor, entry)`.
    EmptyKey(usize, usize),
    /// More than [`MAX_REQUEST_BYTES`] of keys and values.
    TooManyBytes(usize),
    /// A `hits_addend` above the largest count any limit may have: `(descriptor or None for the
    /// request's, value)`.
    HitsAddendTooLarge(Option<usize>, u64),
    /// A `limit` override that is not a valid limit: `(descriptor, why)`.
    InvalidOverride(usize, String),
    /// Two descriptors name the same counter with different limits: `(descriptor, earlier)`.
    ConflictingLimits(usize, usize),
}

impl DescriptorError {
    /// The request field at fault (`domain`, `descriptors[2].entries[0].key`, ...).
    pub fn field(&self) -> String {
        match self {
            DescriptorError::EmptyDomain => "domain".into(),
            DescriptorError::NoDescriptors | DescriptorError::TooManyDescriptors(_) => {
                "descriptors".into()
            }
            DescriptorError::TooManyBytes(_) => "descriptors".into(),
            DescriptorError::NoEntries(d) | DescriptorError::TooManyEntries(d, _) => {
                format!("descriptors[{d}].entries")
            }
            DescriptorError::EmptyKey(d, e) => format!("descriptors[{d}].entries[{e}].key"),
            DescriptorError::HitsAddendTooLarge(None, _) => "hits_addend".into(),
            DescriptorError::HitsAddendTooLarge(Some(d), _) => {
                format!("descriptors[{d}].hits_addend")
            }
            DescriptorError::InvalidOverride(d, _) => format!("descriptors[{d}].limit"),
            DescriptorError::ConflictingLimits(d, _) => format!("descriptors[{d}]"),
        }
    }
}

impl std::fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let field = self.field();
        match self {
            DescriptorError::EmptyDomain => write!(f, "{field}: rate limit domain must not be empty"),
            DescriptorError::NoDescriptors => {
                write!(f, "{field}: rate limit descriptor list must not be empty")
            }
            DescriptorError::TooManyDescriptors(n) => write!(
                f,
                "{field}: {n} descriptors exceed the maximum of {MAX_DESCRIPTORS} per request"
            ),
            DescriptorError::NoEntries(_) => write!(f, "{field}: a descriptor needs at least one entry"),
            DescriptorError::TooManyEntries(_, n) => write!(
                f,
                "{field}: {n} entries exceed the maximum of {MAX_ENTRIES} per descriptor"
            ),
            DescriptorError::EmptyKey(..) => write!(f, "{field}: entry key must not be empty"),
            DescriptorError::TooManyBytes(n) => write!(
                f,
                "{field}: {n} bytes of keys and values exceed the maximum of {MAX_REQUEST_BYTES} per request"
            ),
            DescriptorError::HitsAddendTooLarge(_, v) => {
                write!(f, "{field}: {v} exceeds the maximum of {MAX_COUNT}")
            }
            DescriptorError::InvalidOverride(_, why) => write!(f, "{field}: {why}"),
            DescriptorError::ConflictingLimits(_, other) => write!(
                f,
                "{field}: names the same counter as descriptors[{other}] with a different limit"
            ),
        }
    }
}

impl std::error::Error for DescriptorError {}

/// What one request descriptor resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// No limit applies: unknown domain, no rule matched, a whitelisting node, or replaced.
    Free,
    /// An `unlimited: true` rule.
    Unlimited,
    /// A `requests_per_unit: 0` rule (see [`DescriptorPlan::finish`]).
    Blocked {
        /// The rule's unit: the window whose end `duration_until_reset` reports.
        unit: super::unit::Unit,
        /// The request charges it (its hit count is not 0).
        hit: bool,
        shadow: bool,
        name: Option<PolicyName>,
    },
    /// Cells `refs[start .. start + len]` of the plan.
    Limited {
        start: u16,
        len: u16,
        shadow: bool,
        /// The rule's configured `name` (overrides: none).
        name: Option<PolicyName>,
    },
}

/// The plan of one RLS request, and which cells answer for which descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorPlan {
    /// Every cell of every descriptor: pass it to one store call.
    pub plan: Plan,
    pub(super) slots: SmallVec<[Slot; 4]>,
    pub(super) refs: SmallVec<[u16; 8]>,
    /// Some enforced `requests_per_unit: 0` rule is hit: the request is over the limit whatever
    /// the store says; every cell's cost is 0 (the store call only reads).
    pub(super) blocked: bool,
    /// Some shadow `requests_per_unit: 0` rule is hit.
    pub(super) shadow_blocked: bool,
}

/// A descriptor's match before `replaces` is applied.
enum Matched<'r> {
    Free,
    Rule(&'r Rule),
    Override(Limit),
}

fn check_bounds(
    domain: &str,
    descriptors: &[RequestDescriptor<'_>],
    hits_addend: u64,
) -> Result<u64, DescriptorError> {
    if domain.is_empty() {
        return Err(DescriptorError::EmptyDomain);
    }
    if descriptors.is_empty() {
        return Err(DescriptorError::NoDescriptors);
    }
    if descriptors.len() > MAX_DESCRIPTORS {
        return Err(DescriptorError::TooManyDescriptors(descriptors.len()));
    }
    let nominal = hits_addend.max(1);
    if nominal > MAX_COUNT {
        return Err(DescriptorError::HitsAddendTooLarge(None, hits_addend));
    }
    let mut bytes = domain.len();
    for (i, d) in descriptors.iter().enumerate() {
        if d.entries.is_empty() {
            return Err(DescriptorError::NoEntries(i));
        }
        if d.entries.len() > MAX_ENTRIES {
            return Err(DescriptorError::TooManyEntries(i, d.entries.len()));
        }
        for (j, e) in d.entries.iter().enumerate() {
            if e.key.is_empty() {
                return Err(DescriptorError::EmptyKey(i, j));
            }
            bytes = bytes
                .saturating_add(e.key.len())
                .saturating_add(e.value.len());
        }
        if let Some(h) = d.hits_addend.filter(|h| *h > MAX_COUNT) {
            return Err(DescriptorError::HitsAddendTooLarge(Some(i), h));
        }
    }
    if bytes > MAX_REQUEST_BYTES {
        return Err(DescriptorError::TooManyBytes(bytes));
    }
    Ok(nominal)
}

impl Policy {
    /// One plan for all descriptors of one RLS request (one store call decides them all); see
    /// the [module doc](self). An unknown domain has no limits: every descriptor is `OK`.
    ///
    /// ```
    /// use ratewall_core::config::LimiterConfig;
    /// use ratewall_core::config::descriptors::{Entry, RequestDescriptor, StatusCode};
    /// use ratewall_core::store::{memory::MemoryStore, Store};
    /// use ratewall_core::clock::ManualClock;
    /// use std::sync::Arc;
    ///
    /// let yaml = "domains:\n  - domain: edge\n    descriptors:\n      - key: remote_address\n        rate_limit: {unit: second, requests_per_unit: 1}\n";
    /// let (cfg, _) = LimiterConfig::from_yaml_str(yaml, &[]).unwrap();
    /// let store = MemoryStore::new(1024, Arc::new(ManualClock::new(1_700_000_000_000_000_000)));
    /// let entries = [Entry { key: "remote_address", value: "10.0.0.1" }];
    /// let d = [RequestDescriptor { entries: &entries, limit: None, hits_addend: None }];
    /// let plan = cfg.policy.plan_descriptors("edge", &d, 1).unwrap();
    /// assert_eq!(plan.statuses(&store.check(&plan.plan).unwrap())[0].code, StatusCode::Ok);
    /// let second = store.check(&plan.plan).unwrap();
    /// assert!(!second.allowed);
    /// assert_eq!(plan.statuses(&second)[0].code, StatusCode::OverLimit);
    /// ```
    pub fn plan_descriptors(
        &self,
        domain: &str,
        descriptors: &[RequestDescriptor<'_>],
        hits_addend: u64,
    ) -> Result<DescriptorPlan, DescriptorError> {
        let nominal = check_bounds(domain, descriptors, hits_addend)?;
        let mut out = DescriptorPlan {
            plan: Plan {
                cells: Vec::new(),
                cost: nominal,
            },
            slots: SmallVec::new(),
            refs: SmallVec::new(),
            blocked: false,
            shadow_blocked: false,
        };
        let Some(dom) = self.domains().get(domain) else {
            out.slots.resize(descriptors.len(), Slot::Free);
            return Ok(out);
        };
        let algorithm = self.algorithm();
        let global_shadow = self.shadow_mode();
        let mut matched: SmallVec<[Matched<'_>; 4]> = SmallVec::new();
        let mut replaced: SmallVec<[u32; 8]> = SmallVec::new();
        for (i, d) in descriptors.iter().enumerate() {
            let m = match d.limit {
                Some(o) => {
                    let limit = Limit::new(o.requests_per_unit, o.unit.secs()).map_err(|e| {
                        DescriptorError::InvalidOverride(
                            i,
                            format!("{} per {}: {e}", o.requests_per_unit, o.unit),
                        )
                    })?;
                    if let Err(e) = algorithm.check_limit(&limit) {
                        return Err(DescriptorError::InvalidOverride(
                            i,
                            format!(
                                "{} per {}: {e} (algorithm {})",
                                o.requests_per_unit,
                                o.unit,
                                algorithm.name()
                            ),
                        ));
                    }
                    Matched::Override(limit)
                }
                None => match dom.lookup(d.entries) {
                    Some(rule) => {
                        replaced.extend_from_slice(&rule.replaces);
                        Matched::Rule(rule)
                    }
                    None => Matched::Free,
                },
            };
            matched.push(m);
        }
        // At most one cell per limit of each rule kept: one allocation for the cells.
        let kept = |r: &Rule| !r.name_id.is_some_and(|n| replaced.contains(&n));
        let most: usize = matched
            .iter()
            .map(|m| match m {
                Matched::Rule(r) if kept(r) => match &r.limit {
                    RuleLimit::Limits { limits, .. } => limits.len(),
                    RuleLimit::Unlimited | RuleLimit::Blocked => 0,
                },
                Matched::Override(_) => 1,
                _ => 0,
            })
            .sum();
        out.plan.cells.reserve_exact(most);
        // Which descriptor owns each cell (for conflict errors).
        let mut owner: SmallVec<[u16; 8]> = SmallVec::new();
        for (i, (d, m)) in descriptors.iter().zip(&matched).enumerate() {
            let cost = d.hits_addend.unwrap_or(nominal);
            let slot = match m {
                Matched::Free => Slot::Free,
                Matched::Rule(rule) if !kept(rule) => Slot::Free,
                Matched::Rule(rule) => match &rule.limit {
                    RuleLimit::Unlimited => Slot::Unlimited,
                    RuleLimit::Blocked => {
                        let shadow = rule.shadow || global_shadow;
                        let hit = cost > 0;
                        if hit {
                            if shadow {
                                out.shadow_blocked = true;
                            } else {
                                out.blocked = true;
                            }
                        }
                        Slot::Blocked {
                            unit: rule.unit.unwrap_or(super::unit::Unit::Second),
                            hit,
                            shadow,
                            name: rule.name,
                        }
                    }
                    RuleLimit::Limits {
                        limits,
                        algorithm: own,
                        ..
                    } => {
                        let start = out.refs.len() as u16;
                        let shared = rule.shared.as_slice();
                        let alg = own.unwrap_or(algorithm);
                        for (limit, name) in limits {
                            let cell = self.rls_cell(
                                dom,
                                d,
                                shared,
                                *limit,
                                alg,
                                *name,
                                cost,
                                rule.shadow || global_shadow,
                            );
                            let at = out.add(cell, i, &mut owner)?;
                            out.refs.push(at);
                        }
                        Slot::Limited {
                            start,
                            len: out.refs.len() as u16 - start,
                            shadow: rule.shadow || global_shadow,
                            name: rule.name,
                        }
                    }
                },
                Matched::Override(limit) => {
                    let start = out.refs.len() as u16;
                    // An override is never shadow on its own (as in envoyproxy/ratelimit); the
                    // global `shadow_mode` still applies.
                    let shadow = global_shadow;
                    let cell = self.rls_cell(
                        dom,
                        d,
                        &[],
                        *limit,
                        algorithm,
                        dom.override_name,
                        cost,
                        shadow,
                    );
                    let at = out.add(cell, i, &mut owner)?;
                    out.refs.push(at);
                    Slot::Limited {
                        start,
                        len: 1,
                        shadow,
                        name: None,
                    }
                }
            };
            out.slots.push(slot);
        }
        if out.blocked {
            // Over the limit whatever the other descriptors say: charge nothing (all-or-nothing),
            // read their state for their statuses.
            for c in &mut out.plan.cells {
                c.cost = 0;
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn rls_cell(
        &self,
        dom: &Domain,
        d: &RequestDescriptor<'_>,
        shared: &[Option<String>],
        limit: Limit,
        algorithm: crate::Algorithm,
        name: PolicyName,
        cost: u64,
        shadow: bool,
    ) -> Cell {
        let dim = DimKey::Rls {
            domain: &dom.name,
            entries: d.entries,
            shared,
        };
        Cell {
            key: cell_key(self.prefix(), None, dim, algorithm, limit.window_secs()),
            limit,
            algorithm,
            dimension: DimensionKind::Descriptor,
            name,
            cost,
            shadow,
        }
    }
}

impl DescriptorPlan {
    /// The request's decision from the store's decision on [`DescriptorPlan::plan`]: the same,
    /// except that a request hitting an enforced `requests_per_unit: 0` rule is denied (reason
    /// [`DenyReason::CostExceedsLimit`](crate::decision::DenyReason): it can never pass, so no
    /// `Retry-After`), and one hitting a shadow one is marked `shadow_denied`. Call it on
    /// every decision of this plan before reading its statuses or rendering its headers.
    pub fn finish(&self, mut d: crate::decision::Decision) -> crate::decision::Decision {
        if self.blocked && d.allowed {
            d.allowed = false;
            d.reason = Some(crate::decision::DenyReason::CostExceedsLimit);
            d.retry_at = None;
            d.retry_after_secs = None;
        }
        if self.shadow_blocked {
            d.shadow_denied = true;
        }
        d
    }

    /// Add `cell` for descriptor `i`, or merge it into an earlier cell with the same key; the
    /// cell's index.
    fn add(
        &mut self,
        cell: Cell,
        i: usize,
        owner: &mut SmallVec<[u16; 8]>,
    ) -> Result<u16, DescriptorError> {
        let cells = &mut self.plan.cells;
        if let Some(j) = cells.iter().position(|c| c.key == cell.key) {
            let c = &mut cells[j];
            if c.limit != cell.limit || c.algorithm != cell.algorithm || c.shadow != cell.shadow {
                return Err(DescriptorError::ConflictingLimits(i, usize::from(owner[j])));
            }
            let cost = c.cost + cell.cost;
            if cost > MAX_COUNT {
                return Err(DescriptorError::HitsAddendTooLarge(Some(i), cost));
            }
            c.cost = cost;
            return Ok(j as u16);
        }
        cells.push(cell);
        owner.push(i as u16);
        Ok((cells.len() - 1) as u16)
    }
}
