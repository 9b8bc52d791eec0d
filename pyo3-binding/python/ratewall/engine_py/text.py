"""String normalisation exactly as the Rust core does it (``str::trim``, ``normalize_name``)."""

from __future__ import annotations

# Rust's ``char::is_whitespace`` (Unicode White_Space); Python's ``str.strip()`` would also strip
# U+001C..U+001F, which Rust keeps.
RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def trim(s: str) -> str:
    """``str::trim``."""
    return s.strip(RUST_WHITESPACE)


def clean(s: str | None) -> str | None:
    """Trimmed, or ``None`` when absent or blank."""
    if s is None:
        return None
    t = trim(s)
    return t or None


def normalize_name(name: str) -> str:
    """Tool or prompt name: trim, then Unicode lowercase (``ratewall_core::normalize_name``)."""
    return trim(name).lower()
