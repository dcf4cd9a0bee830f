//! The value forms an AuthorizationPolicy writes: Istio's string patterns
//! and IP blocks.

/// Istio's string match: `*` (present, any value), `abc*` (prefix), `*abc`
/// (suffix), else exact; for paths also a template (`/a/{*}/b/{**}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Prefix(String),
    Suffix(String),
    Exact(String),
    Template(PathTemplate),
}

/// A path template of an AuthorizationPolicy's `paths` (Istio 1.20's, which
/// Envoy's URI template matcher evaluates): `{*}` is one path segment (at
/// least one character), `{**}` any rest of the path, slashes included
/// (possibly nothing). Each operator is a whole segment, `{**}` comes last
/// of them, and no other `*`, `{` or `}` may appear. Operators match the
/// characters of a path segment Envoy's templates do.
#[derive(Clone, Debug)]
pub struct PathTemplate {
    written: String,
    regex: regex::Regex,
}

impl PartialEq for PathTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.written == other.written
    }
}

impl Eq for PathTemplate {}

/// What an operator matches within a segment, as Envoy's URI templates
/// read a path: RFC 3986's path characters, without `*`.
const SEGMENT_CHARS: &str = r"A-Za-z0-9\-._~%!$&'()+,;:@=";

impl PathTemplate {
    /// Whether `value` is written as a template (it has a `{`): then it must
    /// read as one, or is refused ([`PathTemplate::parse`]).
    pub fn is_template(value: &str) -> bool {
        value.contains('{')
    }

    pub fn parse(written: &str) -> Result<PathTemplate, String> {
        let refuse = |why: &str| {
            Err(format!(
                "{written:?} is no path template Istio reads: {why}"
            ))
        };
        let mut regex = String::from("^");
        let mut rest_seen = false;
        for (i, segment) in written.split('/').enumerate() {
            if i > 0 {
                regex.push('/');
            }
            match segment {
                "{*}" | "{**}" if rest_seen => {
                    return refuse("{**} must be the last operator");
                }
                "{*}" => regex.push_str(&format!("[{SEGMENT_CHARS}]+")),
                "{**}" => {
                    rest_seen = true;
                    regex.push_str(&format!("[{SEGMENT_CHARS}/]*"));
                }
                _ if segment.contains(['*', '{', '}']) => {
                    return refuse(
                        "an operator ({*} or {**}) must be a whole path segment, and no other * { } may appear",
                    );
                }
                literal => regex.push_str(&regex::escape(literal)),
            }
        }
        regex.push('$');
        match regex::Regex::new(&regex) {
            Ok(regex) => Ok(PathTemplate {
                written: written.to_owned(),
                regex,
            }),
            Err(error) => refuse(&error.to_string()),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }
}

impl Pattern {
    pub fn parse(s: &str) -> Pattern {
        if s == "*" {
            Pattern::Any
        } else if let Some(suffix) = s.strip_prefix('*') {
            Pattern::Suffix(suffix.to_owned())
        } else if let Some(prefix) = s.strip_suffix('*') {
            Pattern::Prefix(prefix.to_owned())
        } else {
            Pattern::Exact(s.to_owned())
        }
    }

    /// The same pattern, lower-cased: for attributes compared without case
    /// (hosts).
    pub fn lowercase(self) -> Pattern {
        match self {
            Pattern::Any => Pattern::Any,
            Pattern::Prefix(p) => Pattern::Prefix(p.to_ascii_lowercase()),
            Pattern::Suffix(s) => Pattern::Suffix(s.to_ascii_lowercase()),
            Pattern::Exact(e) => Pattern::Exact(e.to_ascii_lowercase()),
            Pattern::Template(t) => Pattern::Template(t),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(p) => value.starts_with(p.as_str()),
            Pattern::Suffix(s) => value.ends_with(s.as_str()),
            Pattern::Exact(e) => value == e,
            Pattern::Template(t) => t.matches(value),
        }
    }
}

/// ztunnel's address block: one definition of what "in this block" means
/// for L4 and L7 policy alike.
pub use warren_ztunnel::state::Cidr;
