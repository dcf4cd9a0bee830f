//! BackendTLSPolicy status: every Service (or ServiceEntry) a policy
//! targets is an ancestor in its `status.ancestors` (as Istio reports a
//! mesh policy), told whether the policy holds its ports (`Accepted`, or
//! why not: the target or its port is missing, an older policy holds them,
//! or the policy asks what Warren cannot do) and whether its CA bundles
//! resolve (`ResolvedRefs`).
//!
//! Which policy holds which port is read from what the waypoints receive
//! ([`backend_tls::in_namespace`]), so the status cannot tell another story
//! than the proxies act on.

use std::collections::BTreeMap;

use serde_json::Value;
use warren_api::{config::BackendTlsPort, key};

use super::route_status::{Condition, Parent};
use crate::{
    model::{
        Kind, Object, ObjectKey,
        backend_tls_policy::{BackendTLSPolicy, unsupported, unsupported_ca_kinds},
        http_route::{ParentKind, ParentReference},
    },
    store::Store,
    view::{backend_tls, names_cluster_services, section_port, serving_entry, serving_service},
};

/// What the policies of a namespace hold, by the resource key of their
/// target: worked out once per namespace for all its policies.
pub struct Held {
    resources: BTreeMap<String, warren_api::config::BackendTls>,
    cluster_domain: String,
}

pub fn held(store: &Store, namespace: &str, cluster_domain: &str) -> Held {
    Held {
        resources: backend_tls::in_namespace(store, namespace, cluster_domain),
        cluster_domain: cluster_domain.to_owned(),
    }
}

/// The ancestor entries `policy` should show, one per Service or
/// ServiceEntry it targets (targets of other kinds are other
/// implementations' to report).
pub fn ancestors(store: &Store, held: &Held, policy: &BackendTLSPolicy) -> Vec<Parent> {
    let namespace = policy.metadata.namespace.as_deref().unwrap_or("default");
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let me = format!("{namespace}/{name}");
    let resolved = resolved_refs(store, namespace, policy);
    // Its targets, each once, with the sections it names there (`None`:
    // the whole target).
    let mut targets: Vec<(ParentKind, &str, Vec<Option<&str>>)> = Vec::new();
    for target in &policy.spec.target_refs {
        let Some(kind) = target.target_kind() else {
            continue;
        };
        let section = target.section_name.as_deref();
        match targets
            .iter_mut()
            .find(|(k, n, _)| *k == kind && *n == target.name)
        {
            Some((_, _, sections)) => sections.push(section),
            None => targets.push((kind, &target.name, vec![section])),
        }
    }
    targets
        .into_iter()
        .map(|(kind, target, sections)| {
            let accepted = accepted(
                store,
                held,
                policy,
                &me,
                &resolved,
                Target {
                    namespace,
                    kind,
                    name: target,
                    sections: &sections,
                },
            );
            Parent {
                parent_ref: ancestor_ref(kind, target),
                conditions: vec![accepted, resolved.condition()],
            }
        })
        .collect()
}

/// The ancestor entries of a policy the agents refused, read from its raw
/// object: each Service or ServiceEntry it targets, not accepted, with why.
pub fn refused_ancestors(object: &Value, why: &str) -> Vec<Parent> {
    let mut refs: Vec<ParentReference> = Vec::new();
    let targets = object.pointer("/spec/targetRefs").and_then(Value::as_array);
    for target in targets.into_iter().flatten() {
        let text = |field: &str| target[field].as_str().unwrap_or_default();
        let kind = match (text("group"), text("kind")) {
            ("" | "core", "Service") => ParentKind::Service,
            ("networking.istio.io", "ServiceEntry") => ParentKind::ServiceEntry,
            _ => continue,
        };
        let reference = ancestor_ref(kind, text("name"));
        if !refs.contains(&reference) {
            refs.push(reference);
        }
    }
    refs.into_iter()
        .map(|parent_ref| Parent {
            parent_ref,
            conditions: vec![Condition::not_accepted(
                "Invalid",
                format!("refused, its last good version (if any) stays in force: {why}"),
            )],
        })
        .collect()
}

fn ancestor_ref(kind: ParentKind, name: &str) -> ParentReference {
    let group = match kind {
        ParentKind::Service => "",
        ParentKind::ServiceEntry => "networking.istio.io",
    };
    ParentReference {
        group: Some(group.to_owned()),
        kind: Some(kind.name().to_owned()),
        name: name.to_owned(),
        ..ParentReference::default()
    }
}

