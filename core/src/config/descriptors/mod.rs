//! The descriptor policy language: envoyproxy/ratelimit configuration documents, loaded
//! unchanged, plus our extensions on the same nodes (see `docs/CONFIG.md`, "Descriptor rules").
//!
//! ```yaml
//! domain: messaging
//! descriptors:
//!   - key: message_type
//!     value: marketing
//!     descriptors:
//!       - key: to_number
//!         rate_limit: {unit: day, requests_per_unit: 5}
//!   - key: to_number
//!     rate_limit: {rate: "5/s;100/d", algorithm: gcra}    # extensions
//! ```
//!
//! * `schema` reads documents (YAML files with one or more documents; the core key `domains`);
//!   `load` validates each into a compiled tree (`tree`), every error naming the origin and
//!   the path in the document;
//! * [`plan`]: [`crate::config::Policy::plan_descriptors`] turns one RLS request (a domain and
//!   its descriptors) into **one** [`crate::config::Plan`], so one store call decides every
//!   descriptor all-or-nothing;
//! * [`status`]: [`DescriptorPlan::statuses`] reads the per-descriptor answer off the
//!   [`crate::decision::Decision`].
//!
//! # Matching (envoyproxy/ratelimit's rules)
//!
//! A request descriptor is an ordered list of `(key, value)` entries. Starting at the domain's
//! top-level `descriptors`, each entry in turn selects a child: the one with that key and exactly
//! that value, else the first (in file order) whose value is a wildcard pattern matching the value
//! (`wildcard`), else the one with that key and no value. The walk stops at the first entry
//! that selects nothing, or at a node without children. The descriptor's rule is the
//! `rate_limit` of the node its **last** entry selected; otherwise none applies (no limit, `OK`).
//! There is no backtracking. A node with neither `rate_limit` nor children whitelists what
//! reaches it. Keys and values are compared as `(key, value)` pairs (envoyproxy/ratelimit joins
//! them into one `key_value` string; see the differences in `docs/CONFIG.md`).
//!
//! Across the descriptors of one request, a matched rule whose `name` is listed in the `replaces`
//! of another matched rule is dropped (its counter is neither checked nor charged).
//!
//! # Keys
//!
//! A limited descriptor's cells are keyed by ([`crate::key::DimKey::Rls`]) the domain and the
//! request descriptor's full ordered entry list, plus the algorithm and window: two different
//! descriptors never share a counter (unless `share_threshold` says so, and then only through a
//! tagged pattern), and keys depend neither on rule order nor on other rules, so a reload keeps
//! the counters of unchanged rules. A request's `limit` override is keyed the same way (as in
//! envoyproxy/ratelimit, it continues the counter of the configured rule of the same window).
//!
//! # Bounds (requests come off the network)
//!
//! At most [`MAX_DESCRIPTORS`] descriptors of at most [`MAX_ENTRIES`] entries, and at most
//! [`MAX_REQUEST_BYTES`] of keys and values in total; values of any length within that (the key
//! encoder hashes long components).

mod load;
pub mod plan;
mod schema;
pub mod status;
mod tree;
mod unit;
mod wildcard;

use crate::algorithm::Algorithm;
use crate::config::compile::rate_for;
use crate::config::ConfigError;

pub use plan::{DescriptorError, DescriptorPlan, LimitOverride, RequestDescriptor};
pub use status::{CurrentLimit, DescriptorStatus, StatusCode};
pub use unit::Unit;
pub use wildcard::Pattern;

use tree::{Domain, RuleLimit};

/// Most descriptors in one request.
pub const MAX_DESCRIPTORS: usize = 64;
/// Most entries in one descriptor (and so the deepest useful nesting of a document).
pub const MAX_ENTRIES: usize = 32;
/// Most limits in one rule (`rate: "1/s;10/m;..."`).
pub const MAX_LIMITS_PER_RULE: usize = 16;
/// Most bytes of entry keys and values in one request, all descriptors together (1 MiB).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// One entry of a request descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry<'a> {
    /// The entry's key (`generic_key`, `remote_address`, a header descriptor's name, ...).
    pub key: &'a str,
    /// Its value.
    pub value: &'a str,
}

