//! The envoyproxy/ratelimit configuration document as written (serde), and reading documents
//! from YAML text or from inline JSON values.
//!
//! Every field of envoyproxy/ratelimit's format is accepted with its type; our extensions sit on
//! the same objects; unknown fields and duplicate keys are errors (serde names them, with the
//! path and, for YAML, the line). Scalars read as text (`domain`, `key`, `value`, `name`,
//! `unit`) keep the text as written in YAML files (`key: 443` is `"443"`, as envoyproxy/ratelimit's
//! YAML library gives it; `value: 1.10` is `"1.10"`, which envoyproxy/ratelimit refuses unquoted);
//! booleans also accept the YAML 1.1 spellings that library accepts (`yes`, `on`, `n`, ...).

use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;

use crate::config::ConfigError;

/// One configuration document: one domain.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a document mapping {domain, descriptors}"
)]
pub(super) struct RawDocument {
    pub domain: Option<Text>,
    pub descriptors: Option<Vec<RawDescriptor>>,
}

/// One node of the descriptor tree.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a descriptor mapping {key, value, rate_limit, descriptors, ...}"
)]
pub(super) struct RawDescriptor {
    pub key: Option<Text>,
    pub value: Option<Text>,
    pub rate_limit: Option<RawRateLimit>,
    pub descriptors: Option<Vec<RawDescriptor>>,
    pub shadow_mode: Option<Flag>,
    pub quota_mode: Option<Flag>,
    /// Stats naming in envoyproxy/ratelimit (per-value stats keys); accepted, no effect here:
    /// metrics are per policy name.
    #[allow(dead_code)]
    pub detailed_metric: Option<Flag>,
    /// Stats naming in envoyproxy/ratelimit; accepted, no effect here.
    #[allow(dead_code)]
    pub value_to_metric: Option<Flag>,
    pub share_threshold: Option<Flag>,
    /// Response metadata (envoyproxy/ratelimit returns it in dynamic metadata; we do not).
    #[allow(dead_code)]
    pub metadata: Option<IgnoredAny>,
}

/// A `rate_limit` block.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rate_limit mapping {unit, requests_per_unit, ...}"
)]
pub(super) struct RawRateLimit {
    pub requests_per_unit: Option<u64>,
    pub unit: Option<Text>,
    pub unlimited: Option<Flag>,
    pub name: Option<Text>,
    pub replaces: Option<Vec<RawReplaces>>,
    /// Extension: a rate string (`"100/15m"`, `"5/s;100/m"`) instead of `unit` and
    /// `requests_per_unit`.
    pub rate: Option<String>,
    /// Extension: this rule's algorithm (default: the config's `algorithm`).
    pub algorithm: Option<String>,
}

/// One `replaces` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a replaces entry {name}")]
pub(super) struct RawReplaces {
    pub name: Option<Text>,
}

/// A scalar read as its text (strings; numbers and booleans as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        // YAML hands plain scalars (`1.10`, `true`) to `deserialize_str` as written.
        d.deserialize_str(V)
    }
}

