//! Validation of one document into a compiled [`Domain`]: every error names the document
//! (origin) and the path in it.

use std::collections::{BTreeMap, HashMap};

use crate::algorithm::Algorithm;
use crate::config::compile::{header_safe, rate_for, PolicyName};
use crate::config::rate::parse_rate;
use crate::config::ConfigError;

use super::schema::{flag, located, RawDescriptor, RawDocument, RawRateLimit, Text};
use super::tree::{Children, Domain, KeyGroup, Node, NodeId, Rule, RuleLimit};
use super::unit::Unit;
use super::wildcard::Pattern;
use super::{MAX_ENTRIES, MAX_LIMITS_PER_RULE};

/// A rule before its `replaces` names are resolved to indices.
struct Pending {
    rule: Rule,
    replaces: Vec<String>,
}

struct Loader<'a> {
    label: &'a str,
    nodes: Vec<Node>,
    rules: Vec<Pending>,
}

/// Compile one document.
pub(super) fn load_document(label: &str, raw: RawDocument) -> Result<Domain, ConfigError> {
    let domain = match raw.domain {
        Some(Text(d)) if !d.is_empty() => d,
        _ => {
            return Err(located(
                label,
                "domain",
                "a configuration document needs a non-empty domain",
            ))
        }
    };
    let mut loader = Loader {
        label,
        nodes: Vec::new(),
        rules: Vec::new(),
    };
    let root = loader.level(raw.descriptors.unwrap_or_default(), "", &domain, &[], 0)?;
    let Loader { nodes, rules, .. } = loader;

    let mut names: Vec<String> = rules
        .iter()
        .filter_map(|p| p.rule.name.map(|n| n.as_str().to_string()))
        .collect();
    names.sort();
    names.dedup();
    let id = |n: &str| {
        names
            .binary_search_by(|x| x.as_str().cmp(n))
            .ok()
            .map(|i| i as u32)
    };
    let rules = rules
        .into_iter()
        .map(|Pending { mut rule, replaces }| {
            rule.name_id = rule.name.and_then(|n| id(n.as_str()));
            rule.replaces = replaces.iter().filter_map(|n| id(n)).collect();
            rule.replaces.sort_unstable();
            rule.replaces.dedup();
            rule
        })
        .collect();
    let override_name = PolicyName::intern(&header_safe(&format!("{domain}.limit_override")));
    Ok(Domain {
        name: domain,
        origin: label.to_string(),
        root,
        nodes,
        rules,
        names,
        override_name,
    })
}

/// `e` about the rate string `text`, naming `written` (the fields it was built from) instead.
pub(super) fn shown_as(mut e: ConfigError, text: &str, written: &str) -> ConfigError {
    if let Some(rest) = e.message.strip_prefix(&format!("{text:?}: ")) {
        e.message = format!("{written}: {rest}");
    }
    e
}

