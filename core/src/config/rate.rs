//! Rate strings: `"60/m"`, `"100/15m"`, `"10 per minute"`, `"5/s;100/m"`.
//!
//! Grammar (trimmed, case-insensitive):
//!
//! ```text
//! rate    := limit (';' limit)*
//! limit   := count ( '/' | ' per ' ) [multiplier] unit
//! count   := ['+'] ascii-digit+          1 ..= MAX_COUNT (4,294,967,295)
//! unit    := s|sec|secs|second|seconds | m|min|mins|minute|minutes
//!          | h|hr|hrs|hour|hours | d|day|days | w|week|weeks (7 d)
//!          | mo|month|months (30 d) | y|year|years (365 d)
//! ```
//!
//! `m` is a minute (`mo` a month). Windows are at most 366 days (`MAX_WINDOW_SECS`), so `1/y`,
//! `12/12mo` and `52/52w` are fine and `1/2y` is an error.
//!
//! Every limit of a `;` list is enforced. Two limits with the same window are rejected (their keys
//! would collide and one of them would be meaningless).

use std::fmt;

/// Largest count accepted in a rate string: `u32::MAX`, what envoyproxy/ratelimit accepts
/// (`requests_per_unit` is a uint32). Every algorithm stays exact up to it (see
/// [`crate::algorithm`]; `gcra` and `sliding_window` have their own bounds, checked by
/// [`crate::Algorithm::check_limit`]).
pub const MAX_COUNT: u64 = u32::MAX as u64;
/// Longest window accepted: 366 days (a year, the longest unit, plus a leap day).
pub const MAX_WINDOW_SECS: u64 = 366 * 86_400;

/// One validated limit: `count` units of cost per `window_secs` seconds.
///
/// Invariants (checked by [`Limit::new`]): `1 <= count <= MAX_COUNT`,
/// `1 <= window_secs <= MAX_WINDOW_SECS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    count: u64,
    window_secs: u64,
    /// `ceil(window_µs / count)`: GCRA's emission interval, computed once (a division per check
    /// is measurable on the hot path).
    interval_us: u64,
}

impl Limit {
    /// A limit, or the reason it is invalid.
    pub fn new(count: u64, window_secs: u64) -> Result<Self, String> {
        if count == 0 {
            return Err("count must be at least 1, got 0".into());
        }
        if count > MAX_COUNT {
            return Err(format!(
                "count {count} exceeds the ceiling of {MAX_COUNT} per window"
            ));
        }
        if window_secs == 0 || window_secs > MAX_WINDOW_SECS {
            return Err(format!(
                "window of {window_secs} s is outside 1 s ..= {MAX_WINDOW_SECS} s (366 days)"
            ));
        }
        Ok(Self {
            count,
            window_secs,
            interval_us: (window_secs * 1_000_000).div_ceil(count),
        })
    }

    /// Requests (units of cost) admitted per window.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Window length in seconds.
    pub fn window_secs(&self) -> u64 {
        self.window_secs
    }

    /// `ceil(window_micros / count)`: the emission interval of GCRA.
    pub fn interval_micros(&self) -> u64 {
        self.interval_us
    }

    /// Window length in microseconds (the algorithms' quantum).
    pub fn window_micros(&self) -> u64 {
        self.window_secs * 1_000_000
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.count, self.window_secs)
    }
}

/// A parsed rate string: one or more limits, all enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    limits: Vec<Limit>,
}

impl Rate {
    /// The limits, in the order written.
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_rate(s)
    }
}

/// Parse a rate string (see the module doc for the grammar).
///
/// ```
/// use ratewall_core::config::rate::parse_rate;
/// let r = parse_rate("5/s; 100 per 15 minutes").unwrap();
/// assert_eq!(r.limits()[0].count(), 5);
/// assert_eq!(r.limits()[1].window_secs(), 900);
/// assert!(parse_rate("1_000/m").is_err());
/// ```
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Err("empty rate string; expected e.g. \"60/m\"".into());
    }
    let mut limits: Vec<Limit> = Vec::new();
    for part in trimmed.split(';') {
        let limit = parse_one(part)?;
        if let Some(prev) = limits
            .iter()
            .find(|l| l.window_secs() == limit.window_secs())
        {
            return Err(format!(
                "two limits share the window {} s ({} and {}); give each limit its own window",
                limit.window_secs(),
                prev,
                limit
            ));
        }
        limits.push(limit);
    }
    Ok(Rate { limits })
}

/// The units, for error messages.
const UNITS: &str = "units: s, m (minute), h, d, w, mo (month), y";