/// One target of a policy, with the sections the policy names there.
struct Target<'a> {
    namespace: &'a str,
    kind: ParentKind,
    name: &'a str,
    sections: &'a [Option<&'a str>],
}

fn accepted(
    store: &Store,
    held: &Held,
    policy: &BackendTLSPolicy,
    me: &str,
    resolved: &Resolved,
    target: Target<'_>,
) -> Condition {
    let Target {
        namespace,
        kind,
        name,
        sections,
    } = target;
    let what = format!("{} {namespace}/{name}", kind.name());
    // A ServiceEntry's hosts that name no cluster Service (which an entry
    // never takes over).
    let mut own_hosts = None;
    let (resource_key, serving) = match kind {
        ParentKind::Service => {
            let key = ObjectKey::new(Kind::Service, Some(namespace), name);
            let Some(Object::Service(service)) = store.get(&key) else {
                return Condition::not_accepted("TargetNotFound", format!("no {what}"));
            };
            (
                key::backend_tls(namespace, name),
                serving_service(store, namespace, service),
            )
        }
        ParentKind::ServiceEntry => {
            let key = ObjectKey::new(Kind::ServiceEntry, Some(namespace), name);
            let Some(Object::ServiceEntry(entry)) = store.get(&key) else {
                return Condition::not_accepted("TargetNotFound", format!("no {what}"));
            };
            let hosts = entry.spec.hosts.iter();
            own_hosts = Some(
                hosts
                    .filter(|h| !names_cluster_services(h, &held.cluster_domain))
                    .count(),
            );
            (
                key::service_entry_backend_tls(namespace, name),
                serving_entry(store, namespace, entry),
            )
        }
    };
    let Some(tls) = held.resources.get(&resource_key) else {
        // Held nowhere at all: a ServiceEntry whose hosts all name the
        // cluster's Services (which an entry never takes over), or the
        // sections it names are none of the target's ports (below).
        if own_hosts == Some(0) {
            return Condition::not_accepted(
                "TargetNotFound",
                format!(
                    "{what} has no host of its own: its hosts name the cluster's Services, which an entry's policy does not take"
                ),
            );
        }
        return not_held(store, &[], namespace, kind, name, sections, &what);
    };
    let ports: Vec<&BackendTlsPort> = tls.ports.iter().collect();
    let mine: Vec<u32> = ports
        .iter()
        .filter(|p| p.policy == me)
        .map(|p| p.port)
        .collect();
    if mine.is_empty() {
        return not_held(store, &ports, namespace, kind, name, sections, &what);
    }
    let on = if mine.contains(&0) {
        // Ports other policies name by section are theirs.
        let others: Vec<String> = ports
            .iter()
            .filter(|p| p.port != 0 && p.policy != me)
            .map(|p| p.port.to_string())
            .collect();
        if others.is_empty() {
            "every port".to_owned()
        } else {
            format!("every port but {}", others.join(", "))
        }
    } else {
        let ports: Vec<String> = mine.iter().map(u32::to_string).collect();
        format!("port {}", ports.join(", "))
    };
    let unsupported = unsupported(policy);
    if !unsupported.is_empty() {
        return Condition::not_accepted(
            "Invalid",
            format!(
                "asks what Warren cannot do, so connections to {what} ({on}) are refused rather than sent without it: {}",
                unsupported.join("; ")
            ),
        );
    }
    if resolved.none_valid {
        return Condition::not_accepted(
            "NoValidCACertificate",
            format!(
                "no CA certificate reference resolves, so connections to {what} ({on}) are refused"
            ),
        );
    }
    let waypoint = match serving {
        Some(waypoint) => format!("at its waypoint {waypoint}"),
        None => {
            "once a waypoint serves it (waypoints start this TLS; none serves it yet)".to_owned()
        }
    };
    let refused = if resolved.problems.is_empty() && resolved.kinds.is_empty() {
        ""
    } else {
        ", but refuses its connections until every CA certificate reference resolves"
    };
    Condition::accepted(format!("holds {what} ({on}) {waypoint}{refused}"))
}

