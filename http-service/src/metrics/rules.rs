//! Per-rule counters, counted for **every** cell a request checks (not only the one that decided
//! it), in hits (each cell's own cost: the request's `cost`, or an RLS descriptor's
//! `hits_addend`), as envoyproxy/ratelimit counts its `total_hits`, `over_limit`, `near_limit`,
//! `within_limit` and `shadow_mode` per rule.
//!
//! For one checked cell of cost `c`, limit `L`, near-limit threshold `T = floor(L * ratio)` and
//! usage after the hit `u = L - remaining` (the algorithm's own remaining units):
//!
//! * `hits += c`;
//! * the cell denied (enforced) or would have denied (shadow): `over_limit += c`, and for a
//!   shadow cell also `shadow_mode += c` (the request was not denied for it);
//! * else `within_limit += c`, and if `u > T`: `near_limit += u - max(T, u - c)`, the part of the
//!   hits above the threshold (envoyproxy/ratelimit's `checkNearLimitThreshold`).
//!
//! So `hits = within_limit + over_limit` for every rule, and `near_limit <= within_limit`. A
//! cell that admitted while another cell denied the request counts `within_limit`: it was
//! checked and had room, though nothing was charged to it (all-or-nothing).
//!
//! Labels are bounded: the configured rule name (interned by the core, at most
//! [`MAX_LIMIT_SERIES`] distinct, further ones folded into `limit="other"`) and its dimension
//! kind. Never an identity from a request.

use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use ratewall_core::config::{Cell, Plan};
use ratewall_core::decision::{Decision, DimensionResult};
use ratewall_core::DenyReason;

use crate::settings::NearLimitRatio;

/// Distinct rule names tracked before further ones are folded into `limit="other"`.
pub const MAX_LIMIT_SERIES: usize = 2_048;

/// `{limit, dimension}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// The rule's name (`by_user`, `tool:echo`, a descriptor rule's name).
    pub limit: &'static str,
    /// Its dimension kind (`user`, `tenant`, `tool`, `descriptor`, ...).
    pub dimension: &'static str,
}

/// `{limit, dimension, outcome}` of the cell that decided a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    limit: &'static str,
    dimension: &'static str,
    outcome: &'static str,
}

/// The counters of one rule (handles into the families: incrementing one is one atomic add).
struct Handles {
    hits: Counter,
    over: Counter,
    near: Counter,
    within: Counter,
    shadow: Counter,
    allowed: Counter,
    limited: Counter,
    cost_exceeds: Counter,
}

/// Handles by the address of the interned rule name (unique per name), sorted by it.
type Index = Vec<(usize, Arc<Handles>)>;

/// The per-rule families and a lock-free index of their handles.
pub struct Rules {
    hits: Family<RuleLabels, Counter>,
    over: Family<RuleLabels, Counter>,
    near: Family<RuleLabels, Counter>,
    within: Family<RuleLabels, Counter>,
    shadow: Family<RuleLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    unlimited: Counter,
    /// Read without locking on the hot path; copied on the (rare) first sight of a rule.
    index: ArcSwap<Index>,
    insert: Mutex<()>,
}

