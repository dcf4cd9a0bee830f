//! Where a workload runs, as Kubernetes' topology labels say and Istio
//! writes it: `region/zone/subzone`. Locality-aware load balancing compares
//! a proxy's locality with its endpoints'.

use std::fmt;

/// A node's `topology.kubernetes.io/region`.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// A node's `topology.kubernetes.io/zone`.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// A node's `topology.istio.io/subzone` (Istio's own level).
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// A pod's own locality, overriding its node's (Istio's `istio-locality`
/// label, written `region.zone.subzone` since a label value has no `/`).
pub const POD_LOCALITY_LABEL: &str = "istio-locality";

/// Region, zone and subzone; an unknown level is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// From `region/zone/subzone` (missing levels are empty; anything past
    /// the third `/` belongs to the subzone).
    pub fn parse(text: &str) -> Self {
        Self::split(text, '/')
    }

    /// From a pod's `istio-locality` label value, `region.zone.subzone`.
    pub fn from_pod_label(value: &str) -> Self {
        Self::split(value, '.')
    }

    fn split(text: &str, separator: char) -> Self {
        let mut parts = text.splitn(3, separator).map(str::to_owned);
        Self {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }
}

/// `region/zone/subzone`, without trailing empty levels (so an unknown
/// locality is the empty string).
impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let levels = [&self.region, &self.zone, &self.subzone];
        let shown = levels
            .iter()
            .rposition(|l| !l.is_empty())
            .map_or(0, |last| last + 1);
        for (i, level) in levels.iter().take(shown).enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            f.write_str(level)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_and_read_back() {
        let full = Locality::parse("us-east1/us-east1-b/rack7");
        assert_eq!(full.region, "us-east1");
        assert_eq!(full.zone, "us-east1-b");
        assert_eq!(full.subzone, "rack7");
        assert_eq!(full.to_string(), "us-east1/us-east1-b/rack7");
        assert_eq!(Locality::parse("eu").to_string(), "eu");
        assert_eq!(Locality::parse("eu").zone, "");
        assert_eq!(Locality::parse("").to_string(), "");
        assert!(Locality::parse("").is_empty());
        // A zone without a region keeps its place.
        assert_eq!(Locality::parse("/z1").to_string(), "/z1");
        assert_eq!(
            Locality::from_pod_label("us.us-1a.r1"),
            Locality::parse("us/us-1a/r1")
        );
    }
}
