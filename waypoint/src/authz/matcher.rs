//! The value forms an AuthorizationPolicy writes: Istio's string patterns
//! and IP blocks.

/// Istio's string match: `*` (present, any value), `abc*` (prefix), `*abc`
/// (suffix), else exact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Prefix(String),
    Suffix(String),
    Exact(String),
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
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(p) => value.starts_with(p.as_str()),
            Pattern::Suffix(s) => value.ends_with(s.as_str()),
            Pattern::Exact(e) => value == e,
        }
    }
}

/// ztunnel's address block: one definition of what "in this block" means
/// for L4 and L7 policy alike.
pub use warren_ztunnel::state::Cidr;
