//! What a CONNECT asks the waypoint to serve: the Service at the address
//! dialled, or a pod addressed directly (by its own address, or as the
//! endpoint a client's ztunnel picked for a Service without a waypoint).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use warren_ztunnel::state::{Service, State};

/// The destination of a CONNECT to `dst` from a client of `namespace`. A
/// pod's address is the pod's, whichever ServiceEntry also names it, as
/// ztunnel reads it: an entry must not take over a pod's traffic (nor send
/// it through the entry's waypoint instead of the pod's). Among
/// ServiceEntries sharing an address, the one exported to the client's
/// namespace counts; an address no Service has may be in an entry's
/// address block. The caller checks that this waypoint is the one the
/// destination chose.
pub fn of_connect(state: &State, dst: SocketAddr, namespace: &str) -> Option<Arc<Service>> {
    if state.workload_by_ip(dst.ip()).is_some() {
        return pod(state, dst.ip(), dst.port());
    }
    state
        .service_for_connection(dst, namespace)
        .filter(|s| s.waypoint.is_some())
}

/// A pod at `ip` whose traffic goes through a waypoint, as the one-endpoint
/// Service a waypoint serves it as on `port` ([`Service::of_pod`]).
pub fn pod(state: &State, ip: IpAddr, port: u16) -> Option<Arc<Service>> {
    let workload = state.workload_by_ip(ip).filter(|w| w.waypoint.is_some())?;
    let declared = state.declared_port(&workload, port);
    Some(Arc::new(Service::of_pod(
        &workload,
        ip,
        port,
        declared.as_ref(),
    )))
}

#[cfg(test)]
mod tests {
    use warren_api::{addr, config};
    use warren_ztunnel::state::{Resource, Workload};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn waypoint(name: &str) -> config::GatewayAddress {
        config::GatewayAddress {
            workload: format!("workload/ns/{name}-0"),
            address: addr::to_bytes(ip("10.0.0.9")),
            hbone_port: 15008,
            identity: format!("spiffe://cluster.local/ns/ns/sa/{name}"),
        }
    }

    /// Pod `db-0` at 10.0.1.5 through waypoint `pods`; a Service `db`
    /// declaring HTTP on its port 8080; a ServiceEntry through waypoint
    /// `entries` claiming the pod's address.
    fn state() -> Arc<State> {
        let state = State::new(Some("node-a".into()), 15008);
        let pod = config::Workload {
            name: "db-0".into(),
            namespace: "ns".into(),
            service_account: "db".into(),
            node: "node-b".into(),
            addresses: vec![addr::to_bytes(ip("10.0.1.5"))],
            node_address: addr::to_bytes(ip("172.30.0.2")),
            protocol: config::TunnelProtocol::Hbone as i32,
            trust_domain: "cluster.local".into(),
            waypoint: Some(waypoint("pods")),
            ..Default::default()
        };
        let pod = Workload::from_proto("workload/ns/db-0", pod, "cluster.local").expect("a pod");
        let db = config::Service {
            name: "db".into(),
            namespace: "ns".into(),
            vips: vec![addr::to_bytes(ip("10.96.0.20"))],
            ports: vec![config::ServicePort {
                port: 80,
                target_port: 8080,
                name: "http-api".into(),
                ..Default::default()
            }],
            endpoints: vec![config::Endpoint {
                workload: "workload/ns/db-0".into(),
                address: addr::to_bytes(ip("10.0.1.5")),
                ready: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let entry_key = warren_api::key::service_entry("other", "db.example");
        let entry = config::Service {
            name: "db.example".into(),
            namespace: "other".into(),
            hostname: "db.example".into(),
            vips: vec![addr::to_bytes(ip("10.0.1.5"))],
            ports: vec![config::ServicePort {
                port: 8080,
                ..Default::default()
            }],
            waypoint: Some(waypoint("entries")),
            ..Default::default()
        };
        state.update(|inner| {
            inner.upsert("workload/ns/db-0".into(), Resource::Workload(Arc::new(pod)));
            let db = Service::from_proto("service/ns/db", db).expect("a service");
            inner.upsert("service/ns/db".into(), Resource::Service(Arc::new(db)));
            let entry = Service::from_proto(&entry_key, entry).expect("an entry");
            inner.upsert(entry_key.clone(), Resource::Service(Arc::new(entry)));
        });
        state
    }

    #[test]
    fn a_pods_address_is_the_pods_whatever_entry_names_it() {
        let state = state();
        let found = of_connect(&state, "10.0.1.5:8080".parse().expect("ip:port"), "other")
            .expect("the pod");
        assert_eq!(found.key, "workload/ns/db-0");
        assert_eq!(
            found.waypoint.as_ref().map(|w| w.identity.to_string()),
            Some("spiffe://cluster.local/ns/ns/sa/pods".to_owned())
        );
        // One endpoint, itself; no name a Service policy could bind.
        assert_eq!(found.name, "");
        assert_eq!(found.hostname, "10.0.1.5");
        assert_eq!(found.endpoints.len(), 1);
        // The port speaks what the Service in front of the pod declares.
        let port = found.port(8080).expect("the port dialled");
        assert_eq!(
            port.protocol(),
            warren_ztunnel::state::service::Protocol::Http
        );
        // A port no Service declares is opaque TCP.
        let other = pod(&state, ip("10.0.1.5"), 9090).expect("the pod");
        let port = other.port(9090).expect("the port dialled");
        assert_eq!(
            port.protocol(),
            warren_ztunnel::state::service::Protocol::Tcp
        );
    }

    #[test]
    fn a_service_vip_is_the_service_and_other_addresses_nothing() {
        let state = state();
        // The Service has no waypoint of its own: not served by address.
        assert!(of_connect(&state, "10.96.0.20:80".parse().expect("ip:port"), "ns").is_none());
        assert!(of_connect(&state, "10.9.9.9:80".parse().expect("ip:port"), "ns").is_none());
        assert!(pod(&state, ip("10.9.9.9"), 80).is_none());
    }
}
