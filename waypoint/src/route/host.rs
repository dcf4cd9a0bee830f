//! Which VirtualServices claim a host: exact hosts and `*.suffix`
//! wildcards, shared by the HTTP and TCP route tables.
//!
//! Lookup is case-insensitive and ignores a trailing dot. Exact claims come
//! before wildcards, a longer wildcard (`*.demo.svc.cluster.local`) before a
//! shorter one (`*.svc.cluster.local`), and within each the claims in the
//! order they were made; `*.x` matches `a.x` and `a.b.x` but not `x`.

use std::collections::HashMap;

/// Claims on hosts, each an index into its table's list of VirtualServices.
#[derive(Debug, Default)]
pub struct HostIndex {
    exact: HashMap<String, Vec<usize>>,
    /// `(suffix after '*', claims)`, longest suffix first once built.
    wildcards: Vec<(String, Vec<usize>)>,
}

impl HostIndex {
    /// Records that VirtualService `index` claims `host`; indexes come in
    /// precedence order.
    pub fn claim(&mut self, host: &str, index: usize) {
        let host = normalize_host(host);
        let list = match host.strip_prefix('*') {
            Some(suffix) => match self.wildcards.iter_mut().find(|(s, _)| s == suffix) {
                Some((_, list)) => list,
                None => {
                    self.wildcards.push((suffix.to_owned(), Vec::new()));
                    let last = self.wildcards.len() - 1;
                    &mut self.wildcards[last].1
                }
            },
            None => self.exact.entry(host).or_default(),
        };
        if !list.contains(&index) {
            list.push(index);
        }
    }

    /// Orders the wildcards for lookup; call once every claim is in.
    pub fn finish(&mut self) {
        self.wildcards
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    }

    /// The claims on `host`, most specific first.
    pub fn claims<'a>(&'a self, host: &str) -> impl Iterator<Item = usize> + 'a {
        let key = normalize_host(host);
        let exact = self.exact.get(&key).into_iter().flatten().copied();
        let wildcards = self
            .wildcards
            .iter()
            .filter(move |(suffix, _)| key.len() > suffix.len() && key.ends_with(suffix.as_str()))
            .flat_map(|(_, list)| list.iter().copied());
        exact.chain(wildcards)
    }
}

pub fn normalize_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_longer_then_shorter_wildcards_in_claim_order() {
        let mut index = HostIndex::default();
        index.claim("*.svc.cluster.local", 0);
        index.claim("*.demo.svc.cluster.local", 1);
        index.claim("Reviews.demo.svc.cluster.local.", 2);
        index.claim("reviews.demo.svc.cluster.local", 3);
        index.finish();
        let got: Vec<usize> = index.claims("reviews.demo.svc.cluster.local").collect();
        assert_eq!(got, [2, 3, 1, 0]);
        let got: Vec<usize> = index.claims("ratings.other.svc.cluster.local").collect();
        assert_eq!(got, [0]);
        // `*.x` does not match `x` itself.
        assert_eq!(index.claims("svc.cluster.local").count(), 0);
    }
}
