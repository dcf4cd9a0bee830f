//! Path normalization before authorization, as Istio's default
//! (`pathNormalization: BASE`, Envoy's `normalize_path`): a policy on
//! `/admin*` must not be sidestepped by `/public/../admin` or `/%61dmin`, so
//! the path is decided on, and forwarded, in one canonical form.

use http::Uri;

/// RFC 3986 §6.2.2: unreserved characters percent-decoded, other escapes
/// upper-cased, backslashes read as slashes (as browsers and Envoy do), dot
/// segments removed. `%2F` stays encoded: decoding it would change which
/// segments the path has. A `%` that starts no escape is written `%25` (as
/// Envoy's canonicalizer does): kept bare, it could make an escape of what
/// follows once decoded (`%%32%65` → `%2e`), which a backend decoding again
/// would read as a dot the policy never saw. So normalizing is idempotent.
pub fn normalize(path: &str) -> String {
    // The asterisk form (`OPTIONS *`) and other non-paths are left alone.
    if !path.starts_with('/') {
        return path.to_owned();
    }
    let decoded = decode_unreserved(path);
    remove_dot_segments(&decoded)
}

/// Rewrites `uri`'s path to its normal form, keeping the query; leaves it
/// as is when already normal (the common case: no allocation of a new URI).
pub fn normalize_uri(uri: &mut Uri) {
    let path = uri.path();
    let normal = normalize(path);
    if normal == path {
        return;
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("{normal}?{query}"),
        None => normal,
    };
    let mut parts = uri.clone().into_parts();
    // A normalized path is made of the characters of a valid one, minus
    // some: it parses; should it not, the original stays (and is what the
    // policy was evaluated on, since the caller reads the path back).
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(rewritten) = Uri::from_parts(parts) {
            *uri = rewritten;
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(&hi), Some(&lo)) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                    let b = hex(hi) << 4 | hex(lo);
                    if is_unreserved(b) {
                        out.push(b);
                    } else {
                        out.extend([b'%', hi.to_ascii_uppercase(), lo.to_ascii_uppercase()]);
                    }
                    i += 3;
                }
                _ => {
                    out.extend(b"%25");
                    i += 1;
                }
            },
            b'\\' => {
                out.push(b'/');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII was replaced by ASCII: what was UTF-8 still is.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        // Callers pass hex digits only.
        _ => 0,
    }
}

/// RFC 3986 §5.2.4, on segments.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    // A path ending in a dot segment ends in a slash once it is removed.
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => trailing_slash = i == last,
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut joined = out.join("/");
    if !joined.starts_with('/') {
        joined.insert(0, '/');
    }
    if trailing_slash && !joined.ends_with('/') {
        joined.push('/');
    }
    joined
}
