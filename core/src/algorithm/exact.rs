//! Exact products beyond 64 bits: `floor((a b + c) / m)` and its remainder.
//!
//! Counts reach `u32::MAX` (< 2^32) and windows a year and a day (< 2^45 µs), so products such
//! as `count × elapsed µs` reach 2^77: past `u64` and far past the 2^53 up to which the Redis Lua
//! script's doubles are exact integers. The token bucket and the sliding window counter only ever
//! need such a product divided by a number of the same size, with a quotient that is small again
//! (at most a count or a window), so they go through [`mul_div`]:
//!
//! * here: `u64` when `a b + c` fits (the common case), else a 128-bit product divided by
//!   restoring long division;
//! * in `script.lua` (`muldiv`): directly when `a b + c < 2^53`, else schoolbook long division
//!   of `a b` by `m` in base 2^6 digits of `b`, each step below 2^53 (see the script).
//!
//! Both compute the same exact integers, so Rust, Lua and Python (big integers) agree bit for bit.

/// `(q, r)` with `a b + c = q m + r`, `0 <= r < m`.
///
/// `m >= 1` (checked in debug builds); a quotient beyond `u64` saturates (never reached: every
/// caller's quotient is at most a count plus one, or a window).
#[inline]
pub fn mul_div(a: u64, b: u64, c: u64, m: u64) -> (u64, u64) {
    debug_assert!(m >= 1);
    // Fewer than 64 significant bits between them: `a b < 2^64` (cheaper than an
    // overflow-checked multiply on wasm32).
    if a.leading_zeros() + b.leading_zeros() >= 64 {
        if let Some(n) = (a * b).checked_add(c) {
            return (n / m, n % m);
        }
    }
    wide(a, b, c, m)
}

/// [`mul_div`] past `u64`: the 128-bit `a b + c` divided by `m` one bit at a time (restoring
/// long division, 64 steps, each keeping `r < m`): no 128-bit division routine, which would cost
/// the size-bounded wasm filter about 2 KB.
#[cold]
fn wide(a: u64, b: u64, c: u64, m: u64) -> (u64, u64) {
    let n = u128::from(a) * u128::from(b) + u128::from(c);
    let (hi, lo) = ((n >> 64) as u64, n as u64);
    if hi >= m {
        // The quotient does not fit u64 (never reached: see the preconditions).
        return (u64::MAX, 0);
    }
    let (mut q, mut r) = (0u64, hi);
    for i in (0..64).rev() {
        let top = r >> 63;
        r = (r << 1) | ((lo >> i) & 1);
        q <<= 1;
        if top == 1 || r >= m {
            r = r.wrapping_sub(m);
            q |= 1;
        }
    }
    (q, r)
}

/// `ceil(a b / m)` (same preconditions as [`mul_div`]).
#[inline]
pub fn mul_div_ceil(a: u64, b: u64, m: u64) -> u64 {
    let (q, r) = mul_div(a, b, 0, m);
    q + u64::from(r > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_wide_arithmetic_at_the_extremes() {
        let a_s = [0, 1, 7, 999_983, (1 << 32) - 1];
        let b_s = [0, 1, 1_000_000, 31_622_400_000_000, (1 << 45) + 12_345];
        let m_s = [1, 3, 1_000_000, 86_400_000_000, 31_622_400_000_000];
        for a in a_s {
            for b in b_s {
                for m in m_s {
                    for c in [0, m / 2, m - 1] {
                        let n = u128::from(a) * u128::from(b) + u128::from(c);
                        let want = (n / u128::from(m), n % u128::from(m));
                        if want.0 > u128::from(u64::MAX) {
                            continue;
                        }
                        let (q, r) = mul_div(a, b, c, m);
                        assert_eq!((u128::from(q), u128::from(r)), want, "{a} {b} {c} {m}");
                        let ceil = (u128::from(a) * u128::from(b)).div_ceil(u128::from(m));
                        assert_eq!(u128::from(mul_div_ceil(a, b, m)), ceil);
                    }
                }
            }
        }
    }
}
