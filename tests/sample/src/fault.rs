//! Failures the HTTP server injects into its own answers (`--fail-rate`, `--fail-status`),
//! so tests can watch the mesh's retries and outlier detection react to a bad backend.

use http::StatusCode;
use rand::Rng as _;
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum FaultError {
    #[error("`{0}` is not a number (the fail rate is a fraction from 0 to 1, e.g. 0.25)")]
    NotANumber(String),
    #[error("{0} is outside 0..=1 (the fail rate is a fraction, e.g. 0.25 for a quarter)")]
    OutOfRange(f64),
    #[error("`{0}` is not an HTTP status code from 200 to 999")]
    BadStatus(String),
}

/// The fraction of requests to fail, known to lie in `0.0..=1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FailRate(f64);

impl FailRate {
    pub fn parse(input: &str) -> Result<Self, FaultError> {
        let rate: f64 = input
            .trim()
            .parse()
            .map_err(|_| FaultError::NotANumber(input.to_owned()))?;
        // `contains` is false for NaN, so NaN is refused here too.
        if !(0.0..=1.0).contains(&rate) {
            return Err(FaultError::OutOfRange(rate));
        }
        Ok(Self(rate))
    }

    /// Draws whether this request fails.
    pub fn hits(self) -> bool {
        // Skip the draw in the common case of no injected failures.
        self.0 > 0.0 && rand::rng().random_bool(self.0)
    }
}

/// Parses `--fail-status`. Informational (1xx) codes are refused: they are not final
/// answers, and hyper would not send them as one.
pub fn parse_status(input: &str) -> Result<StatusCode, FaultError> {
    input
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|code| *code >= 200)
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| FaultError::BadStatus(input.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_fractions_from_zero_to_one() {
        assert_eq!(FailRate::parse("0"), Ok(FailRate(0.0)));
        assert_eq!(FailRate::parse("0.5"), Ok(FailRate(0.5)));
        assert_eq!(FailRate::parse(" 1 "), Ok(FailRate(1.0)));
    }

    #[test]
    fn refuses_rates_outside_the_range() {
        assert_eq!(FailRate::parse("1.5"), Err(FaultError::OutOfRange(1.5)));
        assert_eq!(FailRate::parse("-0.1"), Err(FaultError::OutOfRange(-0.1)));
        assert!(matches!(FailRate::parse("NaN"), Err(FaultError::OutOfRange(r)) if r.is_nan()));
        assert!(matches!(
            FailRate::parse("inf"),
            Err(FaultError::OutOfRange(_))
        ));
        assert_eq!(
            FailRate::parse("half"),
            Err(FaultError::NotANumber("half".into()))
        );
        assert_eq!(
            FailRate::parse("50%"),
            Err(FaultError::NotANumber("50%".into()))
        );
    }

    #[test]
    fn the_ends_of_the_range_are_deterministic() {
        assert!((0..1000).all(|_| !FailRate(0.0).hits()));
        assert!((0..1000).all(|_| FailRate(1.0).hits()));
    }

    #[test]
    fn a_half_rate_fails_about_half() {
        let failed = (0..10_000).filter(|_| FailRate(0.5).hits()).count();
        // Five standard deviations (50 each) either side: a false alarm is not a concern.
        assert!(
            (4_750..=5_250).contains(&failed),
            "{failed} of 10000 failed"
        );
    }

    #[test]
    fn fail_status_is_a_final_status_code() {
        assert_eq!(parse_status("503"), Ok(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(parse_status("200"), Ok(StatusCode::OK));
        assert_eq!(
            parse_status("100"),
            Err(FaultError::BadStatus("100".into()))
        );
        assert_eq!(
            parse_status("1000"),
            Err(FaultError::BadStatus("1000".into()))
        );
        assert_eq!(parse_status("x"), Err(FaultError::BadStatus("x".into())));
    }
}
