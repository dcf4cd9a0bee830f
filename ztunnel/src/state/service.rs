//! Services: VIPs, ports, endpoints and an optional waypoint, and the choice of an endpoint.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::atomic::{AtomicUsize, Ordering},
};

use serde::Serialize;
use warren_api::{Identity, config};

use super::ResourceError;

#[derive(Debug, Serialize)]
pub struct Service {
    pub key: String,
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
    pub waypoint: Option<Waypoint>,
    /// Round-robin cursor, shared by every connection to the service.
    #[serde(skip)]
    next: AtomicUsize,
}

impl Service {
    /// The name telemetry and access lines give the service: its hostname, else its
    /// key.
    pub fn telemetry_host(&self) -> &str {
        if self.hostname.is_empty() {
            &self.key
        } else {
            &self.hostname
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ServicePort {
    pub port: u16,
    /// Where endpoints listen (already `port` when the agent sent 0).
    pub target_port: u16,
    pub name: String,
    /// Kubernetes `appProtocol`, empty when not set.
    pub app_protocol: String,
}

/// What a service port carries, as Istio's protocol selection reads it:
/// `appProtocol` first, else the port name's prefix (`tcp-db`, `http2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, HTTP/2 or gRPC: a waypoint routes requests.
    Http,
    /// Opaque bytes (including TLS a proxy does not terminate and the
    /// database protocols Istio names): a waypoint routes connections.
    Tcp,
}

/// Which HTTP an HTTP port declares, for the version a waypoint speaks to
/// its endpoints (Istio's `IsHTTP2` and `IsHTTP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeclaredHttp {
    /// `http`, `http_proxy`, appProtocol `kubernetes.io/ws`: HTTP/1.1
    /// upstream.
    Http1,
    /// `http2`, `grpc`, `grpc-web`, appProtocol `kubernetes.io/h2c`:
    /// HTTP/2 upstream.
    Http2,
    /// Anything else (an unnamed port): the client's version.
    #[default]
    Undeclared,
}

impl ServicePort {
    pub fn protocol(&self) -> Protocol {
        match self.declared().as_str() {
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Protocol::Tcp,
            // http, http2, grpc, grpc-web, h2c, kubernetes.io/h2c, ws, and
            // unnamed ports: served as HTTP (the server tells 1.1 from 2).
            _ => Protocol::Http,
        }
    }

    pub fn declared_http(&self) -> DeclaredHttp {
        match self.declared().as_str() {
            "http" | "http_proxy" | "kubernetes.io/ws" => DeclaredHttp::Http1,
            "http2" | "grpc" | "grpc-web" | "kubernetes.io/h2c" => DeclaredHttp::Http2,
            _ => DeclaredHttp::Undeclared,
        }
    }

