//! The per-node view for people: tables by kind, or JSON with addresses
//! and enums spelled out.

use serde_json::{Value, json};
use warren_api::{
    addr,
    config::{
        Action, Authorization, Certificate, Cidr, Credential, DumpResponse, GatewayAddress,
        InboundMode, Match, MeshSettings, OutboundPolicy, Refusal, Resource, Scope, Service,
        StringMatch, TunnelProtocol, Workload, resource::Kind, string_match::Kind as SKind,
    },
    key,
};

use warren_node_agent::model::istio::mesh;

use crate::table;

fn ip(bytes: &[u8]) -> String {
    addr::from_bytes(bytes).map_or_else(|| format!("<{} bytes>", bytes.len()), |ip| ip.to_string())
}

fn ips(list: &[Vec<u8>]) -> Vec<String> {
    list.iter().map(|b| ip(b)).collect()
}

fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(&E) -> &'static str) -> String {
    E::try_from(value).map_or_else(|_| value.to_string(), |e| name(&e).to_owned())
}

fn protocol(w: &Workload) -> String {
    enum_name(w.protocol, |e: &TunnelProtocol| e.as_str_name())
}

fn mode(m: i32) -> String {
    enum_name(m, |e: &InboundMode| e.as_str_name())
}

fn string_match(m: &StringMatch) -> String {
    match &m.kind {
        Some(SKind::Exact(s)) => s.clone(),
        Some(SKind::Prefix(s)) => format!("{s}*"),
        Some(SKind::Suffix(s)) => format!("*{s}"),
        Some(SKind::Presence(_)) => "*".into(),
        None => "<empty>".into(),
    }
}

fn cidr(c: &Cidr) -> String {
    format!("{}/{}", ip(&c.address), c.prefix_len)
}

fn match_json(m: &Match) -> Value {
    let strings = |v: &[StringMatch]| v.iter().map(string_match).collect::<Vec<_>>();
    let cidrs = |v: &[Cidr]| v.iter().map(cidr).collect::<Vec<_>>();
    let mut out = serde_json::Map::new();
    let mut put = |k: &str, v: Vec<String>| {
        if !v.is_empty() {
            out.insert(k.into(), json!(v));
        }
    };
    put("principals", strings(&m.principals));
    put("notPrincipals", strings(&m.not_principals));
    put("namespaces", strings(&m.namespaces));
    put("notNamespaces", strings(&m.not_namespaces));
    put("sourceIps", cidrs(&m.source_ips));
    put("notSourceIps", cidrs(&m.not_source_ips));
    put("destinationIps", cidrs(&m.destination_ips));
    put("notDestinationIps", cidrs(&m.not_destination_ips));
    let ports = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>();
    put("destinationPorts", ports(&m.destination_ports));
    put("notDestinationPorts", ports(&m.not_destination_ports));
    Value::Object(out)
}

fn workload_json(w: &Workload) -> Value {
    json!({
        "uid": w.uid, "name": w.name, "namespace": w.namespace,
        "serviceAccount": w.service_account, "node": w.node,
        "addresses": ips(&w.addresses), "nodeAddress": ip(&w.node_address),
        "protocol": protocol(w), "trustDomain": w.trust_domain,
        "canonicalName": w.canonical_name, "canonicalRevision": w.canonical_revision,
        "workloadName": w.workload_name, "labels": w.labels,
        "authorizationPolicies": w.authorization_policies,
        "inboundMode": mode(w.inbound_mode),
        "portModes": w.port_modes.iter().map(|(p, m)| (p.to_string(), mode(*m))).collect::<std::collections::BTreeMap<_, _>>(),
        "isWaypoint": w.is_waypoint, "netnsCookie": w.netns_cookie, "netns": w.netns,
        "locality": w.locality,
        "waypoint": w.waypoint.as_ref().map(waypoint_json),
    })
}

fn waypoint_json(w: &GatewayAddress) -> Value {
    json!({"workload": w.workload, "address": ip(&w.address), "hbonePort": w.hbone_port, "identity": w.identity})
}