fn sub(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

impl Loader<'_> {
    fn err(&self, path: &str, message: impl Into<String>) -> ConfigError {
        located(self.label, path, message)
    }

    /// Compile one `descriptors` list (at `path`, under the stats-style key `full_key`, the
    /// share patterns of the levels above in `shared`, `depth` levels deep).
    fn level(
        &mut self,
        list: Vec<RawDescriptor>,
        path: &str,
        full_key: &str,
        shared: &[Option<String>],
        depth: usize,
    ) -> Result<Children, ConfigError> {
        let list_path = sub(path, "descriptors");
        if !list.is_empty() && depth >= MAX_ENTRIES {
            return Err(self.err(
                &list_path,
                format!("descriptors nested deeper than {MAX_ENTRIES} levels can never match (a request descriptor has at most {MAX_ENTRIES} entries)"),
            ));
        }
        // Groups by key (sorted by the map); (key, value) -> index, for duplicate detection.
        let mut groups: BTreeMap<String, KeyGroup> = BTreeMap::new();
        let mut seen: HashMap<(String, Option<String>), usize> = HashMap::new();
        for (i, d) in list.into_iter().enumerate() {
            let p = format!("{list_path}[{i}]");
            let key = match &d.key {
                Some(Text(k)) if !k.is_empty() => k.clone(),
                _ => return Err(self.err(&sub(&p, "key"), "descriptor has an empty key")),
            };
            let value = d
                .value
                .as_ref()
                .map(|t| t.0.clone())
                .filter(|v| !v.is_empty());
            if let Some(j) = seen.insert((key.clone(), value.clone()), i) {
                let (shown, what) = match &value {
                    Some(v) => (
                        format!("{full_key}.{key}_{v}"),
                        format!("key {key:?} with value {v:?}"),
                    ),
                    None => (
                        format!("{full_key}.{key}"),
                        format!("key {key:?} without a value"),
                    ),
                };
                return Err(self.err(
                    &p,
                    format!("duplicate descriptor composite key {shown:?} ({what} is also at {list_path}[{j}])"),
                ));
            }

            if flag(d.quota_mode) {
                return Err(self.err(
                    &sub(&p, "quota_mode"),
                    "quota_mode is not supported (a quota descriptor only denies when every quota descriptor of the request is over; ratewall decides every descriptor of a request all-or-nothing)",
                ));
            }
            let pattern = value.as_deref().and_then(Pattern::new);
            if flag(d.share_threshold) && pattern.is_none() {
                return Err(self.err(
                    &sub(&p, "share_threshold"),
                    format!("share_threshold can only be used with a wildcard value (containing '*'); key {key:?} has value {value:?}"),
                ));
            }
            let node_key = match &value {
                Some(v) => format!("{full_key}.{key}_{v}"),
                None => format!("{full_key}.{key}"),
            };
            let mut node_shared = shared.to_vec();
            node_shared.push(if flag(d.share_threshold) {
                value.clone()
            } else {
                None
            });

            let rule = match d.rate_limit {
                None => None,
                Some(rl) => {
                    let rule = self.rule(
                        rl,
                        &sub(&p, "rate_limit"),
                        &node_key,
                        &node_shared,
                        flag(d.shadow_mode),
                    )?;
                    self.rules.push(rule);
                    Some((self.rules.len() - 1) as u32)
                }
            };
            let grand = self.level(
                d.descriptors.unwrap_or_default(),
                &p,
                &node_key,
                &node_shared,
                depth + 1,
            )?;
            let id = self.nodes.len() as NodeId;
            self.nodes.push(Node {
                rule,
                children: grand,
            });

            let g = groups.entry(key.clone()).or_insert_with(|| KeyGroup {
                key,
                exact: Vec::new(),
                wildcards: Vec::new(),
                bare: None,
            });
            match (value, pattern) {
                (None, _) => g.bare = Some(id),
                (Some(_), Some(pat)) => g.wildcards.push((pat, id)),
                (Some(v), None) => g.exact.push((v, id)),
            }
        }
        let mut groups: Vec<KeyGroup> = groups.into_values().collect();
        for g in &mut groups {
            // No repeats (checked above): an unstable sort is deterministic.
            g.exact.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(Children { groups })
    }

    /// Compile one `rate_limit` block at `path` of the node whose stats-style key is `node_key`.
    fn rule(
        &self,
        rl: RawRateLimit,
        path: &str,
        node_key: &str,
        shared: &[Option<String>],
        shadow: bool,
    ) -> Result<Pending, ConfigError> {
        let name = rl.name.map(|t| t.0).filter(|n| !n.is_empty());
        let mut replaces = Vec::new();
        for (i, r) in rl.replaces.iter().flatten().enumerate() {
            let rp = format!("{path}.replaces[{i}].name");
            match &r.name {
                Some(Text(n)) if !n.is_empty() => {
                    if Some(n) == name.as_ref() {
                        return Err(self.err(
                            &rp,
                            format!("replaces names this rule's own name {n:?} (a rule cannot replace itself)"),
                        ));
                    }
                    replaces.push(n.clone());
                }
                _ => return Err(self.err(&rp, "a replaces entry needs a non-empty name")),
            }
        }
        let algorithm = match &rl.algorithm {
            None => None,
            Some(a) => Some(Algorithm::from_name(a).ok_or_else(|| {
                self.err(
                    &sub(path, "algorithm"),
                    format!("{a:?} is not valid; expected one of \"fixed_window\", \"sliding_window\", \"sliding_window_counter\", \"token_bucket\", \"gcra\""),
                )
            })?),
        };
        let unit_text = rl.unit.as_ref().map(|t| t.0.as_str());
        let mut rate_path = path.to_string();
        let (limit, unit) = if flag(rl.unlimited) {
            for (field, present) in [
                ("unit", unit_text.is_some_and(|u| !u.is_empty())),
                ("requests_per_unit", rl.requests_per_unit.is_some()),
                ("rate", rl.rate.is_some()),
                ("algorithm", rl.algorithm.is_some()),
            ] {
                if present {
                    return Err(self.err(
                        &sub(path, field),
                        format!("should not be given when unlimited is true (an unlimited rule has no {field})"),
                    ));
                }
            }
            (RuleLimit::Unlimited, None)
        } else if let Some(text) = &rl.rate {
            for (field, present) in [
                ("unit", rl.unit.is_some()),
                ("requests_per_unit", rl.requests_per_unit.is_some()),
            ] {
                if present {
                    return Err(self.err(
                        &sub(path, field),
                        format!(
                            "give either rate ({text:?}) or unit with requests_per_unit, not both"
                        ),
                    ));
                }
            }
            rate_path = sub(path, "rate");
            let limits = self.limits(&rate_path, text, algorithm, name.as_deref(), node_key)?;
            (limits, None)
        } else {
            let Some(unit_text) = unit_text else {
                return Err(self.err(
                    &sub(path, "unit"),
                    "is missing (a rate_limit needs unit and requests_per_unit, a rate string, or unlimited: true)",
                ));
            };
            let unit = Unit::from_config(unit_text).ok_or_else(|| {
                self.err(
                    &sub(path, "unit"),
                    format!("invalid rate limit unit {unit_text:?}; expected one of second, minute, hour, day, week, month, year (any case)"),
                )
            })?;
            rate_path = sub(path, "requests_per_unit");
            let rpu = match rl.requests_per_unit {
                None => return Err(self.err(&rate_path, "is missing")),
                Some(0) => {
                    if let Some(a) = &rl.algorithm {
                        return Err(self.err(
                            &sub(path, "algorithm"),
                            format!("should not be given with requests_per_unit: 0 (a rule that blocks every request has no algorithm; got {a:?})"),
                        ));
                    }
                    return Ok(Pending {
                        rule: Rule {
                            path: located(self.label, &rate_path, "").path,
                            name: name.map(|n| PolicyName::intern(&n)),
                            name_id: None,
                            replaces: Vec::new(),
                            limit: RuleLimit::Blocked,
                            shadow,
                            shared: if shared.iter().any(Option::is_some) {
                                shared.to_vec()
                            } else {
                                Vec::new()
                            },
                            unit: Some(unit),
                        },
                        replaces,
                    });
                }
                Some(n) => n,
            };
            let text = format!("{rpu}/{}", unit.rate_word());
            let written = format!("{rpu} per {unit_text}");
            let mut limits = self
                .limits(&rate_path, &text, algorithm, name.as_deref(), node_key)
                .map_err(|e| shown_as(e, &text, &written))?;
            if let RuleLimit::Limits { written: w, .. } = &mut limits {
                *w = Some(written);
            }
            (limits, Some(unit))
        };
        let shared = if shared.iter().any(Option::is_some) {
            shared.to_vec()
        } else {
            Vec::new()
        };
        Ok(Pending {
            rule: Rule {
                path: located(self.label, &rate_path, "").path,
                name: name.map(|n| PolicyName::intern(&n)),
                name_id: None,
                replaces: Vec::new(),
                limit,
                shadow,
                shared,
                unit,
            },
            replaces,
        })
    }

    /// The limits of a rate string (`path` names it in errors). With an explicit algorithm the
    /// limits are checked against it now; otherwise when the config's algorithm is known.
    fn limits(
        &self,
        path: &str,
        text: &str,
        algorithm: Option<Algorithm>,
        name: Option<&str>,
        node_key: &str,
    ) -> Result<RuleLimit, ConfigError> {
        let rate = match algorithm {
            Some(a) => rate_for(path, text, a).map_err(|e| self.err(path, e.message))?,
            None => parse_rate(text).map_err(|e| self.err(path, format!("{text:?}: {e}")))?,
        };
        if rate.limits().len() > MAX_LIMITS_PER_RULE {
            return Err(self.err(
                path,
                format!(
                    "{text:?} has {} limits; a rule may have at most {MAX_LIMITS_PER_RULE}",
                    rate.limits().len()
                ),
            ));
        }
        let base = header_safe(name.unwrap_or(node_key));
        let multi = rate.limits().len() > 1;
        let limits = rate
            .limits()
            .iter()
            .map(|l| {
                let n = if multi {
                    format!("{base}-{}s", l.window_secs())
                } else {
                    base.clone()
                };
                (*l, PolicyName::intern(&n))
            })
            .collect();
        Ok(RuleLimit::Limits {
            limits,
            algorithm,
            rate_text: text.to_string(),
            written: None,
        })
    }
}
