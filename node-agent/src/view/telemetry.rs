//! Telemetry objects as waypoints receive them: whom each applies to.

use warren_api::config::Telemetry;

use super::authorization::attachment;
use crate::model::istio::telemetry::Telemetry as IstioTelemetry;

/// `telemetry` for the waypoints, with the Gateways and Services it is
/// attached to; `None` when it names none a waypoint serves, or selects
/// pods by label (which no waypoint is: those are for sidecars, as in
/// Istio's ambient mode).
pub fn for_waypoints(
    telemetry: &IstioTelemetry,
    root_namespace: &str,
    is_waypoint: impl Fn(&str) -> bool,
    entry_hosts: impl Fn(&str) -> Vec<String>,
) -> Option<Telemetry> {
    let spec = &telemetry.spec;
    let namespace = telemetry
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let namespace_wide = spec.namespace_wide();
    let (gateways, services) = if namespace_wide {
        (Vec::new(), Vec::new())
    } else if spec.selector.is_some() {
        return None;
    } else {
        attachment(
            spec.target_ref.iter().chain(&spec.target_refs),
            is_waypoint,
            entry_hosts,
        )?
    };
    Some(Telemetry {
        name: telemetry.metadata.name.clone().unwrap_or_default(),
        mesh_wide: namespace_wide && namespace == root_namespace,
        namespace,
        namespace_wide,
        gateways,
        services,
        spec_json: serde_json::to_string(spec).unwrap_or_default(),
        created: telemetry
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
    })
}
