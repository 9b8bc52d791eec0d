//! The compiled matching tree of one domain, and the lookup of a request descriptor in it.
//!
//! Nodes live in one arena per domain. Each node's children are grouped by entry key (sorted,
//! binary-searched); within a group, exact values (sorted), wildcard values (configuration
//! order) and at most one bare key (no value). Looking up a request descriptor walks the entries
//! in order and, at each level, takes the first of: the exact `(key, value)` child, the first
//! wildcard child of that key whose pattern matches the value, the bare `key` child. The walk
//! stops at a node without children. The descriptor's rule is the rule of the node reached by
//! its *last* entry, if the walk got that far; there is no backtracking (a failed deeper level
//! never retries a wildcard or bare sibling). Nothing is allocated.

use crate::algorithm::Algorithm;
use crate::config::compile::PolicyName;
use crate::config::rate::Limit;

use super::unit::Unit;
use super::wildcard::Pattern;
use super::Entry;

/// Index of a node in [`Domain::nodes`].
pub(super) type NodeId = u32;
/// Index of a rule in [`Domain::rules`].
pub(super) type RuleId = u32;

/// The children of one node (or of the domain's root).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Children {
    /// Sorted by key, no repeats.
    pub groups: Vec<KeyGroup>,
}

/// The children of one node that share an entry key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyGroup {
    pub key: String,
    /// Sorted by value, no repeats.
    pub exact: Vec<(String, NodeId)>,
    /// In configuration order (the first match wins).
    pub wildcards: Vec<(Pattern, NodeId)>,
    /// The node with this key and no value.
    pub bare: Option<NodeId>,
}

/// One node of the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Node {
    pub rule: Option<RuleId>,
    pub children: Children,
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RuleLimit {
    /// `unlimited: true`: never limited, never sent to the store.
    Unlimited,
    /// `requests_per_unit: 0` (envoyproxy/ratelimit's way to block a value): every request that
    /// reaches it with a non-zero hit count is over the limit; nothing is stored for it.
    Blocked,
    /// One or more limits, all enforced.
    Limits {
        /// Each limit with its policy name (headers, metrics).
        limits: Vec<(Limit, PolicyName)>,
        /// `None`: the config's `algorithm`.
        algorithm: Option<Algorithm>,
        /// The rate as a rate string (`unit`-based rules: synthesized), re-checked against the
        /// config's algorithm when the rule has none of its own.
        rate_text: String,
        /// `unit`-based rules: the written fields (`500 per second`), shown in errors instead
        /// of `rate_text`.
        written: Option<String>,
    },
}

/// A `rate_limit` block, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rule {
    /// Where its rate is written (`origin: descriptors[0].rate_limit.requests_per_unit`), for
    /// errors found when the config's algorithm is known.
    pub path: String,
    /// The configured `name` (RLS `current_limit.name`; what `replaces` refers to).
    pub name: Option<PolicyName>,
    /// Index of `name` in [`Domain::names`].
    pub name_id: Option<u32>,
    /// Indices in [`Domain::names`] of the names this rule replaces (names no rule carries are
    /// dropped: they can never match).
    pub replaces: Vec<u32>,
    pub limit: RuleLimit,
    /// `shadow_mode: true` on its node.
    pub shadow: bool,
    /// Per entry of a matching descriptor: the `share_threshold` wildcard pattern replacing the
    /// entry's value in the storage key (empty when no node on the path shares).
    pub shared: Vec<Option<String>>,
    /// The unit a `unit`-based rule was written with.
    pub unit: Option<Unit>,
}

/// One domain, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Domain {
    pub name: String,
    /// Where it was loaded from (file name or `domains[i]`).
    pub origin: String,
    pub root: Children,
    pub nodes: Vec<Node>,
    pub rules: Vec<Rule>,
    /// Rule names (for `replaces`), sorted, no repeats.
    pub names: Vec<String>,
    /// Policy name of cells created by a request's `limit` override.
    pub override_name: PolicyName,
}

impl Children {
    fn group(&self, key: &str) -> Option<&KeyGroup> {
        self.groups
            .binary_search_by(|g| g.key.as_str().cmp(key))
            .ok()
            .and_then(|i| self.groups.get(i))
    }

    /// The child an entry leads to (exact, then wildcard, then bare key).
    fn step(&self, entry: &Entry<'_>) -> Option<NodeId> {
        let g = self.group(entry.key)?;
        if let Ok(i) = g
            .exact
            .binary_search_by(|(v, _)| v.as_str().cmp(entry.value))
        {
            return g.exact.get(i).map(|(_, n)| *n);
        }
        if let Some((_, n)) = g.wildcards.iter().find(|(p, _)| p.matches(entry.value)) {
            return Some(*n);
        }
        g.bare
    }
}

impl Domain {
    /// The rule a request descriptor (non-empty `entries`) matches, if any (module doc).
    pub fn lookup(&self, entries: &[Entry<'_>]) -> Option<&Rule> {
        let mut children = &self.root;
        let last = entries.len().checked_sub(1)?;
        for (i, e) in entries.iter().enumerate() {
            let node = self.nodes.get(children.step(e)? as usize)?;
            if i == last {
                return node.rule.and_then(|r| self.rules.get(r as usize));
            }
            children = &node.children;
        }
        None
    }
}
