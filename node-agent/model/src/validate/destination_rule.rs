//! DestinationRule checks: the host, subsets and traffic policies (load
//! balancing, connection pools, outlier detection, client TLS).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::FieldError;
use crate::istio::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, DestinationRule,
    H2UpgradePolicy, LoadBalancerSettings, LocalityLbSetting, OutlierDetection, RetryBudget,
    TrafficPolicy,
};

use super::{
    DNS1123_LABEL, Report, duration, export_to, host_name, is_dns1123_label, label_selector, port,
    positive_duration, workload_selector,
};

/// Checks a DestinationRule on its own.
pub fn destination_rule(dr: &DestinationRule) -> Vec<FieldError> {
    let mut r = Report::default();
    let spec = &dr.spec;
    if spec.host.is_empty() {
        r.error("spec.host", "required: the service the rule applies to");
    } else {
        host_name(&mut r, "spec.host", &spec.host);
    }
    if let Some(policy) = &spec.traffic_policy {
        traffic_policy(&mut r, "spec.trafficPolicy", policy);
    }

    let mut subset_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            r.error(format!("{path}.name"), "required");
        } else if !is_dns1123_label(&subset.name) {
            r.error(
                format!("{path}.name"),
                format!(
                    "{:?} is not a valid subset name ({DNS1123_LABEL})",
                    subset.name
                ),
            );
        }
        if !subset.name.is_empty() {
            if let Some(first) = subset_names.get(subset.name.as_str()) {
                r.error(
                    format!("{path}.name"),
                    format!(
                        "duplicate subset name {:?} (also spec.subsets[{first}])",
                        subset.name
                    ),
                );
            } else {
                subset_names.insert(&subset.name, i);
            }
        }
        r.extend(label_selector(&format!("{path}.labels"), &subset.labels));
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(&mut r, &format!("{path}.trafficPolicy"), policy);
        }
    }

    export_to(&mut r, "spec.exportTo", &spec.export_to, false);
    if let Some(selector) = &spec.workload_selector {
        workload_selector(&mut r, "spec.workloadSelector", selector);
        // A rule for chosen client workloads cannot reach clients in other
        // namespaces: Istio refuses to export it beyond its own.
        let own = dr.metadata.namespace.as_deref();
        for (i, ns) in spec.export_to.iter().enumerate() {
            if ns != "." && Some(ns.as_str()) != own {
                r.error(
                    format!("spec.exportTo[{i}]"),
                    "a DestinationRule with a workloadSelector can only be exported to its own namespace (\".\")",
                );
            }
        }
    }
    r.into_errors()
}

fn traffic_policy(r: &mut Report, path: &str, policy: &TrafficPolicy) {
    if policy.load_balancer.is_none()
        && policy.connection_pool.is_none()
        && policy.outlier_detection.is_none()
        && policy.tls.is_none()
        && policy.port_level_settings.is_empty()
        && policy.retry_budget.is_none()
    {
        r.error(
            path,
            "set at least one of loadBalancer, connectionPool, outlierDetection, tls, portLevelSettings or retryBudget",
        );
    }
    if let Some(budget) = &policy.retry_budget {
        retry_budget(r, &format!("{path}.retryBudget"), budget);
    }
    policy_parts(
        r,
        path,
        policy.load_balancer.as_ref(),
        policy.connection_pool.as_ref(),
        policy.outlier_detection.as_ref(),
        policy.tls.as_ref(),
    );
    for (k, port_policy) in policy.port_level_settings.iter().enumerate() {
        let p = format!("{path}.portLevelSettings[{k}]");
        match &port_policy.port {
            Some(selector) => port(r, &format!("{p}.port.number"), selector.number),
            None => r.error(
                format!("{p}.port"),
                "required: the port these settings are for",
            ),
        }
        if port_policy.load_balancer.is_none()
            && port_policy.connection_pool.is_none()
            && port_policy.outlier_detection.is_none()
            && port_policy.tls.is_none()
        {
            r.error(
                &p,
                "set at least one of loadBalancer, connectionPool, outlierDetection or tls",
            );
        }
        policy_parts(
            r,
            &p,
            port_policy.load_balancer.as_ref(),
            port_policy.connection_pool.as_ref(),
            port_policy.outlier_detection.as_ref(),
            port_policy.tls.as_ref(),
        );
    }
}