fn parse_one(part: &str) -> Result<Limit, String> {
    let p = part.trim().to_ascii_lowercase();
    if p.is_empty() {
        return Err("empty limit between ';' separators".into());
    }
    let (count_str, period) = if let Some((c, u)) = p.split_once('/') {
        (c.trim(), u.trim())
    } else if let Some((c, u)) = p.split_once(" per ") {
        (c.trim(), u.trim())
    } else {
        return Err(format!(
            "invalid rate {:?}: expected \"<count>/<unit>\" or \"<count> per <unit>\" ({UNITS})",
            part.trim()
        ));
    };
    let count = parse_count(count_str)?;
    // Optional multiplier: leading ASCII digits, then the unit (spaces allowed between).
    let digits_end = period
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(period.len());
    let (mult_str, unit) = period.split_at(digits_end);
    let unit = unit.trim();
    let multiplier = if mult_str.is_empty() {
        1
    } else {
        mult_str
            .parse::<u64>()
            .ok()
            .filter(|m| *m > 0)
            .ok_or_else(|| {
                format!("invalid window multiplier {mult_str:?}: expected a whole number ≥ 1")
            })?
    };
    let unit_secs = match unit {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 7 * 86_400,
        "mo" | "month" | "months" => 30 * 86_400,
        "y" | "year" | "years" => 365 * 86_400,
        "" => return Err(format!("missing unit in {:?}; {UNITS}", part.trim())),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {:?}; {UNITS}",
                part.trim()
            ))
        }
    };
    let window = multiplier
        .checked_mul(unit_secs)
        .ok_or_else(|| format!("window {:?} is too long", part.trim()))?;
    Limit::new(count, window)
}

fn parse_count(c: &str) -> Result<u64, String> {
    let digits = c.strip_prefix('+').unwrap_or(c);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid count {c:?}: expected a whole number of ASCII digits (no sign, fraction, '_' or spaces)"
        ));
    }
    match digits.parse::<u64>() {
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "count {c} exceeds the ceiling of {MAX_COUNT} per window"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> (u64, u64) {
        let r = parse_rate(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(r.limits().len(), 1);
        (r.limits()[0].count(), r.limits()[0].window_secs())
    }

    #[test]
    fn accepts_all_spellings() {
        assert_eq!(one(" 5 / MIN "), (5, 60));
        assert_eq!(one("+5/s"), (5, 1));
        assert_eq!(one("10/M"), (10, 60));
        assert_eq!(one("1/d"), (1, 86_400));
        assert_eq!(one("3/hr"), (3, 3_600));
        assert_eq!(one("100/15m"), (100, 900));
        assert_eq!(one("500/7d"), (500, 604_800));
        assert_eq!(one("10 per minute"), (10, 60));
        assert_eq!(one("10 per 2 hours"), (10, 7_200));
        assert_eq!(one("1000000/m"), (1_000_000, 60));
        assert_eq!(one("4294967295/s"), (4_294_967_295, 1));
        assert_eq!(one("5/w"), (5, 604_800));
        assert_eq!(one("5 per 2 weeks"), (5, 1_209_600));
        assert_eq!(one("5/mo"), (5, 2_592_000));
        assert_eq!(one("5 per month"), (5, 2_592_000));
        assert_eq!(one("5/12MO"), (5, 31_104_000));
        assert_eq!(one("5/y"), (5, 31_536_000));
        assert_eq!(one("5 per year"), (5, 31_536_000));
        assert_eq!(one("5/52w"), (5, 31_449_600));
        assert_eq!(one("5/366d"), (5, 31_622_400));
    }

    #[test]
    fn multi_limits() {
        let r = parse_rate("5/s;100/m").unwrap();
        assert_eq!(r.limits().len(), 2);
        assert!(parse_rate("5/s;10/sec")
            .unwrap_err()
            .contains("share the window 1 s"));
        assert!(parse_rate("5/s;").unwrap_err().contains("empty limit"));
    }

    #[test]
    fn rejects_bad_input() {
        for (s, needle) in [
            ("0/s", "at least 1"),
            ("-1/s", "invalid count"),
            ("1.5/s", "invalid count"),
            ("1_000/m", "invalid count"),
            ("١٠/m", "invalid count"),
            ("4294967296/m", "ceiling"),
            ("99999999999999999999999/m", "ceiling"),
            ("10", "expected"),
            ("10/", "missing unit"),
            ("/m", "invalid count"),
            ("abc/m", "invalid count"),
            ("5/fortnight", "unknown unit"),
            ("5/yr", "unknown unit"),
            ("5/2y", "outside"),
            ("5/13mo", "outside"),
            ("5/0m", "multiplier"),
            ("5/367d", "outside"),
            ("", "empty rate"),
        ] {
            let err = parse_rate(s).expect_err(s);
            assert!(err.contains(needle), "{s:?}: {err}");
        }
    }
}
