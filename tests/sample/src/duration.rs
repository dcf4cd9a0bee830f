//! Durations written the way people type them on a command line: `10ms`, `1.5s`, `2m`.
//!
//! A dozen lines of parsing are cheaper than another dependency, and integer arithmetic
//! keeps `10ms` exactly ten milliseconds (going through `f64` would not).

use std::time::Duration;

use thiserror::Error;

/// Why a duration did not parse; the CLI prints it next to the flag's name.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("empty duration (try e.g. 10ms, 1s, 2m)")]
    Empty,
    #[error("`{0}` has no number (try e.g. 10ms, 1s, 2m)")]
    NoNumber(String),
    #[error("`{0}` has no unit (use ns, us, ms, s, m or h, e.g. {0}ms)")]
    NoUnit(String),
    #[error("`{input}` has an unknown unit `{unit}` (use ns, us, ms, s, m or h)")]
    UnknownUnit { input: String, unit: String },
    #[error("`{0}` is too long")]
    Overflow(String),
}

/// Parses `<number><unit>`, where the number may have a fraction (`1.5s`) and the unit is
/// one of `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`. A bare `0` needs no unit.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(DurationError::NoNumber(text.to_owned()));
    }
    let unit_nanos: u128 = match unit.trim() {
        "" if whole.bytes().chain(fraction.bytes()).all(|b| b == b'0') => 1,
        "" => return Err(DurationError::NoUnit(text.to_owned())),
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        other => {
            return Err(DurationError::UnknownUnit {
                input: text.to_owned(),
                unit: other.to_owned(),
            });
        }
    };
    let overflow = || DurationError::Overflow(text.to_owned());
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| overflow())?
    };
    // Digits past nanoseconds cannot change the result, so they are dropped before they
    // can overflow.
    let fraction = &fraction[..fraction.len().min(12)];
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        let digits: u128 = fraction.parse().map_err(|_| overflow())?;
        digits * unit_nanos / 10u128.pow(fraction.len() as u32)
    };
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(fraction_nanos))
        .ok_or_else(overflow)?;
    let nanos = u64::try_from(nanos).map_err(|_| overflow())?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse("250ns"), Ok(Duration::from_nanos(250)));
        assert_eq!(parse("7us"), Ok(Duration::from_micros(7)));
        assert_eq!(parse("7µs"), Ok(Duration::from_micros(7)));
        assert_eq!(parse("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn fractions_are_exact() {
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0.01s"), Ok(Duration::from_millis(10)));
        assert_eq!(parse(".5ms"), Ok(Duration::from_micros(500)));
        assert_eq!(parse("2.ms"), Ok(Duration::from_millis(2)));
        assert_eq!(
            parse("1.0000000000001s"),
            Ok(Duration::from_secs(1)),
            "sub-nanosecond digits are dropped"
        );
    }

    #[test]
    fn zero_needs_no_unit_and_spaces_are_ignored() {
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0.0"), Ok(Duration::ZERO));
        assert_eq!(parse(" 5 s "), Ok(Duration::from_secs(5)));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("ms"), Err(DurationError::NoNumber("ms".into())));
        assert_eq!(parse("."), Err(DurationError::NoNumber(".".into())));
        assert_eq!(
            parse("1.2.3s"),
            Err(DurationError::NoNumber("1.2.3s".into()))
        );
        assert_eq!(parse("5"), Err(DurationError::NoUnit("5".into())));
        assert!(matches!(
            parse("5 days"),
            Err(DurationError::UnknownUnit { unit, .. }) if unit == "days"
        ));
        assert!(matches!(parse("-1s"), Err(DurationError::NoNumber(_))));
        assert!(matches!(
            parse("1e3ms"),
            Err(DurationError::UnknownUnit { .. })
        ));
    }

    #[test]
    fn rejects_overflow() {
        assert!(matches!(
            parse("99999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse("999999999999999999999999999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
    }
}