impl Rules {
    /// The families, registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let decisions = Family::<DecisionLabels, Counter>::default();
        let unlimited = decisions
            .get_or_create(&DecisionLabels {
                limit: "none",
                dimension: "none",
                outcome: "allowed",
            })
            .clone();
        let r = Self {
            hits: Family::default(),
            over: Family::default(),
            near: Family::default(),
            within: Family::default(),
            shadow: Family::default(),
            decisions,
            unlimited,
            index: ArcSwap::from_pointee(Vec::new()),
            insert: Mutex::new(()),
        };
        registry.register(
            "ratewall_decisions",
            "Decisions by the rule that decided them (the reported cell) and outcome; \
             limit=\"none\" when no rule applied.",
            r.decisions.clone(),
        );
        registry.register(
            "ratewall_hits",
            "Hits checked against each rule, every rule a request checks \
             (envoyproxy/ratelimit: total_hits).",
            r.hits.clone(),
        );
        registry.register(
            "ratewall_over_limit",
            "Hits a rule denied, or (shadow) would have denied (envoyproxy/ratelimit: over_limit).",
            r.over.clone(),
        );
        registry.register(
            "ratewall_near_limit",
            "Hits within a rule's limit above near_limit_ratio of it \
             (envoyproxy/ratelimit: near_limit).",
            r.near.clone(),
        );
        registry.register(
            "ratewall_within_limit",
            "Hits within a rule's limit (envoyproxy/ratelimit: within_limit).",
            r.within.clone(),
        );
        registry.register(
            "ratewall_shadow_mode",
            "Hits a shadow rule would have denied; the request was not denied for it \
             (envoyproxy/ratelimit: shadow_mode).",
            r.shadow.clone(),
        );
        r
    }

    #[cold]
    fn insert_slow(&self, r: &DimensionResult) -> Arc<Handles> {
        let addr = key(r);
        let _guard = self.insert.lock();
        let current = self.index.load_full();
        if let Some(h) = find(&current, addr) {
            return h.clone();
        }
        let (limit, dimension) = if current.len() >= MAX_LIMIT_SERIES {
            ("other", "other")
        } else {
            (r.name.as_str(), r.dimension.as_str())
        };
        let labels = RuleLabels { limit, dimension };
        let outcome = |outcome| {
            self.decisions
                .get_or_create(&DecisionLabels {
                    limit,
                    dimension,
                    outcome,
                })
                .clone()
        };
        let h = Arc::new(Handles {
            hits: self.hits.get_or_create(&labels).clone(),
            over: self.over.get_or_create(&labels).clone(),
            near: self.near.get_or_create(&labels).clone(),
            within: self.within.get_or_create(&labels).clone(),
            shadow: self.shadow.get_or_create(&labels).clone(),
            allowed: outcome("allowed"),
            limited: outcome("limited"),
            cost_exceeds: outcome("cost_exceeds_limit"),
        });
        let mut next: Index = (*current).clone();
        let at = next.partition_point(|(a, _)| *a < addr);
        next.insert(at, (addr, h.clone()));
        self.index.store(Arc::new(next));
        h
    }

    /// Count one decision taken by the store on `plan`. No reference count is touched on the
    /// hot path: the handles are borrowed from the index guard.
    pub fn decision(&self, plan: &Plan, d: &Decision, near: NearLimitRatio) {
        let index = self.index.load();
        for (cell, r) in d.cells(plan) {
            match find(&index, key(r)) {
                Some(h) => count_cell(h, cell, r, near),
                None => count_cell(&self.insert_slow(r), cell, r, near),
            }
        }
        let Some(rep) = d.reported() else {
            if d.allowed {
                self.unlimited.inc();
            }
            return;
        };
        let count = |h: &Handles| match (d.allowed, d.reason) {
            (true, _) => h.allowed.inc(),
            (false, Some(DenyReason::CostExceedsLimit)) => h.cost_exceeds.inc(),
            (false, _) => h.limited.inc(),
        };
        match find(&index, key(rep)) {
            Some(h) => count(h),
            None => count(&self.insert_slow(rep)),
        };
    }
}

/// The index key of a result's rule: the address of its interned name.
fn key(r: &DimensionResult) -> usize {
    r.name.as_str().as_ptr() as usize
}

fn find(index: &Index, addr: usize) -> Option<&Arc<Handles>> {
    index
        .binary_search_by_key(&addr, |(a, _)| *a)
        .ok()
        .map(|i| &index[i].1)
}

/// The module docs' arithmetic for one cell.
#[inline]
fn count_cell(h: &Handles, cell: &Cell, r: &DimensionResult, near: NearLimitRatio) {
    let c = cell.cost;
    h.hits.inc_by(c);
    if !r.outcome.allowed {
        h.over.inc_by(c);
        if r.shadow {
            h.shadow.inc_by(c);
        }
        return;
    }
    h.within.inc_by(c);
    let limit = r.limit.count();
    let used = limit.saturating_sub(r.outcome.remaining);
    let threshold = near.threshold(limit);
    if used > threshold {
        h.near.inc_by(used - threshold.max(used.saturating_sub(c)));
    }
}