/// Compiled RLS domains, each from one document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainSet {
    /// Sorted by name, no repeats.
    domains: Vec<Domain>,
}

impl DomainSet {
    /// Load envoyproxy/ratelimit configuration files: `(origin, text)` pairs, `origin` being the
    /// file name used in every error. A file may hold several YAML documents (one domain each);
    /// a domain defined twice, in one file or in two, is an error naming both origins.
    ///
    /// ```
    /// use ratewall_core::config::descriptors::DomainSet;
    /// let set = DomainSet::from_documents(&[(
    ///     "mongo.yaml",
    ///     "domain: mongo_cps\ndescriptors:\n  - key: database\n    value: users\n    rate_limit: {unit: second, requests_per_unit: 500}\n",
    /// )]).unwrap();
    /// assert_eq!(set.names().collect::<Vec<_>>(), ["mongo_cps"]);
    /// let e = DomainSet::from_documents(&[("bad.yaml", "domain: d\ndescriptors:\n  - value: v\n")]).unwrap_err();
    /// assert_eq!(e.to_string(), "invalid rate limiter config: bad.yaml: descriptors[0].key: descriptor has an empty key");
    /// ```
    pub fn from_documents(files: &[(&str, &str)]) -> Result<DomainSet, ConfigError> {
        let mut set = DomainSet::default();
        for (origin, text) in files {
            for (label, raw) in schema::yaml_documents(origin, text)? {
                set.insert(load::load_document(&label, raw)?)?;
            }
        }
        Ok(set)
    }

    /// The core key `domains` (a list of documents).
    pub(crate) fn from_inline(value: &serde_json::Value) -> Result<DomainSet, ConfigError> {
        let mut set = DomainSet::default();
        for (label, raw) in schema::inline_documents(value)? {
            set.insert(load::load_document(&label, raw)?)?;
        }
        Ok(set)
    }

    fn insert(&mut self, d: Domain) -> Result<(), ConfigError> {
        match self
            .domains
            .binary_search_by(|x| x.name.as_str().cmp(&d.name))
        {
            Ok(i) => Err(ConfigError::new(
                &format!("{}: domain", d.origin),
                format!(
                    "duplicate domain {:?}: defined in {} and again in {}",
                    d.name, self.domains[i].origin, d.origin
                ),
            )),
            Err(i) => {
                self.domains.insert(i, d);
                Ok(())
            }
        }
    }

    /// Both sets' domains (a domain in both is an error naming both origins).
    pub(crate) fn merged(&self, other: DomainSet) -> Result<DomainSet, ConfigError> {
        let mut out = self.clone();
        for d in other.domains {
            out.insert(d)?;
        }
        Ok(out)
    }

    /// Check every rule without an `algorithm` of its own against the config's `algorithm`
    /// (e.g. `token_bucket` bounds `count × window`).
    pub(crate) fn check_algorithms(&self, algorithm: Algorithm) -> Result<(), ConfigError> {
        for d in &self.domains {
            for r in &d.rules {
                if let RuleLimit::Limits {
                    algorithm: None,
                    rate_text,
                    written,
                    ..
                } = &r.limit
                {
                    rate_for(&r.path, rate_text, algorithm).map_err(|e| match written {
                        Some(w) => load::shown_as(e, rate_text, w),
                        None => e,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Whether no domain is configured.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Number of domains.
    pub fn len(&self) -> usize {
        self.domains.len()
    }

    /// The domain names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.domains.iter().map(|d| d.name.as_str())
    }

    /// Each domain with its origin and rule count (for `--check-config` and logs).
    pub fn summary(&self) -> serde_json::Value {
        let list: Vec<serde_json::Value> = self
            .domains
            .iter()
            .map(|d| serde_json::json!({"domain": d.name, "origin": d.origin, "rules": d.rules.len()}))
            .collect();
        serde_json::Value::Array(list)
    }

    fn get(&self, name: &str) -> Option<&Domain> {
        self.domains
            .binary_search_by(|d| d.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.domains.get(i))
    }
}
