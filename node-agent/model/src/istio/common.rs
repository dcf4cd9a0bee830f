//! Pieces several Istio kinds share: workload selectors, string matches,
//! percentages and policy target references.
//!
//! Durations (`"10s"`, `"1.5s"`, `"100ms"`, `"1h"`) stay `String` in the
//! types: they are checked by [`crate::validate::duration`], so a bad
//! one is reported with its field path instead of failing the whole parse.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Selects workloads by their labels (`istio.type.v1beta1.WorkloadSelector`),
/// as used by `AuthorizationPolicy.selector`, `PeerAuthentication.selector`
/// and `DestinationRule.workloadSelector`. An empty selector selects every
/// workload of the namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Istio's `StringMatch`: one of `exact`, `prefix` or `regex` (RE2 syntax).
///
/// The oneof is kept as three options rather than an enum so that `{}` — which
/// Istio accepts in header matches, meaning "the header is present" — parses
/// and round-trips; setting two of them is reported by validation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// What a [`StringMatch`] asks for, once validation has ensured at most one
/// of its fields is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringMatchKind<'a> {
    /// `{}`: any value, as long as the thing matched is present.
    Present,
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
}

impl StringMatch {
    /// The match's kind. When several fields are set (which validation
    /// refuses) the first of exact, prefix, regex wins.
    pub fn kind(&self) -> StringMatchKind<'_> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), _, _) => StringMatchKind::Exact(e),
            (None, Some(p), _) => StringMatchKind::Prefix(p),
            (None, None, Some(r)) => StringMatchKind::Regex(r),
            (None, None, None) => StringMatchKind::Present,
        }
    }

    /// How many of exact/prefix/regex are set: Istio allows at most one.
    pub fn kinds_set(&self) -> usize {
        [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count()
    }
}

/// Istio's `Percent`: a share of requests, 0.0 to 100.0.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// A reference to the resource a policy attaches to
/// (`istio.type.v1beta1.PolicyTargetReference`), e.g. a Service or a
/// Gateway. Parsed so Istio YAML is accepted; Warren attaches policies by
/// `selector` only for now.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}