    /// `appProtocol` first, else the port name's prefix, lower case.
    fn declared(&self) -> String {
        let declared = if self.app_protocol.is_empty() {
            self.name.split('-').next().unwrap_or_default()
        } else {
            self.app_protocol.as_str()
        };
        declared.to_ascii_lowercase()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    /// Key of the endpoint's workload; `None` for an endpoint that is no pod.
    pub workload: Option<String>,
    pub address: IpAddr,
    pub ready: bool,
    /// Target port by service port, when it differs per endpoint.
    pub ports: BTreeMap<u16, u16>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Waypoint {
    pub workload: String,
    /// None while the waypoint has no running pod: its policy cannot be
    /// enforced, so connections are refused rather than sent around it.
    pub address: Option<IpAddr>,
    pub hbone_port: u16,
    #[serde(serialize_with = "super::serialize_display")]
    pub identity: Identity,
}

fn port(key: &str, field: &'static str, value: u32) -> Result<u16, ResourceError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ResourceError::new(key, field, format!("{value} is not a port")))
}

fn address(key: &str, field: &'static str, bytes: &[u8]) -> Result<IpAddr, ResourceError> {
    warren_api::addr::from_bytes(bytes).ok_or_else(|| {
        ResourceError::new(
            key,
            field,
            format!("{} bytes is not an IPv4 or IPv6 address", bytes.len()),
        )
    })
}

impl Service {
    pub fn from_proto(key: &str, s: config::Service) -> Result<Service, ResourceError> {
        let vips = s
            .vips
            .iter()
            .map(|v| address(key, "vips", v))
            .collect::<Result<Vec<_>, _>>()?;
        let ports = s
            .ports
            .iter()
            .map(|p| {
                let service_port = port(key, "ports.port", p.port)?;
                let target_port = match p.target_port {
                    0 => service_port,
                    t => port(key, "ports.target_port", t)?,
                };
                Ok(ServicePort {
                    port: service_port,
                    target_port,
                    name: p.name.clone(),
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect::<Result<Vec<_>, ResourceError>>()?;
        let endpoints = s
            .endpoints
            .iter()
            .map(|e| {
                let ports = e
                    .ports
                    .iter()
                    .map(|(sp, tp)| {
                        Ok((
                            port(key, "endpoints.ports", *sp)?,
                            port(key, "endpoints.ports", *tp)?,
                        ))
                    })
                    .collect::<Result<_, ResourceError>>()?;
                Ok(Endpoint {
                    workload: (!e.workload.is_empty()).then(|| e.workload.clone()),
                    address: address(key, "endpoints.address", &e.address)?,
                    ready: e.ready,
                    ports,
                })
            })
            .collect::<Result<Vec<_>, ResourceError>>()?;
        let waypoint = match s.waypoint {
            None => None,
            Some(w) => Some(Waypoint {
                address: if w.address.is_empty() {
                    None
                } else {
                    Some(address(key, "waypoint.address", &w.address)?)
                },
                hbone_port: match w.hbone_port {
                    0 => 15008,
                    p => port(key, "waypoint.hbone_port", p)?,
                },
                identity: w
                    .identity
                    .parse()
                    .or_else(|e| {
                        if w.address.is_empty() {
                            // No pod yet, so no identity either; never dialled.
                            Ok(Identity::new("unavailable", &s.namespace, "waypoint"))
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e: warren_api::identity::IdentityError| {
                        ResourceError::new(key, "waypoint.identity", e.to_string())
                    })?,
                workload: w.workload,
            }),
        };
        Ok(Service {
            key: key.to_owned(),
            name: s.name,
            namespace: s.namespace,
            hostname: s.hostname,
            vips,
            ports,
            endpoints,
            waypoint,
            next: AtomicUsize::new(0),
        })
    }

    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// The next ready endpoint for which `usable` holds, round robin; among those that
    /// also satisfy `preferred`, when any does.
    pub fn pick(
        &self,
        usable: impl Fn(&Endpoint) -> bool,
        preferred: Option<&dyn Fn(&Endpoint) -> bool>,
    ) -> Option<&Endpoint> {
        let ready = |e: &&Endpoint| e.ready && usable(e);
        let count = self.endpoints.iter().filter(ready).count();
        if count == 0 {
            return None;
        }
        if let Some(preferred) = preferred {
            let local: Vec<&Endpoint> = self
                .endpoints
                .iter()
                .filter(ready)
                .filter(|e| preferred(e))
                .collect();
            if !local.is_empty() {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                return local.get(n % local.len()).copied();
            }
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % count;
        self.endpoints.iter().filter(ready).nth(n)
    }

    /// The port an endpoint listens on for `service_port`.
    pub fn target_port(endpoint: &Endpoint, port: &ServicePort) -> u16 {
        endpoint
            .ports
            .get(&port.port)
            .copied()
            .unwrap_or(port.target_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, app_protocol: &str) -> ServicePort {
        ServicePort {
            port: 80,
            target_port: 80,
            name: name.into(),
            app_protocol: app_protocol.into(),
        }
    }

    #[test]
    fn protocol_from_app_protocol_then_port_name() {
        assert_eq!(port("tcp", "").protocol(), Protocol::Tcp);
        assert_eq!(port("tcp-db", "").protocol(), Protocol::Tcp);
        assert_eq!(port("mysql", "").protocol(), Protocol::Tcp);
        assert_eq!(port("http", "").protocol(), Protocol::Http);
        assert_eq!(port("grpc-api", "").protocol(), Protocol::Http);
        assert_eq!(port("", "").protocol(), Protocol::Http);
        // appProtocol wins over the name.
        assert_eq!(port("http", "TCP").protocol(), Protocol::Tcp);
        assert_eq!(port("tcp", "kubernetes.io/h2c").protocol(), Protocol::Http);
    }

    #[test]
    fn declared_http_version() {
        assert_eq!(port("http-web", "").declared_http(), DeclaredHttp::Http1);
        assert_eq!(port("HTTP", "").declared_http(), DeclaredHttp::Http1);
        assert_eq!(port("grpc", "").declared_http(), DeclaredHttp::Http2);
        assert_eq!(port("http2-api", "").declared_http(), DeclaredHttp::Http2);
        assert_eq!(
            port("web", "kubernetes.io/h2c").declared_http(),
            DeclaredHttp::Http2
        );
        assert_eq!(
            port("http", "grpc-web").declared_http(),
            DeclaredHttp::Http2
        );
        assert_eq!(
            port("ws", "kubernetes.io/ws").declared_http(),
            DeclaredHttp::Http1
        );
        assert_eq!(port("h2c", "").declared_http(), DeclaredHttp::Undeclared);
        assert_eq!(port("", "").declared_http(), DeclaredHttp::Undeclared);
        assert_eq!(port("web", "").declared_http(), DeclaredHttp::Undeclared);
    }
}