/// A boolean: `true`/`false`, or one of the YAML 1.1 spellings (`y`, `yes`, `on`, `n`, `no`,
/// `off` in lower, title or upper case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Flag, E> {
                match v {
                    "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True"
                    | "TRUE" => Ok(Flag(true)),
                    "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False"
                    | "FALSE" => Ok(Flag(false)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Flag value, `false` when absent.
pub(super) fn flag(f: Option<Flag>) -> bool {
    f.is_some_and(|f| f.0)
}

/// The documents of one YAML text, in order, with their 1-based position (empty documents,
/// e.g. after a trailing `---`, are skipped). Errors name `origin`, the document when the text
/// has several, and the path in it.
pub(super) fn yaml_documents(
    origin: &str,
    text: &str,
) -> Result<Vec<(String, RawDocument)>, ConfigError> {
    use crate::config::document;
    let at_origin = |e: ConfigError| ConfigError::new(origin, e.message);
    // The strict reading first (size, nesting, duplicate keys at any depth), as every config.
    let values = document::yaml_documents(text).map_err(at_origin)?;
    let several = values.len() > 1;
    let label = |i: usize| {
        if several {
            format!("{origin} (document {})", i + 1)
        } else {
            origin.to_string()
        }
    };
    for (i, v) in values.iter().enumerate() {
        if !(v.is_object() || v.is_null()) {
            let got = if v.is_array() { "sequence" } else { "scalar" };
            return Err(located(
                &label(i),
                "",
                format!("invalid type: {got}, expected a document mapping {{domain, descriptors}}"),
            ));
        }
    }
    // Then the typed reading, which keeps scalars as written (`value: 1.10` is "1.10").
    let docs = match document::yaml_documents_as::<Option<RawDocument>>(text) {
        Ok(docs) => docs,
        Err(e) => {
            // Name the path of the value at fault: the same type check over the parsed values.
            for (i, v) in values.iter().enumerate() {
                serde_path_to_error::deserialize::<_, Option<RawDocument>>(v)
                    .map_err(|e| serde_error(&label(i), e))?;
            }
            return Err(at_origin(e));
        }
    };
    let out: Vec<(String, RawDocument)> = docs
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, d)| (label(i), d))
        .collect();
    if out.is_empty() {
        return Err(ConfigError::new(
            &format!("{origin}: domain"),
            "the file has no configuration document (expected `domain:` and `descriptors:`)",
        ));
    }
    Ok(out)
}

/// The documents of the core's inline `domains:` list. Numbers and booleans in text fields are
/// taken as written (`443`, `true`); a fractional number there is an error, since its written
/// text (`1.10`) is no longer known: quote it.
pub(super) fn inline_documents(
    value: &serde_json::Value,
) -> Result<Vec<(String, RawDocument)>, ConfigError> {
    let serde_json::Value::Array(list) = value else {
        return Err(ConfigError::new(
            "domains",
            "expected a list of envoyproxy/ratelimit documents ({domain, descriptors})",
        ));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, doc) in list.iter().enumerate() {
        let label = format!("domains[{i}]");
        let mut doc = doc.clone();
        scalars_as_text(&mut doc, &label, "")?;
        let raw: RawDocument =
            serde_path_to_error::deserialize(&doc).map_err(|e| serde_error(&label, e))?;
        out.push((label, raw));
    }
    Ok(out)
}

/// The fields read as [`Text`].
const TEXT_FIELDS: [&str; 5] = ["domain", "key", "value", "name", "unit"];

fn scalars_as_text(v: &mut serde_json::Value, label: &str, path: &str) -> Result<(), ConfigError> {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (k, field) in map.iter_mut() {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if TEXT_FIELDS.contains(&k.as_str()) {
                    match field {
                        Value::Number(n) if n.is_f64() => {
                            return Err(located(label, &here, format!(
                                "{n} is a fractional number whose written text is lost; quote it (e.g. \"{n}\") so it matches request values exactly"
                            )));
                        }
                        Value::Number(n) => *field = Value::String(n.to_string()),
                        Value::Bool(b) => *field = Value::String(b.to_string()),
                        _ => {}
                    }
                }
                if k != "metadata" {
                    scalars_as_text(field, label, &here)?;
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                scalars_as_text(item, label, &format!("{path}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A deserialization error at its path. YAML messages repeat (part of) the path: dropped.
fn serde_error<E: std::fmt::Display>(label: &str, e: serde_path_to_error::Error<E>) -> ConfigError {
    let path = e.path().to_string();
    let message = e.into_inner().to_string();
    let message = match message.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') && path.starts_with(head) => rest.to_string(),
        _ => message,
    };
    located(label, &path, message)
}

/// An error at `path` (possibly empty: the document itself) of document `label`.
pub(super) fn located(label: &str, path: &str, message: impl Into<String>) -> ConfigError {
    let path = if path.is_empty() || path == "." {
        label.to_string()
    } else if label.starts_with("domains[") {
        format!("{label}.{path}")
    } else {
        format!("{label}: {path}")
    };
    ConfigError::new(&path, message)
}
