//! Locality-aware balancing through the waypoint, with real traffic: the two
//! nodes are in two zones (their Nodes' topology labels); once a
//! DestinationRule turns outlier detection on, the waypoint keeps requests
//! in its own zone, and when that zone's endpoint fails and is ejected they
//! fail over to the other zone. `warrenctl waypoint clusters` shows why.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use warren_e2e::mesh::waypoint_pod;
use warren_e2e::{
    agent::warrenctl_text,
    mesh::{eventually, start_mesh, start_waypoint, waypoint_gateway},
    workload::{count_status, count_version, load, start_app_versions},
};
use warren_testbed::{Cluster, PodSpec, Service, ServicePort, labels, privilege::require_root};

const NS: &str = "shop";

/// Outlier detection that ejects at the first failure, for long enough.
const OUTLIER: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: app, namespace: shop }
spec:
  host: app
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 60s
      maxEjectionPercent: 100
"#;

/// Two nodes in two zones of one region (node 0 in zone-0, node 1 in
/// zone-1), namespace `shop` in the mesh, Service `app` over app-v1 (node 1)
/// and app-v2 (node 0), a client on node 0, and with `waypoint` a waypoint
/// pod on node 1.
fn two_zones(waypoint: bool) -> Result<(Cluster, Service)> {
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    for (node, zone) in [("n0", "zone-0"), ("n1", "zone-1")] {
        cluster.label_node(
            node,
            labels(&[
                ("topology.kubernetes.io/region", "region-a"),
                ("topology.kubernetes.io/zone", zone),
            ]),
        )?;
    }
    cluster.add_namespace(NS, labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    let pods = vec![
        (
            "app-v1",
            1,
            labels(&[("app", "app"), ("version", "v1")]),
            "app",
        ),
        (
            "app-v2",
            0,
            labels(&[("app", "app"), ("version", "v2")]),
            "app",
        ),
        ("client", 0, labels(&[("app", "client")]), "client"),
    ];
    for (name, node, pod_labels, sa) in pods {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: NS.into(),
            node,
            labels: pod_labels,
            service_account: Some(sa.into()),
        })?;
    }
    if waypoint {
        cluster.add_pod(waypoint_pod(NS, 1))?;
    }
    let app = cluster
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
    Ok((cluster, app))
}

#[test]
fn the_waypoint_keeps_traffic_in_its_zone_and_fails_over() -> Result<()> {
    require_root()?;
    let (cluster, app) = two_zones(true)?;
    let url = format!("http://{}/", app.cluster_ip);
    let mut mesh = start_mesh(&cluster)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let config_dir = cluster.config_dir();
    std::fs::write(config_dir.join("gateway.shop.yaml"), waypoint_gateway(NS))?;
    let waypoint_pod = cluster.pod("waypoint")?.clone();
    let waypoint = start_waypoint(&cluster, &waypoint_pod, NS).with_context(|| mesh.logs())?;
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());
    let mut servers = start_app_versions(&cluster, &["v1", "v2"])?;
    let client = cluster.pod("client")?.clone();
    let run = |n: u64| load(&client, &url, &["-n", &n.to_string(), "-c", "2"]);

    // Without outlier detection traffic cannot fail over, so locality plays
    // no part (Istio's rule): both zones answer.
    eventually(Duration::from_secs(20), "both zones answer", || {
        let Ok(report) = run(40) else {
            return Ok(false);
        };
        Ok(count_status(&report, 200) == 40
            && count_version(&report, "v1") > 0
            && count_version(&report, "v2") > 0)
    })
    .with_context(logs)?;

    // A Service asking for closeness (`trafficDistribution: PreferClose`)
    // gets it from the waypoint too, outlier detection or not, as istiod
    // forces a topology failoverPriority for it.
    warren_testbed::manifests::write_service_with(
        &config_dir,
        &app,
        &serde_json::json!({ "trafficDistribution": "PreferClose" }),
    )?;
    eventually(Duration::from_secs(20), "PreferClose: zone-1 only", || {
        Ok(run(40).is_ok_and(|r| count_version(&r, "v1") == 40))
    })
    .with_context(logs)?;
    eprintln!("PreferClose through the waypoint: every answer from zone-1");
    warren_testbed::manifests::write_service(&config_dir, &app)?;
    eventually(Duration::from_secs(20), "both zones again", || {
        let Ok(report) = run(40) else {
            return Ok(false);
        };
        Ok(count_version(&report, "v1") > 0 && count_version(&report, "v2") > 0)
    })
    .with_context(logs)?;

    // With outlier detection, the waypoint (zone-1) keeps to its zone's
    // endpoint.
    std::fs::write(config_dir.join("routes.shop.yaml"), OUTLIER)?;
    eventually(Duration::from_secs(20), "every answer from zone-1", || {
        Ok(run(40).is_ok_and(|r| count_version(&r, "v1") == 40))
    })
    .with_context(logs)?;
    let report = run(100)?;
    eprintln!(
        "outlier detection on: {} of 100 from v1 (zone-1, the waypoint's), {} from v2",
        count_version(&report, "v1"),
        count_version(&report, "v2")
    );
    ensure!(
        count_version(&report, "v1") == 100,
        "the waypoint must keep traffic in its zone: {report}\n{}",
        logs()
    );

    // zone-1's endpoint goes away: once ejected, traffic moves to zone-0.
    drop(servers.remove(0));
    let mut last = Value::Null;
    eventually(Duration::from_secs(20), "failed over to zone-0", || {
        last = run(20).unwrap_or_default();
        Ok(count_version(&last, "v2") == 20)
    })
    .with_context(|| format!("last: {last}\n{}", logs()))?;
    let report = run(100)?;
    eprintln!(
        "zone-1's endpoint down: {} of 100 answered by v2 (zone-0)",
        count_version(&report, "v2")
    );
    ensure!(
        count_version(&report, "v2") == 100,
        "with its zone's endpoint ejected, traffic must fail over: {report}\n{}",
        logs()
    );

    // warrenctl shows the waypoint's locality, each endpoint's priority and
    // where the load goes.
    let config = config_dir.to_string_lossy().into_owned();
    let dump: Value = serde_json::from_str(&warrenctl_text(&[
        "waypoint",
        "clusters",
        "-n",
        NS,
        "--config-dir",
        &config,
        "--json",
    ])?)?;
    let cluster_dump = dump["shop/waypoint"]["clusters"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["host"] == "app.shop.svc.cluster.local"))
        .with_context(|| format!("no app cluster in {dump}"))?;
    eprintln!(
        "/clusters: locality {}, groups {}",
        cluster_dump["locality"], cluster_dump["locality_groups"]
    );
    let endpoint = |id: &str| {
        cluster_dump["endpoints"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["id"] == id))
            .cloned()
            .unwrap_or_default()
    };
    let (near, far) = (
        endpoint("workload/shop/app-v1"),
        endpoint("workload/shop/app-v2"),
    );
    ensure!(
        cluster_dump["locality"] == "region-a/zone-1"
            && near["priority"] == 0
            && near["locality"] == "region-a/zone-1"
            && near["ejected"] == true
            && far["priority"] == 1
            && far["locality"] == "region-a/zone-0"
            && cluster_dump["locality_groups"][1]["load_percent"] == 100.0,
        "/clusters must show the zones, priorities and the load on zone-0: {cluster_dump}"
    );
    let table = warrenctl_text(&["waypoint", "clusters", "-n", NS, "--config-dir", &config])?;
    eprintln!("{table}");
    drop(servers);
    drop(waypoint);
    Ok(())
}

