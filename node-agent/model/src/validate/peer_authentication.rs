//! PeerAuthentication checks: the selector and port-level mTLS.

use crate::error::FieldError;
use crate::istio::PeerAuthentication;

use super::{Report, port, workload_selector};

/// Checks a PeerAuthentication on its own.
pub fn peer_authentication(pa: &PeerAuthentication) -> Vec<FieldError> {
    let mut r = Report::default();
    let spec = &pa.spec;
    if let Some(selector) = &spec.selector {
        workload_selector(&mut r, "spec.selector", selector);
    }
    let selects_workloads = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !selects_workloads {
        // Ports belong to workloads: a namespace- or mesh-wide policy has no
        // port to refer to.
        r.error(
            "spec.portLevelMtls",
            "requires a selector with matchLabels: port-level mTLS applies to chosen workloads, not to a whole namespace or mesh",
        );
    }
    for number in spec.port_level_mtls.keys() {
        port(&mut r, &format!("spec.portLevelMtls.{number}"), *number);
    }
    r.into_errors()
}
