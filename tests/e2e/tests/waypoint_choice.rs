//! Which waypoint a Service's traffic takes, with real traffic: its
//! namespace's waypoint by default; the one its `istio.io/use-waypoint` (and
//! `istio.io/use-waypoint-namespace`) labels name, in another namespace too
//! when that Gateway's listener admits it, which then enforces the Service's
//! own AuthorizationPolicies; and none at all (refused, not bypassed) when the
//! named waypoint does not admit it.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use warren_e2e::{
    mesh::{
        all_to_v2, eventually, metric_sum, start_mesh, start_waypoint, waypoint_gateway,
        waypoint_metrics,
    },
    workload::{count_status, count_version, load, start_app_versions},
};
use warren_node_agent::model::gateway::{Gateway, RouteNamespaces};
use warren_testbed::{
    Cluster, Pod, PodSpec, ServicePort, labels, manifests, privilege::require_root,
};

const NS: &str = "shop";
const INFRA: &str = "infra";

/// A DENY on Service `app` itself, for whichever waypoint serves it.
const APP_PRIVATE: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: app-private, namespace: shop }
spec:
  targetRefs: [{ group: "", kind: Service, name: app }]
  action: DENY
  rules: [{ to: [{ operation: { paths: ["/private"] } }] }]
"#;

/// The shared waypoint Gateway of `infra` (of Istio's class, which Warren
/// reads too): with `from` (`All`, `Same`), its listener admits Services of
/// those namespaces; without, of its own only.
fn shared_gateway(from: Option<&str>) -> Result<String> {
    let mut gateway = Gateway::waypoint(INFRA, "shared");
    gateway.spec.gateway_class_name = "istio-waypoint".into();
    if let Some(from) = from {
        gateway = gateway.admitting(RouteNamespaces {
            from: Some(from.into()),
            selector: None,
        });
    }
    Ok(gateway.to_yaml()?)
}

/// Requests `istio_requests_total` of a waypoint counts for `app`.
fn served(waypoint: &Pod) -> Result<f64> {
    Ok(metric_sum(
        &waypoint_metrics(waypoint)?,
        "istio_requests_total",
        &[("destination_service", "app.shop.svc.cluster.local")],
    ))
}