/// Without a waypoint, ztunnel honours the Service's `trafficDistribution`:
/// `PreferClose` keeps a client on the endpoints of its own zone, and
/// `internalTrafficPolicy: Local` on its own node's.
#[test]
fn ztunnel_keeps_a_preferclose_service_in_the_clients_zone() -> Result<()> {
    require_root()?;
    let (mut cluster, app) = two_zones(false)?;
    let url = format!("http://{}/", app.cluster_ip);
    let mut mesh = start_mesh(&cluster)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let servers = start_app_versions(&cluster, &["v1", "v2"])?;
    let client = cluster.pod("client")?.clone();
    let run = |n: u64| load(&client, &url, &["-n", &n.to_string(), "-c", "2"]);
    eventually(Duration::from_secs(20), "both zones answer", || {
        let Ok(report) = run(40) else {
            return Ok(false);
        };
        Ok(count_version(&report, "v1") > 0 && count_version(&report, "v2") > 0)
    })
    .with_context(|| mesh.logs())?;

    let config_dir = cluster.config_dir();
    warren_testbed::manifests::write_service_with(
        &config_dir,
        &app,
        &serde_json::json!({ "trafficDistribution": "PreferClose" }),
    )?;
    eventually(Duration::from_secs(20), "only zone-0 answers", || {
        Ok(run(40).is_ok_and(|r| count_version(&r, "v2") == 40))
    })
    .with_context(|| mesh.logs())?;
    let report = run(100)?;
    eprintln!(
        "PreferClose: {} of 100 from v2 (the client's zone-0), {} from v1",
        count_version(&report, "v2"),
        count_version(&report, "v1")
    );
    ensure!(
        count_version(&report, "v2") == 100,
        "PreferClose must keep the client in its zone: {report}\n{}",
        mesh.logs()
    );

    // Node-local: the client's node's endpoint only; once that pod is gone,
    // refused rather than sent to the other node.
    warren_testbed::manifests::write_service_with(
        &config_dir,
        &app,
        &serde_json::json!({ "internalTrafficPolicy": "Local" }),
    )?;
    let report = run(40)?;
    ensure!(
        count_version(&report, "v2") == 40,
        "internalTrafficPolicy Local: the client's node's endpoint: {report}\n{}",
        mesh.logs()
    );
    cluster.remove_pod("app-v2")?;
    eventually(
        Duration::from_secs(20),
        "refused without a local endpoint",
        || {
            let report = load(&client, &url, &["-n", "5", "-c", "1", "--timeout", "2s"])?;
            Ok(count_status(&report, 200) == 0)
        },
    )
    .with_context(|| mesh.logs())?;
    eprintln!("internalTrafficPolicy Local with no endpoint on the client's node: refused");
    drop(servers);
    Ok(())
}
