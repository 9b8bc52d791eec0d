//! The time units of envoyproxy/ratelimit (`RateLimitResponse.RateLimit.Unit`).

/// A rate limit unit, as the RLS protocol and envoyproxy/ratelimit documents name them.
///
/// Lengths are envoyproxy/ratelimit's: a month is 30 days, a year 365 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// 1 s.
    Second,
    /// 60 s.
    Minute,
    /// 3,600 s.
    Hour,
    /// 86,400 s.
    Day,
    /// 7 days.
    Week,
    /// 30 days.
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    /// Every unit, shortest first.
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// Length in seconds.
    pub fn secs(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    /// The protocol's name (`SECOND`, ..., `YEAR`).
    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "SECOND",
            Unit::Minute => "MINUTE",
            Unit::Hour => "HOUR",
            Unit::Day => "DAY",
            Unit::Week => "WEEK",
            Unit::Month => "MONTH",
            Unit::Year => "YEAR",
        }
    }

    /// Parse a configuration `unit` the way envoyproxy/ratelimit does: Unicode upper-cased, then
    /// one of the protocol's names (`second`, `Minute`, `HOUR`, ...). `UNKNOWN`, blanks and
    /// anything else are `None`.
    ///
    /// ```
    /// use ratewall_core::config::descriptors::Unit;
    /// assert_eq!(Unit::from_config("Minute"), Some(Unit::Minute));
    /// assert_eq!(Unit::from_config("unknown"), None);
    /// assert_eq!(Unit::from_config(" second"), None);
    /// ```
    pub fn from_config(text: &str) -> Option<Unit> {
        let upper = text.to_uppercase();
        Self::ALL.into_iter().find(|u| u.name() == upper)
    }

    /// The unit exactly `secs` long, if any.
    pub fn of_window(secs: u64) -> Option<Unit> {
        Self::ALL.into_iter().find(|u| u.secs() == secs)
    }

    /// A rate-string spelling of one unit (`minute`, `7d`, ...), for limits built from
    /// `requests_per_unit` and `unit`.
    pub(crate) fn rate_word(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "7d",
            Unit::Month => "30d",
            Unit::Year => "365d",
        }
    }
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
