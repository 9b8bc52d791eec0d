//! Storage keys: an injective, bounded encoding of untrusted identities.
//!
//! ```text
//! key       = prefix ":" tag ":" algorithm ":" window_secs ":" tenant dimension
//! tag       = "{" 16 hex digits of FNV-1a-64("t" tenant) "}"  |  "{-}"     (Redis Cluster hash tag)
//! tenant    = "t-" | "t" enc(tenant)
//! dimension = ":u" enc(user) | ":s" enc(user) enc(server) | ":T" | ":k" enc(tool)
//!           | ":d" enc(limit-name) count ":" enc(value)*
//!           | ":r" enc(domain) count ":" entry*                    (descriptor rules, RLS)
//! entry     = enc(key) ( "v" enc(value) | "p" enc(shared wildcard pattern) )
//! enc(x)    = len ":" x               if x has at most 64 bytes   (len in decimal)
//!           | "#" hex(SHA-256(x))     otherwise
//! ```
//!
//! Reading left to right, every component is self-delimiting (a length prefix, a fixed-width hash
//! or a fixed tag), so two different (tenant, dimension, user, server, tool, descriptor) tuples
//! never give the same key, whatever bytes the identities contain (`alice:server:gw-9` is not
//! alice's per-server key), unless SHA-256 collides. Keys are bounded (every component at most 67
//! bytes). The algorithm and window are part of the key, so changing either never reads another
//! algorithm's state. Every key of one request shares the tenant's hash tag, so one Redis script
//! may touch all of them on a cluster.

use sha2::{Digest, Sha256};

use crate::algorithm::Algorithm;

#[cfg(feature = "descriptors")]
use crate::config::descriptors::Entry;

/// Components longer than this are replaced by their SHA-256.
pub const MAX_RAW_COMPONENT: usize = 64;

