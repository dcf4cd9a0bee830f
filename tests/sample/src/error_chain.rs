//! One-line descriptions of errors with their causes, for JSON answers and log fields,
//! where `Display` alone would hide the reason ("client error (Connect)" — but why?).

use std::error::Error;

/// The error and each of its sources, joined by ": ".
pub fn describe(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("calling the upstream failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn follows_the_sources() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(describe(&io), "refused");
        assert_eq!(describe(&Outer(io)), "calling the upstream failed: refused");
    }
}