/// A waypoint column: the waypoint's workload, or why there is none to go
/// to (ztunnel refuses that traffic; say so rather than show nothing).
fn waypoint_cell(waypoint: Option<&GatewayAddress>) -> String {
    waypoint.map_or_else(
        || "-".into(),
        |w| {
            if w.address.is_empty() {
                "unavailable (refused)".into()
            } else {
                w.workload.clone()
            }
        },
    )
}

fn service_json(s: &Service) -> Value {
    json!({
        "name": s.name, "namespace": s.namespace, "hostname": s.hostname,
        "vips": ips(&s.vips),
        "ports": s.ports.iter().map(|p| json!({"port": p.port, "targetPort": p.target_port, "name": p.name, "appProtocol": p.app_protocol})).collect::<Vec<_>>(),
        "vipRanges": s.vip_ranges.iter().map(cidr).collect::<Vec<_>>(),
        "endpoints": s.endpoints.iter().map(|e| json!({
            "workload": e.workload, "address": (!e.address.is_empty()).then(|| ip(&e.address)),
            "hostname": (!e.hostname.is_empty()).then_some(&e.hostname), "ready": e.ready, "ports": e.ports,
            "labels": (!e.labels.is_empty()).then_some(&e.labels),
            "locality": (!e.locality.is_empty()).then_some(&e.locality),
            "weight": (e.weight != 0).then_some(e.weight),
        })).collect::<Vec<_>>(),
        "waypoint": s.waypoint.as_ref().map(waypoint_json),
        "passthrough": s.passthrough,
        "dnsFirstAddress": s.dns_first_address,
        "subjectAltNames": s.subject_alt_names,
    })
}

