//! Byte counts written the way people type them on a command line: `4K`, `64M`, `1G`.
//!
//! Units are binary (`1K` is 1024 bytes): transfer sizes in tests are powers of two, and
//! a checker that sent 1,000,000 bytes when asked for `1M` would surprise whoever reads
//! its report next to a MiB/s figure.

use thiserror::Error;

/// Why a byte count did not parse; the CLI prints it next to the flag's name.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ByteSizeError {
    #[error("empty byte count (try e.g. 4096, 64K, 1G)")]
    Empty,
    #[error("`{0}` has no whole number (try e.g. 4096, 64K, 1G)")]
    NoNumber(String),
    #[error("`{input}` has an unknown unit `{unit}` (use K, M, G or T, binary: 1K = 1024)")]
    UnknownUnit { input: String, unit: String },
    #[error("`{0}` is more than 2^64 - 1 bytes")]
    Overflow(String),
}

/// Parses `<whole number>[unit]`, the unit one of `K`, `M`, `G`, `T` (powers of 1024),
/// case-insensitive, optionally followed by `iB` or `B` (`64MiB`, `64MB`, `64m` are all
/// 64 × 2^20). No unit, or `B`, means bytes.
pub fn parse(input: &str) -> Result<u64, ByteSizeError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(ByteSizeError::Empty);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(ByteSizeError::NoNumber(text.to_owned()));
    }
    let unit = unit.trim();
    let lower = unit.to_ascii_lowercase();
    let prefix = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let shift = match prefix {
        // A bare "iB" is no unit anyone writes.
        "" if !lower.ends_with("ib") => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => {
            return Err(ByteSizeError::UnknownUnit {
                input: text.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    let overflow = || ByteSizeError::Overflow(text.to_owned());
    let count: u64 = number.parse().map_err(|_| overflow())?;
    count.checked_mul(1u64 << shift).ok_or_else(overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_bytes() {
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("17B"), Ok(17));
        assert_eq!(parse(" 12 "), Ok(12));
    }

    #[test]
    fn units_are_binary_and_case_insensitive() {
        assert_eq!(parse("4K"), Ok(4 << 10));
        assert_eq!(parse("4k"), Ok(4 << 10));
        assert_eq!(parse("64M"), Ok(64 << 20));
        assert_eq!(parse("64MiB"), Ok(64 << 20));
        assert_eq!(parse("64mb"), Ok(64 << 20));
        assert_eq!(parse("1G"), Ok(1 << 30));
        assert_eq!(parse("1 GiB"), Ok(1 << 30));
        assert_eq!(parse("2T"), Ok(2 << 40));
    }

    #[test]
    fn rejects_what_is_not_a_byte_count() {
        assert_eq!(parse(""), Err(ByteSizeError::Empty));
        assert_eq!(parse("G"), Err(ByteSizeError::NoNumber("G".into())));
        assert_eq!(parse("-1K"), Err(ByteSizeError::NoNumber("-1K".into())));
        assert!(matches!(
            parse("1.5G"),
            Err(ByteSizeError::UnknownUnit { unit, .. }) if unit == ".5G"
        ));
        assert!(matches!(
            parse("3P"),
            Err(ByteSizeError::UnknownUnit { unit, .. }) if unit == "P"
        ));
        assert!(matches!(
            parse("3iB"),
            Err(ByteSizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse("10 bytes"),
            Err(ByteSizeError::UnknownUnit { .. })
        ));
    }

    #[test]
    fn rejects_overflow() {
        assert_eq!(parse("18446744073709551615"), Ok(u64::MAX));
        assert!(matches!(
            parse("18446744073709551616"),
            Err(ByteSizeError::Overflow(_))
        ));
        assert!(matches!(
            parse("16777216T"),
            Err(ByteSizeError::Overflow(_))
        ));
    }
}