/// Why a policy holds no port of a target: each section it names is no port
/// of the target, or another policy holds it (`ports`: what the target's
/// policies hold).
fn not_held(
    store: &Store,
    ports: &[&BackendTlsPort],
    namespace: &str,
    kind: ParentKind,
    name: &str,
    sections: &[Option<&str>],
    what: &str,
) -> Condition {
    let mut missing = Vec::new();
    let mut holders = Vec::new();
    for section in sections {
        let port = match section {
            Some(section) => match section_port(store, namespace, kind, name, section) {
                Some(port) => u32::from(port),
                None => {
                    missing.push(format!("{section:?}"));
                    continue;
                }
            },
            None => 0,
        };
        if let Some(holder) = ports.iter().find(|p| p.port == port) {
            holders.push(holder.policy.clone());
        }
    }
    holders.sort();
    holders.dedup();
    if holders.is_empty() {
        Condition::not_accepted(
            "TargetNotFound",
            format!(
                "{what} has no port named {}: the policy applies there once it has",
                missing.join(", ")
            ),
        )
    } else {
        Condition::not_accepted(
            "Conflicted",
            format!(
                "an older policy (or one first by name) holds {what} where this one would: BackendTLSPolicy {}",
                holders.join(", ")
            ),
        )
    }
}

/// Whether a policy's `caCertificateRefs` resolve.
struct Resolved {
    /// Every reference is of a kind Warren reads.
    kinds: Vec<String>,
    /// What is wrong with the ConfigMaps named.
    problems: Vec<String>,
    /// References are given and none resolves.
    none_valid: bool,
}

fn resolved_refs(store: &Store, namespace: &str, policy: &BackendTLSPolicy) -> Resolved {
    let refs = &policy.spec.validation.ca_certificate_refs;
    let kinds = unsupported_ca_kinds(policy);
    let problems: Vec<String> = refs
        .iter()
        .filter(|r| r.is_config_map())
        .filter_map(|r| backend_tls::ca_certificates(store, namespace, &r.name).err())
        .collect();
    let none_valid = !refs.is_empty() && kinds.len() + problems.len() == refs.len();
    Resolved {
        kinds,
        problems,
        none_valid,
    }
}

impl Resolved {
    fn condition(&self) -> Condition {
        let (reason, message) = if !self.kinds.is_empty() {
            ("InvalidKind", self.kinds.join("; "))
        } else if !self.problems.is_empty() {
            ("InvalidCACertificateRef", self.problems.join("; "))
        } else {
            return Condition {
                kind: "ResolvedRefs",
                status: true,
                reason: "ResolvedRefs",
                message: "every CA certificate reference resolves".into(),
            };
        };
        Condition {
            kind: "ResolvedRefs",
            status: false,
            reason,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: app, namespace: shop }
spec: { ports: [{ name: http, port: 80 }, { name: admin, port: 9000 }] }
---
apiVersion: v1
kind: Service
metadata: { name: other, namespace: shop }
spec: { ports: [{ name: http, port: 80 }] }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: partner, namespace: shop, labels: { istio.io/use-waypoint: waypoint } }
spec:
  hosts: [api.partner.example]
  ports: [{ number: 443, name: https, protocol: HTTPS }]
  resolution: DNS
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: shop }
spec:
  gatewayClassName: warren-waypoint
  listeners: [{ name: mesh, port: 15008, protocol: HBONE }]
---
apiVersion: v1
kind: ConfigMap
metadata: { name: good-ca, namespace: shop }
data: { ca.crt: GOOD-CA }
---
apiVersion: v1
kind: ConfigMap
metadata: { name: empty-ca, namespace: shop }
data: { other: x }
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: { name: whole, namespace: shop, creationTimestamp: "2026-01-01T00:00:01Z" }
spec:
  targetRefs:
  - { group: "", kind: Service, name: app }
  - { group: networking.istio.io, kind: ServiceEntry, name: partner }
  - { group: gateway.networking.k8s.io, kind: Gateway, name: waypoint }
  validation:
    caCertificateRefs: [{ group: "", kind: ConfigMap, name: good-ca }]
    hostname: app.shop.example
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: { name: later, namespace: shop, creationTimestamp: "2026-01-01T00:00:02Z" }
spec:
  targetRefs: [{ group: "", kind: Service, name: app }]
  validation: { wellKnownCACertificates: System, hostname: app.shop.example }
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: { name: sections, namespace: shop, creationTimestamp: "2026-01-01T00:00:03Z" }
spec:
  targetRefs:
  - { group: "", kind: Service, name: app, sectionName: admin }
  - { group: "", kind: Service, name: app, sectionName: nope }
  - { group: "", kind: Service, name: other, sectionName: nope }
  - { group: "", kind: Service, name: missing }
  validation: { wellKnownCACertificates: System, hostname: admin.shop.example }
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: { name: half-resolved, namespace: shop, creationTimestamp: "2026-01-01T00:00:04Z" }
spec:
  targetRefs: [{ group: "", kind: Service, name: other, sectionName: http }]
  validation:
    caCertificateRefs:
    - { group: "", kind: ConfigMap, name: good-ca }
    - { group: "", kind: ConfigMap, name: empty-ca }
    hostname: other.shop.example
