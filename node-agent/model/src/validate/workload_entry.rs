//! WorkloadEntry checks: the object's own, and those its fields share with a
//! ServiceEntry's inline endpoints (the same shape in Istio).

use std::net::IpAddr;

use crate::error::FieldError;
use crate::istio::{WorkloadEntry, WorkloadEntrySpec};

use super::{DNS1123_LABEL, Report, fqdn_problem, is_dns1123_label, label_selector, port};

/// Checks a WorkloadEntry on its own.
pub fn workload_entry(we: &WorkloadEntry) -> Vec<FieldError> {
    let mut r = Report::default();
    let spec = &we.spec;
    let address = spec.address.as_str();
    if address.is_empty() {
        // Istio: an entry on another network is reached through that
        // network's gateway, and may have no address here.
        if spec.network.is_empty() {
            r.error("spec.address", "required (an IP address or a DNS name)");
        }
    } else if let Some(socket) = address.strip_prefix("unix://") {
        unix_socket(&mut r, "spec.address", address, socket);
    } else if address.parse::<IpAddr>().is_err()
        && let Some(reason) = fqdn_problem(address)
    {
        r.error(
            "spec.address",
            format!("{address:?} is not an IP address or a DNS name: {reason}"),
        );
    }
    for name in spec.ports.keys() {
        if !is_dns1123_label(name) {
            r.error(
                format!("spec.ports.{name}"),
                format!("{name:?} is not a valid port name ({DNS1123_LABEL})"),
            );
        }
    }
    shared(&mut r, "spec", spec);
    r.into_errors()
}

/// A `unix://` address's path must be absolute.
pub(super) fn unix_socket(r: &mut Report, path: &str, address: &str, socket: &str) {
    if !socket.starts_with('/') {
        r.error(
            path,
            format!("{address:?}: a unix socket address needs an absolute path"),
        );
    }
}

/// The checks of fields that mean the same in both places: the port
/// numbers, labels and service account.
pub(super) fn shared(r: &mut Report, path: &str, entry: &WorkloadEntrySpec) {
    for (name, number) in &entry.ports {
        port(r, &format!("{path}.ports.{name}"), *number);
    }
    r.extend(label_selector(&format!("{path}.labels"), &entry.labels));
    // It names a Kubernetes ServiceAccount, part of the SPIFFE identity.
    let account = entry.service_account.as_str();
    if !account.is_empty() && (account.len() > 253 || !account.split('.').all(is_dns1123_label)) {
        r.error(
            format!("{path}.serviceAccount"),
            format!("{account:?} is not a service account name (dot-separated {DNS1123_LABEL})"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: &str) -> Vec<String> {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
             metadata: {{ name: vm, namespace: shop }}\nspec: {spec}\n"
        );
        let we: WorkloadEntry = serde_yaml::from_str(&yaml).expect("parses");
        workload_entry(&we)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn a_workload_entry_needs_an_address_it_can_reach() {
        assert!(check("{ address: 10.0.0.9 }").is_empty());
        assert!(check("{ address: vm-1.example.com }").is_empty());
        assert!(check("{ address: unix:///var/run/app.sock }").is_empty());
        assert!(check("{ network: other }").is_empty());
        let errors = check("{}");
        assert!(
            errors.len() == 1
                && errors[0].contains("spec.address")
                && errors[0].contains("required"),
            "{errors:?}"
        );
        let errors = check("{ address: 'unix://relative.sock' }");
        assert!(errors[0].contains("absolute path"), "{errors:?}");
        let errors = check("{ address: 'not an address' }");
        assert!(
            errors[0].contains("not an IP address or a DNS name"),
            "{errors:?}"
        );
    }

    #[test]
    fn ports_labels_and_the_service_account_are_checked() {
        let errors = check(
            "{ address: 10.0.0.9, ports: { http: 0, Bad_Name: 80 }, \
               labels: { 'app': 'no spaces allowed' }, serviceAccount: Not_An_Account }",
        );
        let joined = errors.join("\n");
        for expected in [
            "spec.ports.http",
            "out of range",
            "\"Bad_Name\" is not a valid port name",
            "spec.labels.app",
            "spec.serviceAccount",
        ] {
            assert!(joined.contains(expected), "{expected} in {joined}");
        }
        assert!(
            check("{ address: 10.0.0.9, ports: { http: 8080 }, labels: { app: vm }, serviceAccount: vm-sa }")
                .is_empty()
        );
    }
}