fn policy_parts(
    r: &mut Report,
    path: &str,
    load_balancer: Option<&LoadBalancerSettings>,
    connection_pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = load_balancer {
        load_balancer_settings(r, &format!("{path}.loadBalancer"), lb);
    }
    if let Some(pool) = connection_pool {
        connection_pool_settings(r, &format!("{path}.connectionPool"), pool);
    }
    if let Some(outlier) = outlier {
        outlier_detection(r, &format!("{path}.outlierDetection"), outlier);
    }
    if let Some(tls) = tls {
        client_tls(r, &format!("{path}.tls"), tls);
    }
}

fn load_balancer_settings(r: &mut Report, path: &str, lb: &LoadBalancerSettings) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        r.error(path, "only one of simple and consistentHash may be set");
    }
    if let Some(hash) = &lb.consistent_hash {
        consistent_hash(r, &format!("{path}.consistentHash"), hash);
    }
    if let Some(locality) = &lb.locality_lb_setting {
        locality_lb(r, &format!("{path}.localityLbSetting"), locality);
    }
    if let Some(warmup) = &lb.warmup_duration_secs {
        positive_duration(r, &format!("{path}.warmupDurationSecs"), warmup);
    }
    if let Some(warmup) = &lb.warmup {
        let path = format!("{path}.warmup");
        match &warmup.duration {
            Some(d) => {
                positive_duration(r, &format!("{path}.duration"), d);
            }
            None => r.error(format!("{path}.duration"), "required"),
        }
        if let Some(percent) = warmup.minimum_percent
            && !(0.0..=100.0).contains(&percent)
        {
            r.error(
                format!("{path}.minimumPercent"),
                format!("{percent} is not within 0-100"),
            );
        }
        if let Some(aggression) = warmup.aggression
            && !(aggression.is_finite() && aggression > 0.0)
        {
            r.error(
                format!("{path}.aggression"),
                format!("{aggression}: must be above 0 (1 grows the share linearly)"),
            );
        }
    }
}

fn retry_budget(r: &mut Report, path: &str, budget: &RetryBudget) {
    if let Some(percent) = budget.percent
        && !(0.0..=100.0).contains(&percent)
    {
        r.error(
            format!("{path}.percent"),
            format!("{percent} is not within 0-100"),
        );
    }
    if let Some(interval) = &budget.budget_interval {
        let path = format!("{path}.budgetInterval");
        // `0s` is the default: the requests active now are the base.
        match duration(&path, interval) {
            Ok(d) if d.is_zero() => {}
            Ok(_) => {
                positive_duration(r, &path, interval);
            }
            Err(e) => r.push(e),
        }
    }
}