"#;

    /// (type, status, reason, message) of a condition.
    type Shown = (String, bool, String, String);

    /// Each condition, per ancestor (by name).
    fn statuses(yaml: &str, policy: &str) -> Vec<(String, Vec<Shown>)> {
        let yaml = yaml.replace("GOOD-CA", &format!("{:?}", crate::test_pki::ca_pem("good")));
        let store = Store::from_yaml(&yaml);
        let key = ObjectKey::new(Kind::BackendTlsPolicy, Some("shop"), policy);
        let Some(Object::BackendTlsPolicy(policy)) = store.get(&key) else {
            panic!("no policy {key}");
        };
        let held = held(&store, "shop", "cluster.local");
        ancestors(&store, &held, policy)
            .into_iter()
            .map(|a| {
                let conditions = a.conditions.into_iter();
                let conditions = conditions
                    .map(|c| (c.kind.to_owned(), c.status, c.reason.to_owned(), c.message));
                (a.parent_ref.name, conditions.collect())
            })
            .collect()
    }

    fn reasons(status: &[Shown]) -> Vec<(&str, bool, &str)> {
        status
            .iter()
            .map(|(kind, status, reason, _)| (kind.as_str(), *status, reason.as_str()))
            .collect()
    }

    #[test]
    fn a_policy_holding_its_targets_is_accepted_and_says_where() {
        let whole = statuses(POLICIES, "whole");
        // The Gateway target is another implementation's to report.
        let names: Vec<&str> = whole.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["app", "partner"]);
        for (name, conditions) in &whole {
            assert_eq!(
                reasons(conditions),
                [
                    ("Accepted", true, "Accepted"),
                    ("ResolvedRefs", true, "ResolvedRefs")
                ],
                "{name}: {conditions:?}"
            );
        }
        // The section another policy names is not this one's.
        let message = &whole[0].1[0].3;
        assert!(
            message
                .contains("Service shop/app (every port but 9000) at its waypoint shop/waypoint"),
            "{message}"
        );
        assert!(
            whole[1].1[0].3.contains("ServiceEntry shop/partner"),
            "{whole:?}"
        );
    }

    #[test]
    fn a_younger_policy_for_the_same_ports_is_conflicted() {
        let later = statuses(POLICIES, "later");
        assert_eq!(reasons(&later[0].1)[0], ("Accepted", false, "Conflicted"));
        assert!(
            later[0].1[0].3.contains("BackendTLSPolicy shop/whole"),
            "{later:?}"
        );
        // The older one gone, it holds them.
        let store = POLICIES.replacen("name: whole,", "name: gone,", 1).replace(
            "  - { group: \"\", kind: Service, name: app }\n  - { group: networking.istio.io",
            "  - { group: networking.istio.io",
        );
        let later = statuses(&store, "later");
        assert_eq!(reasons(&later[0].1)[0], ("Accepted", true, "Accepted"));
    }

    #[test]
    fn missing_targets_and_ports_are_not_found() {
        let sections = statuses(POLICIES, "sections");
        let by_name: BTreeMap<&str, &Vec<_>> = sections
            .iter()
            .map(|(name, c)| (name.as_str(), c))
            .collect();
        // One section of app exists (it holds port 9000, though younger
        // than `whole`: a section beats the whole Service).
        let app = by_name["app"];
        assert_eq!(reasons(app)[0], ("Accepted", true, "Accepted"));
        assert!(app[0].3.contains("port 9000"), "{app:?}");
        let other = by_name["other"];
        assert_eq!(reasons(other)[0], ("Accepted", false, "TargetNotFound"));
        assert!(other[0].3.contains("no port named \"nope\""), "{other:?}");
        let missing = by_name["missing"];
        assert_eq!(reasons(missing)[0], ("Accepted", false, "TargetNotFound"));
        assert!(
            missing[0].3.contains("no Service shop/missing"),
            "{missing:?}"
        );
        // An entry whose hosts all name the cluster's Services.
        let inside = format!(
            "{POLICIES}---\n{}",
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: inside, namespace: shop }
spec: { hosts: [other.shop.svc.cluster.local], ports: [{ number: 80, name: http }], resolution: DNS }
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: { name: inside-tls, namespace: shop }
spec:
  targetRefs: [{ group: networking.istio.io, kind: ServiceEntry, name: inside }]
  validation: { wellKnownCACertificates: System, hostname: other.example }
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: { name: inside-port, namespace: shop }
spec:
  targetRefs: [{ group: networking.istio.io, kind: ServiceEntry, name: inside, sectionName: http }]
  validation: { wellKnownCACertificates: System, hostname: other.example }
"#
        );
        for policy in ["inside-tls", "inside-port"] {
            let shown = statuses(&inside, policy);
            assert_eq!(
                reasons(&shown[0].1)[0],
                ("Accepted", false, "TargetNotFound")
            );
            assert!(
                shown[0].1[0].3.contains("no host of its own"),
                "{policy}: {shown:?}"
            );
        }
    }

    #[test]
    fn ca_references_that_do_not_resolve_say_which_and_why() {
        // One of two: accepted, its connections refused until it resolves.
        let half = statuses(POLICIES, "half-resolved");
        assert_eq!(
            reasons(&half[0].1),
            [
                ("Accepted", true, "Accepted"),
                ("ResolvedRefs", false, "InvalidCACertificateRef")
            ]
        );
        assert!(
            half[0].1[0].3.contains("refuses its connections"),
            "{half:?}"
        );
        assert!(half[0].1[1].3.contains("shop/empty-ca"), "{half:?}");
        // None of them: no valid certificate.
        let none = POLICIES.replace(
            "    - { group: \"\", kind: ConfigMap, name: good-ca }\n    - { group: \"\", kind: ConfigMap, name: empty-ca }",
            "    - { group: \"\", kind: ConfigMap, name: absent-ca }",
        );
        let none = statuses(&none, "half-resolved");
        assert_eq!(
            reasons(&none[0].1),
            [
                ("Accepted", false, "NoValidCACertificate"),
                ("ResolvedRefs", false, "InvalidCACertificateRef")
            ]
        );
        assert!(none[0].1[1].3.contains("shop/absent-ca"), "{none:?}");
        // A kind Warren does not read.
        let secret = POLICIES.replace(
            "    - { group: \"\", kind: ConfigMap, name: empty-ca }",
            "    - { group: \"\", kind: Secret, name: empty-ca }",
        );
        let secret = statuses(&secret, "half-resolved");
        assert_eq!(
            reasons(&secret[0].1)[1],
            ("ResolvedRefs", false, "InvalidKind")
        );
        assert!(
            secret[0].1[0].3.contains("refuses its connections"),
            "{secret:?}"
        );
    }

    #[test]
    fn what_warren_cannot_do_is_invalid() {
        let asked = POLICIES.replace(
            "  validation: { wellKnownCACertificates: System, hostname: app.shop.example }",
            "  validation: { wellKnownCACertificates: System, hostname: app.shop.example }\n  options: { example.com/cipher: fast }",
        );
        let later = statuses(&asked, "later");
        // Conflicted first: it holds nothing to refuse.
        assert_eq!(reasons(&later[0].1)[0], ("Accepted", false, "Conflicted"));
        let asked = asked.replacen("name: whole,", "name: gone,", 1).replace(
            "  - { group: \"\", kind: Service, name: app }\n  - { group: networking.istio.io",
            "  - { group: networking.istio.io",
        );
        let later = statuses(&asked, "later");
        assert_eq!(reasons(&later[0].1)[0], ("Accepted", false, "Invalid"));
        assert!(
            later[0].1[0].3.contains("options.example.com/cipher"),
            "{later:?}"
        );
    }

    #[test]
    fn a_refused_policy_says_why_on_each_target() {
        let raw = serde_json::json!({ "spec": { "targetRefs": [
            { "group": "", "kind": "Service", "name": "app", "sectionName": "http" },
            { "group": "", "kind": "Service", "name": "app", "sectionName": "admin" },
            { "group": "networking.istio.io", "kind": "ServiceEntry", "name": "partner" },
            { "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint" },
        ]}});
        let ancestors = refused_ancestors(&raw, "spec.validation: both kinds of CA");
        let names: Vec<&str> = ancestors
            .iter()
            .map(|a| a.parent_ref.name.as_str())
            .collect();
        assert_eq!(names, ["app", "partner"]);
        assert_eq!(ancestors[0].conditions[0].reason, "Invalid");
        assert!(
            ancestors[0].conditions[0]
                .message
                .contains("both kinds of CA")
        );
    }
}