fn authorization_json(a: &Authorization) -> Value {
    json!({
        "name": a.name, "namespace": a.namespace,
        "scope": enum_name(a.scope, |e: &Scope| e.as_str_name()),
        "action": enum_name(a.action, |e: &Action| e.as_str_name()),
        "rules": a.rules.iter().map(|r| r.clauses.iter().map(|c| c.matches.iter().map(match_json).collect::<Vec<_>>()).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "notes": a.notes,
    })
}

fn mesh_json(m: &MeshSettings) -> Value {
    json!({
        "trustDomain": m.trust_domain, "rootNamespace": m.root_namespace,
        "outboundPolicy": enum_name(m.outbound_policy, |e: &OutboundPolicy| e.as_str_name()),
        "node": m.node, "nodeAddresses": ips(&m.node_addresses),
    })
}

/// A certificate without its private key: a dump never shows keys.
fn certificate_json(c: &Certificate) -> Value {
    json!({
        "identity": c.identity, "chainLength": c.chain_pem.len(),
        "notBefore": c.not_before, "notAfter": c.not_after,
    })
}

/// A Secret's TLS material by what it has, never the bytes: a dump never
/// shows keys (and certificates are for `openssl` on the Secret itself).
fn credential_json(c: &Credential) -> Value {
    json!({
        "name": c.name, "namespace": c.namespace,
        "certificateChain": !c.certificate_chain.is_empty(),
        "privateKey": !c.private_key.is_empty(),
        "caCertificates": !c.ca_certificates.is_empty(),
        "caCrl": !c.ca_crl.is_empty(),
    })
}

pub fn resource_json(r: &Resource) -> Value {
    let (kind, body) = match &r.kind {
        Some(Kind::Workload(w)) => ("Workload", workload_json(w)),
        Some(Kind::Service(s)) => ("Service", service_json(s)),
        Some(Kind::Authorization(a)) => ("Authorization", authorization_json(a)),
        Some(Kind::Mesh(m)) => ("MeshSettings", mesh_json(m)),
        Some(Kind::Certificate(c)) => ("Certificate", certificate_json(c)),
        Some(Kind::TrustBundle(t)) => ("TrustBundle", json!({ "roots": t.roots_pem.len() })),
        Some(Kind::Credential(c)) => ("Credential", credential_json(c)),
        Some(Kind::BackendTls(b)) => (
            "BackendTLS",
            json!({
                "namespace": b.namespace, "hosts": b.hosts,
                "ports": b.ports.iter().map(|p| json!({
                    "port": p.port, "policy": p.policy, "hostname": p.hostname,
                    "subjectAltNames": p.subject_alt_names,
                    "uriSubjectAltNames": p.uri_subject_alt_names,
                    "caCertificates": !p.ca_certificates.is_empty(),
                    "systemRoots": p.system_roots,
                    "error": (!p.error.is_empty()).then_some(&p.error),
                })).collect::<Vec<_>>(),
            }),
        ),
        Some(Kind::VirtualService(v)) => (
            "VirtualService",
            json!({
                "name": v.name, "namespace": v.namespace, "hosts": v.hosts,
                "spec": serde_json::from_str::<Value>(&v.spec_json).unwrap_or(Value::Null),
            }),
        ),
        Some(Kind::DestinationRule(d)) => (
            "DestinationRule",
            json!({
                "name": d.name, "namespace": d.namespace, "host": d.host,
                "spec": serde_json::from_str::<Value>(&d.spec_json).unwrap_or(Value::Null),
            }),
        ),
        Some(Kind::L7Authorization(a)) => (
            "L7Authorization",
            json!({
                "name": a.name, "namespace": a.namespace,
                "gateways": a.gateways, "services": a.services,
                "spec": serde_json::from_str::<Value>(&a.spec_json).unwrap_or(Value::Null),
            }),
        ),
        Some(Kind::L7Authentication(a)) => (
            "L7Authentication",
            json!({
                "name": a.name, "namespace": a.namespace,
                "gateways": a.gateways, "services": a.services,
                "spec": serde_json::from_str::<Value>(&a.spec_json).unwrap_or(Value::Null),
            }),
        ),
        Some(Kind::ExtensionProvider(p)) => (
            "ExtensionProvider",
            json!({
                "name": p.name,
                "spec": serde_json::from_str::<Value>(&p.spec_json).unwrap_or(Value::Null),
            }),
        ),
        Some(Kind::Telemetry(t)) => (
            "Telemetry",
            json!({
                "name": t.name, "namespace": t.namespace,
                "namespaceWide": t.namespace_wide, "meshWide": t.mesh_wide,
                "gateways": t.gateways, "services": t.services,
                "spec": serde_json::from_str::<Value>(&t.spec_json).unwrap_or(Value::Null),
            }),
        ),
        Some(Kind::TelemetryDefaults(d)) => (
            "TelemetryDefaults",
            json!({
                "metrics": d.metrics, "accessLogging": d.access_logging, "tracing": d.tracing,
                "accessLogFile": d.access_log_file, "accessLogFormat": d.access_log_format,
                "accessLogEncoding": d.access_log_encoding,
            }),
        ),
        None => ("Unknown", Value::Null),
    };
    json!({ "key": r.key, "kind": kind, "spec": body })
}

pub fn print_json(dump: &DumpResponse) -> anyhow::Result<()> {
    let value = json!({
        "version": dump.version,
        "resources": dump.resources.iter().map(resource_json).collect::<Vec<_>>(),
        "refused": dump.refusals.iter().map(|r| json!({"object": r.object, "error": r.error})).collect::<Vec<_>>(),
        "uncaptured": dump.uncaptured.iter().map(|r| json!({"pod": r.object, "why": r.error})).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

pub fn print_tables(dump: &DumpResponse) {
    let of = |pick: fn(&Kind) -> bool| {
        dump.resources
            .iter()
            .filter(move |r| r.kind.as_ref().is_some_and(pick))
    };
    println!("view version {}\n", dump.version);
    for r in of(|k| matches!(k, Kind::Mesh(_))) {
        if let Some(Kind::Mesh(m)) = &r.kind {
            println!(
                "MESH  trust domain {}  root namespace {}  outbound {}  node {} ({})\n",
                m.trust_domain,
                m.root_namespace,
                enum_name(m.outbound_policy, |e: &OutboundPolicy| e.as_str_name()),
                m.node,
                ips(&m.node_addresses).join(", ")
            );
        }
    }
    let rows: Vec<Vec<String>> = of(|k| matches!(k, Kind::Workload(_)))
        .filter_map(|r| match &r.kind {
            Some(Kind::Workload(w)) => Some(vec![
                w.uid.clone(),
                // A WorkloadEntry runs on no node of the mesh.
                if w.node.is_empty() {
                    "-".to_owned()
                } else {
                    w.node.clone()
                },
                ips(&w.addresses).join(","),
                protocol(w),
                w.service_account.clone(),
                mode(w.inbound_mode),
                w.authorization_policies.len().to_string(),
                waypoint_cell(w.waypoint.as_ref()),
            ]),
            _ => None,
        })
        .collect();
    println!("WORKLOADS ({})", rows.len());
    table::print(
        &[
            "WORKLOAD",
            "NODE",
            "ADDRESSES",
            "PROTOCOL",
            "SERVICE ACCOUNT",
            "INBOUND",
            "POLICIES",
            "WAYPOINT",
        ],
        &rows,
    );
    let rows: Vec<Vec<String>> = of(|k| matches!(k, Kind::Service(_)))
        .filter_map(|r| match &r.kind {
            Some(Kind::Service(s)) => Some(vec![
                format!("{}/{}", s.namespace, s.name),
                ips(&s.vips).join(","),
                s.ports
                    .iter()
                    .map(|p| {
                        if p.target_port == 0 || p.target_port == p.port {
                            p.port.to_string()
                        } else {
                            format!("{}→{}", p.port, p.target_port)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                // A ServiceEntry resolved NONE has no endpoints by design; one
                // resolved DNS may have names, which ztunnel resolves.
                if s.passthrough {
                    "passthrough".into()
                } else if s.endpoints.iter().any(|e| !e.hostname.is_empty()) {
                    format!(
                        "{} (dns)",
                        s.endpoints
                            .iter()
                            .map(|e| if e.hostname.is_empty() {
                                ip(&e.address)
                            } else {
                                e.hostname.clone()
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                } else {
                    format!(
                        "{}/{}",
                        s.endpoints.iter().filter(|e| e.ready).count(),
                        s.endpoints.len()
                    )
                },
                waypoint_cell(s.waypoint.as_ref()),
            ]),
            _ => None,
        })
        .collect();
    println!("\nSERVICES ({})", rows.len());
    table::print(&["SERVICE", "VIPS", "PORTS", "READY", "WAYPOINT"], &rows);
    let rows: Vec<Vec<String>> = of(|k| matches!(k, Kind::Authorization(_)))
        .filter_map(|r| match &r.kind {
            Some(Kind::Authorization(a)) => Some(vec![
                format!("{}/{}", a.namespace, a.name),
                enum_name(a.scope, |e: &Scope| e.as_str_name()),
                enum_name(a.action, |e: &Action| e.as_str_name()),
                a.rules.len().to_string(),
                a.notes.join("; "),
            ]),
            _ => None,
        })
        .collect();
    println!("\nPOLICIES ({})", rows.len());
    table::print(&["POLICY", "SCOPE", "ACTION", "RULES", "NOTES"], &rows);
    let rows: Vec<Vec<String>> = of(|k| {
        matches!(
            k,
            Kind::VirtualService(_)
                | Kind::DestinationRule(_)
                | Kind::L7Authorization(_)
                | Kind::L7Authentication(_)
                | Kind::ExtensionProvider(_)
                | Kind::Telemetry(_)
                | Kind::TelemetryDefaults(_)
        )
    })
    .filter_map(|r| match &r.kind {
        Some(Kind::VirtualService(v)) => Some(vec![
            // What a Service's Gateway API routes make together.
            if r.key.starts_with(key::SERVICE_ROUTES_PREFIX) {
                "GatewayRoutes".into()
            } else {
                "VirtualService".into()
            },
            format!("{}/{}", v.namespace, v.name),
            v.hosts.join(","),
        ]),
        Some(Kind::DestinationRule(d)) => Some(vec![
            "DestinationRule".into(),
            format!("{}/{}", d.namespace, d.name),
            d.host.clone(),
        ]),
        // Whom an attached policy binds, in the HOSTS column.
        Some(Kind::L7Authorization(a)) => Some(vec![
            "AuthorizationPolicy".into(),
            format!("{}/{}", a.namespace, a.name),
            bound(&a.gateways, &a.services),
        ]),
        Some(Kind::L7Authentication(a)) => Some(vec![
            "RequestAuthentication".into(),
            format!("{}/{}", a.namespace, a.name),
            bound(&a.gateways, &a.services),
        ]),
        // The authorizer it asks, in the HOSTS column.
        Some(Kind::ExtensionProvider(p)) => Some(vec![
            "ExtensionProvider".into(),
            p.name.clone(),
            serde_json::from_str::<mesh::ExtensionProvider>(&p.spec_json)
                .ok()
                .and_then(|spec| {
                    let (service, port) = spec.authz_service()?;
                    let protocol = match spec.authz_protocol()? {
                        mesh::AuthzProtocol::Http => "http",
                        mesh::AuthzProtocol::Grpc => "grpc",
                    };
                    Some(format!("{service}:{port} ({protocol})"))
                })
                .unwrap_or_else(|| "(telemetry)".into()),
        ]),
        // Whom it applies to, in the HOSTS column.
        Some(Kind::Telemetry(t)) => Some(vec![
            "Telemetry".into(),
            format!("{}/{}", t.namespace, t.name),
            match (t.mesh_wide, t.namespace_wide) {
                (true, _) => "(mesh)".into(),
                (false, true) => "(namespace)".into(),
                (false, false) => bound(&t.gateways, &t.services),
            },
        ]),
        Some(Kind::TelemetryDefaults(d)) => Some(vec![
            "TelemetryDefaults".into(),
            "(mesh config)".into(),
            format!(
                "metrics: {}; accessLogging: {}; accessLogFile: {}{}",
                if d.metrics.is_empty() {
                    "prometheus".into()
                } else {
                    d.metrics.join(",")
                },
                if d.access_logging.is_empty() {
                    "-".into()
                } else {
                    d.access_logging.join(",")
                },
                match d.access_log_file.as_deref() {
                    None => "(unset)",
                    Some("") => "\"\" (none)",
                    Some(path) => path,
                },
                if d.access_log_encoding.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", d.access_log_encoding)
                },
            ),
        ]),
        _ => None,
    })
    .collect();
    println!("\nROUTING AND POLICY FOR WAYPOINTS ({})", rows.len());
    table::print(&["KIND", "OBJECT", "HOSTS"], &rows);
    let rows: Vec<Vec<String>> = of(|k| matches!(k, Kind::Certificate(_)))
        .filter_map(|r| match &r.kind {
            Some(Kind::Certificate(c)) => Some(vec![c.identity.clone(), c.not_after.to_string()]),
            _ => None,
        })
        .collect();
    println!("\nCERTIFICATES ({})", rows.len());
    table::print(&["IDENTITY", "NOT AFTER (unix)"], &rows);
    print_problems(
        "REFUSED",
        "the last good version of each stays in force",
        ["OBJECT", "ERROR"],
        &dump.refusals,
    );
    print_problems(
        "NOT CAPTURED",
        "pods the mesh should hold and the agent could not capture",
        ["POD", "WHY"],
        &dump.uncaptured,
    );
}

/// A table of objects and what is wrong with each, only when there is one.
fn print_problems(title: &str, meaning: &str, header: [&str; 2], problems: &[Refusal]) {
    if problems.is_empty() {
        return;
    }
    println!("\n{title} ({}) — {meaning}", problems.len());
    let rows: Vec<Vec<String>> = problems
        .iter()
        .map(|r| vec![r.object.clone(), r.error.clone()])
        .collect();
    table::print(&header, &rows);
}

/// Waypoint Gateways and Services a policy is attached to, for a table cell.
fn bound(gateways: &[String], services: &[String]) -> String {
    gateways
        .iter()
        .map(|g| format!("(waypoint {g})"))
        .chain(services.iter().cloned())
        .collect::<Vec<_>>()
        .join(",")
}
