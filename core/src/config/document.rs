//! Reading configuration documents (YAML, JSON) into a `serde_json::Value`, strictly and at a
//! bounded cost, whatever the file holds:
//!
//! * **Size**: at most [`MAX_CONFIG_BYTES`] (4 MiB); a larger document is refused before parsing.
//! * **Depth**: at most [`MAX_DEPTH`] (72: room for envoyproxy/ratelimit's 32-level descriptor trees, two levels
//!   each; a debug build's parser overflows a 2 MiB thread stack near 96 levels, measured) nested mappings and lists. YAML is read by
//!   `serde-saphyr`, whose parser enforces the bound while it reads (a 200 KB file nested 100,000
//!   deep is refused in well under 10 ms; `serde_yaml` 0.9 and its forks took 1-47 s on such files
//!   before failing); JSON by `serde_json` with the same bound in [`StrictValue`].
//! * **Duplicate keys** at any depth are an error naming the key and its line (YAML's parsers
//!   and `serde_json` otherwise keep the last value silently).
//!
//! Errors are [`ConfigError`]s at `<root>` naming the problem, the bound and the line.

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::ConfigError;

/// Largest configuration document accepted (bytes).
pub const MAX_CONFIG_BYTES: usize = 4 << 20;
/// Deepest nesting of mappings and lists accepted.
pub const MAX_DEPTH: usize = 72;

fn err(message: String) -> ConfigError {
    ConfigError::new("<root>", message)
}

fn check_size(len: usize) -> Result<(), ConfigError> {
    if len > MAX_CONFIG_BYTES {
        return Err(err(format!(
            "the document is {len} bytes, above the bound of {MAX_CONFIG_BYTES} bytes (4 MiB)"
        )));
    }
    Ok(())
}

/// Parse JSON text strictly (size, depth, duplicate keys: see the module doc).
pub fn json(text: &[u8]) -> Result<Value, ConfigError> {
    check_size(text.len())?;
    let mut de = serde_json::Deserializer::from_slice(text);
    let v = StrictValue { depth: 0 }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| err(format!("not valid JSON: {e}")))?;
    Ok(v)
}

/// A `serde_json::Value` built from any self-describing deserializer, refusing duplicate keys
/// and nesting deeper than [`MAX_DEPTH`].
#[derive(Clone, Copy)]
pub struct StrictValue {
    /// Mappings and lists entered so far.
    pub depth: usize,
}

impl StrictValue {
    fn deeper<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!(
                "nesting deeper than {MAX_DEPTH} levels (the bound on configuration documents)"
            )));
        }
        Ok(Self {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a configuration value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.deeper()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.deeper()?;
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(A::Error::custom(format!(
                    "duplicate key {k:?} (every key may appear once)"
                )));
            }
            let v = map.next_value_seed(inner)?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(feature = "yaml")]
mod yaml_impl {
    use serde_saphyr::{Budget, DuplicateKeyPolicy, Error, Options};

    use super::*;

    fn options() -> Options {
        let mut budget = Budget::default();
        budget.max_depth = MAX_DEPTH;
        budget.flow_nesting_limit = MAX_DEPTH;
        let mut o = Options::default();
        o.budget = Some(budget);
        o.duplicate_keys = DuplicateKeyPolicy::Error;
        // YAML 1.2 core schema, as serde_yaml 0.9 read it: `yes`/`no`/`on`/`off` are strings,
        // and so are `0755` and `1_000`.
        o.strict_booleans = true;
        o.leading_zero_numbers_as_strings = true;
        o.underscored_numbers_as_strings = true;
        o
    }

    /// The message of a YAML error: duplicate keys and depth named with their bound, the rest
    /// as the parser says it, on one line (no source snippet).
    fn message(e: &Error) -> String {
        let e = e.without_snippet();
        let at = e
            .location()
            .map(|l| format!(" at line {} column {}", l.line(), l.column()))
            .unwrap_or_default();
        match e {
            Error::DuplicateMappingKey { key: Some(k), .. } => {
                format!("duplicate key {k:?}{at} (every key may appear once)")
            }
            Error::DuplicateMappingKey { key: None, .. } => {
                format!("duplicate key{at} (every key may appear once)")
            }
            _ => {
                let text = e.to_string();
                let lower = text.to_ascii_lowercase();
                if lower.contains("depth") || lower.contains("recursion") || lower.contains("nest")
                {
                    format!(
                        "nesting deeper than {MAX_DEPTH} levels{at} (the bound on configuration documents)"
                    )
                } else {
                    format!("not valid YAML: {}", text.replace('\n', " "))
                }
            }
        }
    }

    /// Parse one YAML document strictly (size, depth, duplicate keys: see the module doc). An
    /// empty document is `null`.
    pub fn yaml(text: &str) -> Result<Value, ConfigError> {
        check_size(text.len())?;
        serde_saphyr::from_str_with_options::<Value>(text, options()).map_err(|e| err(message(&e)))
    }

    /// Parse a YAML stream of one or more `---`-separated documents strictly (as
    /// envoyproxy/ratelimit configuration files may hold several).
    pub fn yaml_documents(text: &str) -> Result<Vec<Value>, ConfigError> {
        check_size(text.len())?;
        serde_saphyr::from_multiple_with_options::<Value>(text, options())
            .map_err(|e| err(message(&e)))
    }

    /// Parse a YAML stream of one or more documents strictly into `T` each (the typed reading
    /// of files whose scalars must keep their written text, e.g. envoyproxy/ratelimit
    /// documents). Empty documents are skipped. Errors give the parser's line and column.
    pub fn yaml_documents_as<T: serde::de::DeserializeOwned>(
        text: &str,
    ) -> Result<Vec<T>, ConfigError> {
        check_size(text.len())?;
        serde_saphyr::from_multiple_with_options::<T>(text, options()).map_err(|e| err(message(&e)))
    }

    /// Render a value as YAML (the effective configuration printed by `--check-config`).
    pub fn to_yaml(v: &Value) -> String {
        serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(feature = "yaml")]
pub use yaml_impl::{to_yaml, yaml, yaml_documents, yaml_documents_as};
