//! The URLs the sample sends requests to (`load --url`, `http --upstream`).
//!
//! Both clients speak plain HTTP only — TLS is the mesh's job — so an `https://` URL is
//! refused up front instead of failing on every request.

use http::Uri;
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum UrlError {
    #[error("`{url}` is not a URL: {reason}")]
    Invalid { url: String, reason: String },
    #[error("`{0}` has no scheme (write http://{0})")]
    NoScheme(String),
    #[error("`{url}` uses {scheme}:// but only http:// is supported (the mesh adds TLS)")]
    UnsupportedScheme { url: String, scheme: String },
    #[error("`{0}` has no host")]
    NoHost(String),
}

/// Parses an absolute `http://host[:port][/path]` URL.
pub fn parse(input: &str) -> Result<Uri, UrlError> {
    let url: Uri = input
        .trim()
        .parse()
        .map_err(|e: http::uri::InvalidUri| UrlError::Invalid {
            url: input.to_owned(),
            reason: e.to_string(),
        })?;
    match url.scheme_str() {
        None => return Err(UrlError::NoScheme(input.to_owned())),
        Some("http") => {}
        Some(other) => {
            return Err(UrlError::UnsupportedScheme {
                url: input.to_owned(),
                scheme: other.to_owned(),
            });
        }
    }
    if url.host().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost(input.to_owned()));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_urls() {
        let url = parse("http://127.0.0.1:8080/path?q=1").unwrap();
        assert_eq!(url.host(), Some("127.0.0.1"));
        assert_eq!(url.port_u16(), Some(8080));
        assert_eq!(url.path(), "/path");
        assert!(parse("http://backend.ns").is_ok());
    }

    #[test]
    fn refuses_what_the_clients_cannot_reach() {
        assert_eq!(
            parse("127.0.0.1:8080"),
            Err(UrlError::NoScheme("127.0.0.1:8080".into()))
        );
        assert!(matches!(
            parse("https://example.test/"),
            Err(UrlError::UnsupportedScheme { scheme, .. }) if scheme == "https"
        ));
        assert!(matches!(parse("http://"), Err(UrlError::Invalid { .. })));
        assert!(matches!(parse("not a url"), Err(UrlError::Invalid { .. })));
        assert!(matches!(parse("/just/a/path"), Err(UrlError::NoScheme(_))));
    }
}
