//! Gateway API BackendTLSPolicies, as the agent resolved them (which policy
//! is in force on which port of which host, its CA bundle read in),
//! compiled into the TLS the waypoint starts to a host's endpoints.
//!
//! They speak only where no DestinationRule's `tls` for that very host does:
//! a rule written for the host and port (at any level, `DISABLE` included)
//! is the operator's last word, as Istio lets a DestinationRule of the host
//! override what it converts a BackendTLSPolicy into. A wildcard rule's
//! `tls` (a mesh-wide `*.local` with `ISTIO_MUTUAL`, say) gives way to the
//! policy, as the exact host the policy makes would win over it in Istio.

use std::{collections::HashMap, sync::Arc};

use warren_api::config::BackendTls;

use super::tls::{TlsMode, TlsSettings};

/// Every policy the agent sent, by (host, namespace of its target).
#[derive(Debug, Default)]
pub struct BackendTlsTable {
    hosts: HashMap<(String, String), Ports>,
}

/// One target's ports: their own settings, then those for every other port.
#[derive(Clone, Debug, Default)]
struct Ports {
    each: Vec<(u16, Arc<TlsSettings>)>,
    rest: Option<Arc<TlsSettings>>,
}

/// A policy part that cannot be honoured: its connections are refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("BackendTLSPolicy {policy} (port {port}): {reason}; connections are refused")]
pub struct BackendTlsError {
    pub policy: String,
    /// 0 for every port.
    pub port: u16,
    pub reason: String,
}

impl BackendTlsTable {
    /// Every policy's settings.
    pub fn settings(&self) -> impl Iterator<Item = &Arc<TlsSettings>> {
        self.hosts
            .values()
            .flat_map(|ports| ports.each.iter().map(|(_, s)| s).chain(&ports.rest))
    }

    /// Compiles the targets' policies, in any order. A host two targets of
    /// one namespace share (two ServiceEntries naming it) has the ports of
    /// both, as one target's are: a port one of them names has that one's
    /// policy (the first's by resource key when both name it), every other
    /// port the first whole-target policy.
    pub fn build<'a>(
        targets: impl IntoIterator<Item = (&'a str, &'a BackendTls)>,
    ) -> (BackendTlsTable, Vec<BackendTlsError>) {
        let mut targets: Vec<(&str, &BackendTls)> = targets.into_iter().collect();
        targets.sort_by_key(|(key, _)| *key);
        let mut table = BackendTlsTable::default();
        let mut errors = Vec::new();
        for (_, target) in targets {
            let mut ports = Ports::default();
            for port in &target.ports {
                // The agent sends service ports; anything else is no port.
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                let (mode, error) = TlsSettings::compile_backend(port);
                if let Some(reason) = error {
                    errors.push(BackendTlsError {
                        policy: port.policy.clone(),
                        port: number,
                        reason,
                    });
                }
                let TlsMode::Originate(settings) = mode else {
                    continue;
                };
                if number == 0 {
                    ports.rest.get_or_insert(settings);
                } else if !ports.each.iter().any(|(p, _)| *p == number) {
                    ports.each.push((number, settings));
                }
            }
            for host in &target.hosts {
                let key = (normal(host), target.namespace.clone());
                let held = table.hosts.entry(key).or_default();
                for (number, settings) in &ports.each {
                    if !held.each.iter().any(|(p, _)| p == number) {
                        held.each.push((*number, Arc::clone(settings)));
                    }
                }
                if held.rest.is_none() {
                    held.rest.clone_from(&ports.rest);
                }
            }
        }
        (table, errors)
    }

    /// The TLS a policy asks for traffic to `host` (of a service in
    /// `namespace`) on `port`.
    pub fn get(&self, host: &str, namespace: &str, port: u16) -> Option<&Arc<TlsSettings>> {
        let ports = self.hosts.get(&(normal(host), namespace.to_owned()))?;
        ports
            .each
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, settings)| settings)
            .or(ports.rest.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// Hosts compare as DNS names do: any case, a trailing dot or not.
fn normal(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}