fn consistent_hash(r: &mut Report, path: &str, hash: &ConsistentHashLb) {
    let keys: Vec<&str> = [
        ("httpHeaderName", hash.http_header_name.is_some()),
        ("httpCookie", hash.http_cookie.is_some()),
        ("useSourceIp", hash.use_source_ip.is_some()),
        (
            "httpQueryParameterName",
            hash.http_query_parameter_name.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match keys.len() {
        0 => r.error(
            path,
            "a hash key is required: one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
        ),
        1 => {}
        _ => r.error(path, format!("only one hash key may be set, found {}", keys.join(" and "))),
    }
    if hash.http_header_name.as_deref() == Some("") {
        r.error(format!("{path}.httpHeaderName"), "must not be empty");
    }
    if hash.http_query_parameter_name.as_deref() == Some("") {
        r.error(
            format!("{path}.httpQueryParameterName"),
            "must not be empty",
        );
    }
    if let Some(cookie) = &hash.http_cookie {
        if cookie.name.is_empty() {
            r.error(format!("{path}.httpCookie.name"), "required");
        }
        if let Some(ttl) = &cookie.ttl
            && let Err(e) = duration(&format!("{path}.httpCookie.ttl"), ttl)
        {
            r.push(e);
        }
    }
    if hash.ring_hash.is_some() && hash.maglev.is_some() {
        r.error(path, "only one of ringHash and maglev may be set");
    }
    if hash.minimum_ring_size.is_some() && (hash.ring_hash.is_some() || hash.maglev.is_some()) {
        r.error(
            format!("{path}.minimumRingSize"),
            "cannot be combined with ringHash or maglev (use ringHash.minimumRingSize)",
        );
    }
    if let Some(maglev) = &hash.maglev {
        let p = format!("{path}.maglev.tableSize");
        match maglev.table_size {
            None | Some(0) => r.error(&p, "required"),
            Some(size) if size >= 5_000_011 => {
                r.error(&p, format!("{size} is too large (must be below 5000011)"))
            }
            Some(size) if !is_prime(size) => r.error(
                &p,
                format!("{size} is not a prime number, which maglev needs"),
            ),
            Some(_) => {}
        }
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn locality_lb(r: &mut Report, path: &str, locality: &LocalityLbSetting) {
    if !locality.distribute.is_empty() && !locality.failover.is_empty() {
        r.error(path, "only one of distribute and failover may be set");
    }
    if !locality.failover.is_empty() {
        for (k, label) in locality.failover_priority.iter().enumerate() {
            if TOPOLOGY_LABELS.contains(&label.as_str()) {
                r.error(
                    format!("{path}.failoverPriority[{k}]"),
                    format!("topology label {label:?} cannot be combined with failover"),
                );
            }
        }
    }
    for (k, distribute) in locality.distribute.iter().enumerate() {
        let p = format!("{path}.distribute[{k}]");
        if distribute.from.is_empty() {
            r.error(format!("{p}.from"), "required");
        }
        for (to, weight) in &distribute.to {
            if !(1..=100).contains(weight) {
                r.error(
                    format!("{p}.to.{to}"),
                    format!("weight {weight} is out of range 1-100"),
                );
            }
        }
        let sum: u64 = distribute.to.values().map(|w| u64::from(*w)).sum();
        if sum != 100 {
            r.error(
                format!("{p}.to"),
                format!("the weights must sum to 100, they sum to {sum}"),
            );
        }
    }
    for (k, failover) in locality.failover.iter().enumerate() {
        let p = format!("{path}.failover[{k}]");
        if failover.from == failover.to {
            r.error(&p, "from and to must be different regions");
        }
        for (field, value) in [("from", &failover.from), ("to", &failover.to)] {
            if value.contains('/') || value.contains('*') {
                r.error(
                    format!("{p}.{field}"),
                    format!("{value:?}: failover names a region only (no '/', no '*')"),
                );
            }
        }
    }
}

const TOPOLOGY_LABELS: &[&str] = &[
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

fn connection_pool_settings(r: &mut Report, path: &str, pool: &ConnectionPoolSettings) {
    if pool.tcp.is_none() && pool.http.is_none() {
        r.error(path, "set tcp, http or both");
    }
    if let Some(tcp) = &pool.tcp {
        let p = format!("{path}.tcp");
        non_negative(r, &format!("{p}.maxConnections"), tcp.max_connections);
        if let Some(d) = &tcp.connect_timeout {
            positive_duration(r, &format!("{p}.connectTimeout"), d);
        }
        if let Some(d) = &tcp.max_connection_duration {
            positive_duration(r, &format!("{p}.maxConnectionDuration"), d);
        }
        if let Some(d) = &tcp.idle_timeout {
            // 0s turns the idle timeout off.
            let idle_path = format!("{p}.idleTimeout");
            match duration(&idle_path, d) {
                Err(e) => r.push(e),
                Ok(Duration::ZERO) => {}
                Ok(_) => {
                    positive_duration(r, &idle_path, d);
                }
            }
        }
        if let Some(keepalive) = &tcp.tcp_keepalive {
            if let Some(d) = &keepalive.time {
                positive_duration(r, &format!("{p}.tcpKeepalive.time"), d);
            }
            if let Some(d) = &keepalive.interval {
                positive_duration(r, &format!("{p}.tcpKeepalive.interval"), d);
            }
        }
    }
    if let Some(http) = &pool.http {
        let p = format!("{path}.http");
        non_negative(
            r,
            &format!("{p}.http1MaxPendingRequests"),
            http.http1_max_pending_requests,
        );
        non_negative(r, &format!("{p}.http2MaxRequests"), http.http2_max_requests);
        non_negative(
            r,
            &format!("{p}.maxRequestsPerConnection"),
            http.max_requests_per_connection,
        );
        non_negative(r, &format!("{p}.maxRetries"), http.max_retries);
        non_negative(
            r,
            &format!("{p}.maxConcurrentStreams"),
            http.max_concurrent_streams,
        );
        if let Some(d) = &http.idle_timeout {
            positive_duration(r, &format!("{p}.idleTimeout"), d);
        }
        if http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
            && http.use_client_protocol == Some(true)
        {
            r.error(
                format!("{p}.useClientProtocol"),
                "cannot be true with h2UpgradePolicy UPGRADE (the two choose the protocol differently)",
            );
        }
    }
}

fn non_negative(r: &mut Report, path: &str, value: Option<i32>) {
    if let Some(v) = value
        && v < 0
    {
        r.error(path, format!("{v}: cannot be negative"));
    }
}

fn outlier_detection(r: &mut Report, path: &str, outlier: &OutlierDetection) {
    if let Some(d) = &outlier.interval {
        positive_duration(r, &format!("{path}.interval"), d);
    }
    if let Some(d) = &outlier.base_ejection_time {
        positive_duration(r, &format!("{path}.baseEjectionTime"), d);
    }
    if outlier.consecutive_local_origin_failures.unwrap_or(0) > 0
        && outlier.split_external_local_origin_errors != Some(true)
    {
        r.error(
            format!("{path}.consecutiveLocalOriginFailures"),
            "only counted when splitExternalLocalOriginErrors is true",
        );
    }
    for (field, value) in [
        ("maxEjectionPercent", outlier.max_ejection_percent),
        ("minHealthPercent", outlier.min_health_percent),
    ] {
        if let Some(v) = value
            && !(0..=100).contains(&v)
        {
            r.error(
                format!("{path}.{field}"),
                format!("{v} is out of range 0-100"),
            );
        }
    }
}

fn client_tls(r: &mut Report, path: &str, tls: &ClientTlsSettings) {
    let files = [
        ("clientCertificate", &tls.client_certificate),
        ("privateKey", &tls.private_key),
        ("caCertificates", &tls.ca_certificates),
    ];
    let mode = tls.mode;
    if matches!(mode, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual))
        && !tls.credential_name.is_empty()
    {
        for (field, value) in files {
            if !value.is_empty() {
                r.error(
                    format!("{path}.{field}"),
                    "cannot be combined with credentialName (the credential carries the certificates)",
                );
            }
        }
    } else if mode == Some(ClientTlsMode::Mutual) {
        for (field, value) in &files[..2] {
            if value.is_empty() {
                r.error(
                    format!("{path}.{field}"),
                    "required with mode MUTUAL (or set credentialName)",
                );
            }
        }
    }
    if tls.insecure_skip_verify == Some(true) && !tls.subject_alt_names.is_empty() {
        r.error(
            format!("{path}.subjectAltNames"),
            "cannot be checked when insecureSkipVerify is true",
        );
    }
}