#[test]
fn a_service_takes_the_waypoint_its_labels_name() -> Result<()> {
    require_root()?;
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace(NS, labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    cluster.add_namespace(INFRA, BTreeMap::new())?;
    let waypoint_labels = |gateway: &str| {
        labels(&[
            ("gateway.networking.k8s.io/gateway-name", gateway),
            ("warren.io/dataplane-mode", "none"),
        ])
    };
    for (name, namespace, node, pod_labels, sa) in [
        (
            "app-v1",
            NS,
            1,
            labels(&[("app", "app"), ("version", "v1")]),
            "app",
        ),
        (
            "app-v2",
            NS,
            0,
            labels(&[("app", "app"), ("version", "v2")]),
            "app",
        ),
        ("client", NS, 0, labels(&[("app", "client")]), "client"),
        ("waypoint", NS, 1, waypoint_labels("waypoint"), "waypoint"),
        ("shared", INFRA, 0, waypoint_labels("shared"), "shared"),
    ] {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: namespace.into(),
            node,
            labels: pod_labels,
            service_account: Some(sa.into()),
        })?;
    }
    let mut app = cluster
        .add_service(
            NS,
            "app",
            labels(&[("app", "app")]),
            vec![ServicePort {
                name: "http".into(),
                port: 80,
                target_port: 8080,
            }],
        )?
        .clone();
    let url = format!("http://{}/", app.cluster_ip);
    let mut mesh = start_mesh(&cluster)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let config_dir = cluster.config_dir();
    std::fs::write(
        config_dir.join("routes.shop.yaml"),
        format!("{}---\n{APP_PRIVATE}", all_to_v2(NS)),
    )?;
    std::fs::write(config_dir.join("gateway.shop.yaml"), waypoint_gateway(NS))?;
    std::fs::write(
        config_dir.join("gateway.infra.yaml"),
        shared_gateway(Some("All"))?,
    )?;
    let (own_pod, shared_pod) = (
        cluster.pod("waypoint")?.clone(),
        cluster.pod("shared")?.clone(),
    );
    let own = start_waypoint(&cluster, &own_pod, NS).with_context(|| mesh.logs())?;
    let shared = start_waypoint(&cluster, &shared_pod, INFRA).with_context(|| mesh.logs())?;
    let logs = || {
        format!(
            "{}\nwaypoint shop:\n{}\nwaypoint infra:\n{}",
            mesh.logs(),
            own.output(),
            shared.output()
        )
    };
    let servers = start_app_versions(&cluster, &["v1", "v2"])?;
    let client = cluster.pod("client")?.clone();
    let all_v2 = |n: u64| -> Result<bool> {
        let report = load(&client, &url, &["-n", &n.to_string(), "-c", "2"])?;
        Ok(count_version(&report, "v2") == n)
    };

    // No label: the namespace's own waypoint.
    eventually(Duration::from_secs(20), "every answer from v2", || {
        all_v2(20)
    })
    .with_context(logs)?;
    let (before_own, before_shared) = (served(&own_pod)?, served(&shared_pod)?);
    ensure!(all_v2(50)?, "through shop's waypoint\n{}", logs());
    let (after_own, after_shared) = (served(&own_pod)?, served(&shared_pod)?);
    eprintln!(
        "no label: shop's waypoint served {}, infra's {}",
        after_own - before_own,
        after_shared - before_shared
    );
    ensure!(
        after_own - before_own >= 50.0 && after_shared == before_shared,
        "the namespace's waypoint serves an unlabelled Service\n{}",
        logs()
    );

    // Labelled for infra's shared waypoint, which admits every namespace.
    app.labels = labels(&[
        ("istio.io/use-waypoint", "shared"),
        ("istio.io/use-waypoint-namespace", INFRA),
    ]);
    manifests::write_service(&config_dir, &app)?;
    eventually(
        Duration::from_secs(20),
        "infra's waypoint takes the traffic",
        || {
            let before = served(&shared_pod)?;
            Ok(all_v2(10)? && served(&shared_pod)? - before >= 10.0)
        },
    )
    .with_context(logs)?;
    let (before_own, before_shared) = (served(&own_pod)?, served(&shared_pod)?);
    ensure!(all_v2(50)?, "through infra's waypoint\n{}", logs());
    let (after_own, after_shared) = (served(&own_pod)?, served(&shared_pod)?);
    eprintln!(
        "use-waypoint shared: shop's waypoint served {}, infra's {}",
        after_own - before_own,
        after_shared - before_shared
    );
    ensure!(
        after_shared - before_shared >= 50.0 && after_own == before_own,
        "the named waypoint in infra serves the Service, with shop's VirtualService\n{}",
        logs()
    );
    // The Service's AuthorizationPolicy (in shop) holds at infra's waypoint.
    let report = load(&client, &format!("{url}private"), &["-n", "10", "-c", "2"])?;
    eprintln!(
        "use-waypoint shared: {} of 10 requests to /private denied by shop's policy",
        count_status(&report, 403)
    );
    ensure!(
        count_status(&report, 403) == 10,
        "shop's policy on the Service must bind infra's waypoint: {report}\n{}",
        logs()
    );

    // The Gateway stops admitting other namespaces: the traffic is refused,
    // not sent around the waypoint.
    std::fs::write(config_dir.join("gateway.infra.yaml"), shared_gateway(None)?)?;
    eventually(Duration::from_secs(20), "the traffic is refused", || {
        let report = load(&client, &url, &["-n", "10", "-c", "2", "--timeout", "2s"])?;
        Ok(count_status(&report, 200) == 0)
    })
    .with_context(logs)?;
    eprintln!("not admitted: every request refused");
    drop(servers);
    Ok(())
}
