//! Wildcard values: `*` anywhere in a configured value, each matching zero or more bytes.
//!
//! The pattern is split on `*` once, at load time, into literal segments `s0 * s1 * ... * sn`
//! (`n >= 1`). A value `v` matches iff
//!
//! * `v` starts with `s0` and ends with `sn`, and `len(v) >= len(s0) + ... + len(sn)` (so the
//!   prefix and the suffix do not overlap), and
//! * the middle segments `s1 .. s(n-1)` occur in order, without overlapping, in the part of `v`
//!   between that prefix and that suffix.
//!
//! Taking the leftmost occurrence of each middle segment is complete for patterns whose only
//! metacharacter is `*`: if any placement exists, the leftmost one leaves the most room for the
//! segments after it. Matching allocates nothing; it is linear in `len(v)` per middle segment.
//! This is envoyproxy/ratelimit's rule (trailing, middle and several `*`), applied to the value
//! alone: the entry's key must be equal (see the module doc of `super`).

/// A compiled wildcard value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<String>,
    fixed_len: usize,
}

impl Pattern {
    /// A pattern, if `text` contains `*`.
    pub fn new(text: &str) -> Option<Self> {
        if !text.contains('*') {
            return None;
        }
        let segments: Vec<String> = text.split('*').map(str::to_string).collect();
        let fixed_len = segments.iter().map(String::len).sum();
        Some(Self {
            text: text.to_string(),
            segments,
            fixed_len,
        })
    }

    /// The pattern as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `value` matches (module doc).
    pub fn matches(&self, value: &str) -> bool {
        let (Some(first), Some(last)) = (self.segments.first(), self.segments.last()) else {
            return false;
        };
        if value.len() < self.fixed_len || !value.starts_with(first.as_str()) {
            return false;
        }
        if !value.ends_with(last.as_str()) {
            return false;
        }
        // `fixed_len <= len` guarantees `first.len() <= len - last.len()`.
        let Some(mut middle) = value.as_bytes().get(first.len()..value.len() - last.len()) else {
            return false;
        };
        let inner = &self.segments[1..self.segments.len() - 1];
        for seg in inner {
            match find(middle, seg.as_bytes()) {
                Some(at) => middle = &middle[at + seg.len()..],
                None => return false,
            }
        }
        true
    }
}

/// The first index of `needle` in `hay` (byte-wise; `needle` may be empty).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn m(p: &str, v: &str) -> bool {
        Pattern::new(p).unwrap().matches(v)
    }

    #[test]
    fn trailing_middle_and_several() {
        assert!(m("foo*", "foo"));
        assert!(m("foo*", "foo1"));
        assert!(!m("foo*", "fo"));
        assert!(m("bar*b", "barb"));
        assert!(m("bar*b", "bar123b"));
        assert!(!m("bar*b", "bar"));
        assert!(!m("bar*b", "xbarb"));
        assert!(!m("bar*b", "bara"));
        assert!(m("foo*bar*baz", "foobarbaz"));
        assert!(m("foo*bar*baz", "foo1bar2baz"));
        assert!(!m("foo*bar*baz", "foo1baz"));
        assert!(!m("aa*aa", "aaa"));
        assert!(m("aa*aa", "aaaa"));
        assert!(m("*", ""));
        assert!(m("**", "x"));
        assert!(m("a*b*c", "abc"));
        assert!(!m("a*bb*c", "abc"));
        assert!(m("é*", "éa"));
        assert!(Pattern::new("plain").is_none());
    }
}
