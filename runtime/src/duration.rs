//! The one duration grammar of db-test, for `timeout = ".."` (checked at
//! compile time: the macro expands to a constant that calls this parser)
//! and for the `DB_TEST_*` variables.
//!
//! A number, whole or decimal, then a unit: `ms`, `s` (also `sec`,
//! `secs`), `m` (also `min`, `mins`) or `h`; no unit means seconds.
//! `"250ms"`, `"1.5s"`, `"2m"`, `"30"`. Spaces around it, or between the
//! number and the unit, are allowed. The result is in whole milliseconds
//! and must be at least 1.

const fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Parses a duration into milliseconds (see the module docs).
pub(crate) const fn parse_duration_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let (mut start, mut end) = (0, b.len());
    while start < end && b[start] == b' ' {
        start += 1;
    }
    while end > start && b[end - 1] == b' ' {
        end -= 1;
    }
    // Whole part.
    let mut i = start;
    let mut whole: u128 = 0;
    let mut digits = 0;
    while i < end && b[i].is_ascii_digit() {
        whole = whole * 10 + (b[i] - b'0') as u128;
        if whole > u64::MAX as u128 {
            return None;
        }
        i += 1;
        digits += 1;
    }
    // Fraction, up to 9 digits.
    let mut frac: u128 = 0;
    let mut scale: u128 = 1;
    if i < end && b[i] == b'.' {
        i += 1;
        while i < end && b[i].is_ascii_digit() {
            if scale < 1_000_000_000 {
                frac = frac * 10 + (b[i] - b'0') as u128;
                scale *= 10;
            }
            i += 1;
            digits += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    while i < end && b[i] == b' ' {
        i += 1;
    }
    // The unit.
    let unit = b.split_at(i).1.split_at(end - i).0;
    let ms_per_unit: u128 = if eq(unit, b"ms") {
        1
    } else if unit.is_empty() || eq(unit, b"s") || eq(unit, b"sec") || eq(unit, b"secs") {
        1_000
    } else if eq(unit, b"m") || eq(unit, b"min") || eq(unit, b"mins") {
        60_000
    } else if eq(unit, b"h") {
        3_600_000
    } else {
        return None;
    };
    let ms = whole * ms_per_unit + frac * ms_per_unit / scale;
    if ms == 0 || ms > u64::MAX as u128 {
        None
    } else {
        Some(ms as u64)
    }
}

/// For the macro: the milliseconds of a `timeout = ".."`, or a compile
/// error when it is evaluated in a constant.
pub const fn duration_ms(s: &str) -> u64 {
    match parse_duration_ms(s) {
        Some(ms) => ms,
        None => panic!(
            "db-test: invalid `timeout`; write a duration such as \"500ms\", \"1.5s\", \"2m\" or \"1h\""
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms as p;

    #[test]
    fn one_grammar() {
        assert_eq!(p("250ms"), Some(250));
        assert_eq!(p("1.5s"), Some(1_500));
        assert_eq!(p(" 30 "), Some(30_000));
        assert_eq!(p("2m"), Some(120_000));
        assert_eq!(p("2 min"), Some(120_000));
        assert_eq!(p("0.5h"), Some(1_800_000));
        assert_eq!(p("10secs"), Some(10_000));
        assert_eq!(p(".5s"), Some(500));
        for bad in [
            "",
            "soon",
            "5 parsecs",
            "0s",
            "0.0001s",
            "-1s",
            "1.2.3s",
            "s",
            "99999999999999999999999h",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn it_runs_at_compile_time() {
        const MS: u64 = super::duration_ms("1.25s");
        assert_eq!(MS, 1_250);
    }
}