/// The identity part of one dimension's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DimKey<'a> {
    /// Per user.
    User(&'a str),
    /// Per (user, server).
    UserServer(&'a str, &'a str),
    /// Per tenant (the tenant itself is the key's scope).
    Tenant,
    /// Per tool or prompt (normalised name).
    Tool(&'a str),
    /// A named descriptor limit and the values of its descriptors, in configured order.
    Descriptor(&'a str, &'a [&'a str]),
    /// A descriptor rule of an RLS domain (see [`crate::config::descriptors`]): the domain and
    /// every entry of the request descriptor, in request order. `shared[i]`, when present and
    /// `Some`, is the wildcard pattern that replaces entry `i`'s value (`share_threshold`: every
    /// value matching it shares one counter); it is tagged apart from values, so a request value
    /// that spells the pattern never lands on the shared counter.
    #[cfg(feature = "descriptors")]
    Rls {
        /// The request's domain.
        domain: &'a str,
        /// The request descriptor's entries, in order.
        entries: &'a [Entry<'a>],
        /// Per entry: the shared pattern replacing its value (may be shorter than `entries`).
        shared: &'a [Option<String>],
    },
}

/// Lowercase hexadecimal digits.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// `n` in decimal, without the formatting machinery (keys are built on every request; a few
/// bytes of code, where the `itoa` crate costs ~250 bytes in the size-bound wasm filter).
fn push_decimal(out: &mut String, n: u64) {
    let digit = |d: u64| char::from(b'0' + (d % 10) as u8);
    // Component lengths and entry counts: one or two digits.
    if n < 10 {
        out.push(digit(n));
        return;
    }
    if n < 100 {
        out.push(digit(n / 10));
        out.push(digit(n));
        return;
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    while n > 0 {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend(digits[i..].iter().map(|&d| char::from(d)));
}

fn enc(out: &mut String, x: &str) {
    if x.len() <= MAX_RAW_COMPONENT {
        push_decimal(out, x.len() as u64);
        out.push(':');
        out.push_str(x);
    } else {
        out.push('#');
        for b in Sha256::digest(x.as_bytes()) {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// FNV-1a, 64 bit: only places keys on a Redis Cluster slot (no security role).
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Room beyond 64 bytes a dimension's key part may need (so building a key allocates once).
#[cfg(feature = "descriptors")]
fn extra_len(dim: &DimKey<'_>) -> usize {
    let DimKey::Rls {
        domain, entries, ..
    } = dim
    else {
        return 0;
    };
    // enc(x) is at most 65 bytes, plus a length of at most 2 digits and ':'.
    let enc_len = |x: &str| x.len().min(MAX_RAW_COMPONENT + 1) + 3;
    enc_len(domain)
        + entries
            .iter()
            .map(|e| enc_len(e.key) + enc_len(e.value) + 1)
            .sum::<usize>()
}

#[cfg(not(feature = "descriptors"))]
fn extra_len(_: &DimKey<'_>) -> usize {
    0
}

/// Build the storage key of one (dimension, limit) cell. See the module doc for the grammar.
///
/// ```
/// use ratewall_core::key::{cell_key, DimKey};
/// use ratewall_core::Algorithm;
/// let a = cell_key("rl", None, DimKey::User("alice:server:gw-9"), Algorithm::Gcra, 60);
/// let b = cell_key("rl", None, DimKey::UserServer("alice", "gw-9"), Algorithm::Gcra, 60);
/// assert_ne!(a, b);
/// assert_eq!(cell_key("rl", None, DimKey::User("bob"), Algorithm::FixedWindow, 60), "rl:{-}:fw:60:t-:u3:bob");
/// ```
pub fn cell_key(
    prefix: &str,
    tenant: Option<&str>,
    dim: DimKey<'_>,
    algorithm: Algorithm,
    window_secs: u64,
) -> String {
    let mut k = String::with_capacity(prefix.len() + 64 + extra_len(&dim));
    k.push_str(prefix);
    match tenant {
        Some(t) => {
            let h = fnv1a64(&[b"t", t.as_bytes()]);
            k.push_str(":{");
            for shift in (0..16).rev() {
                k.push(char::from(HEX[((h >> (shift * 4)) & 15) as usize]));
            }
            k.push('}');
        }
        None => k.push_str(":{-}"),
    }
    k.push(':');
    k.push_str(algorithm.key_tag());
    k.push(':');
    push_decimal(&mut k, window_secs);
    k.push(':');
    match tenant {
        Some(t) => {
            k.push('t');
            enc(&mut k, t);
        }
        None => k.push_str("t-"),
    }
    match dim {
        DimKey::User(u) => {
            k.push_str(":u");
            enc(&mut k, u);
        }
        DimKey::UserServer(u, s) => {
            k.push_str(":s");
            enc(&mut k, u);
            enc(&mut k, s);
        }
        DimKey::Tenant => k.push_str(":T"),
        DimKey::Tool(t) => {
            k.push_str(":k");
            enc(&mut k, t);
        }
        DimKey::Descriptor(name, values) => {
            k.push_str(":d");
            enc(&mut k, name);
            push_decimal(&mut k, values.len() as u64);
            k.push(':');
            for v in values {
                enc(&mut k, v);
            }
        }
        #[cfg(feature = "descriptors")]
        DimKey::Rls {
            domain,
            entries,
            shared,
        } => {
            k.push_str(":r");
            enc(&mut k, domain);
            push_decimal(&mut k, entries.len() as u64);
            k.push(':');
            for (i, e) in entries.iter().enumerate() {
                enc(&mut k, e.key);
                match shared.get(i).and_then(Option::as_deref) {
                    Some(pattern) => {
                        k.push('p');
                        enc(&mut k, pattern);
                    }
                    None => {
                        k.push('v');
                        enc(&mut k, e.value);
                    }
                }
            }
        }
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_components_are_hashed_and_bounded() {
        let long = "x".repeat(10_000);
        let k = cell_key("rl", Some(&long), DimKey::User(&long), Algorithm::Gcra, 1);
        assert!(k.len() < 200, "{k}");
        assert!(k.contains('#'));
    }

    #[test]
    fn decimal_writer_is_display() {
        for n in [
            0,
            1,
            9,
            10,
            42,
            99,
            100,
            101,
            999,
            1_000,
            86_400,
            31_622_400,
            u64::MAX,
        ] {
            let mut s = String::from("x");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
    }

    /// The formatting-free writers give what `format!` gives (keys must not change).
    #[test]
    fn keys_are_those_format_would_build() {
        let long = "é".repeat(40);
        for tenant in ["acme", "", long.as_str()] {
            let k = cell_key(
                "rl",
                Some(tenant),
                DimKey::User(&long),
                Algorithm::Gcra,
                86_400,
            );
            let tag = format!("{:016x}", fnv1a64(&[b"t", tenant.as_bytes()]));
            let hash = |x: &str| {
                Sha256::digest(x.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            };
            let t = if tenant.len() > 64 {
                format!("#{}", hash(tenant))
            } else {
                format!("{}:{tenant}", tenant.len())
            };
            assert_eq!(k, format!("rl:{{{tag}}}:gcra:86400:t{t}:u#{}", hash(&long)));
        }
    }

    #[test]
    fn tenant_scopes_and_shares_hash_tag() {
        let a = cell_key("rl", Some("acme"), DimKey::User("u"), Algorithm::Gcra, 1);
        let b = cell_key(
            "rl",
            Some("acme"),
            DimKey::Tool("echo"),
            Algorithm::Gcra,
            60,
        );
        let c = cell_key("rl", Some("other"), DimKey::User("u"), Algorithm::Gcra, 1);
        let tag = |k: &str| k[k.find('{').unwrap_or(0)..=k.find('}').unwrap_or(0)].to_string();
        assert_eq!(tag(&a), tag(&b));
        assert_ne!(tag(&a), tag(&c));
        assert_ne!(a, c);
    }
}
