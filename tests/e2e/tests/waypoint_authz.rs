//! L7 AuthorizationPolicy at the waypoint, with real traffic: policies
//! attached by `targetRefs` to the namespace's waypoint Gateway decide each
//! request on the caller's mTLS identity, method, path and headers; a bad
//! update of a policy leaves the last good one in force; without policies
//! everything passes again.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use warren_e2e::{
    agent::warrenctl_waypoint_explain,
    mesh::{add_app_service, eventually, service_vip, start_mesh_and_waypoint, waypoint_pod},
    workload::{count_status, load, start_http_server},
};
use warren_testbed::{Cluster, Pod, PodSpec, labels, privilege::require_root};

const ALLOW_FILE: &str = "authz.demo.public-for-a.yaml";
const DENY_FILE: &str = "authz.demo.block.yaml";

/// Only client-a, only `GET /public*`.
const ALLOW: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: public-for-a, namespace: demo }
spec:
  targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: waypoint }]
  action: ALLOW
  rules:
  - from: [{ source: { principals: ["cluster.local/ns/demo/sa/client-a"] } }]
    to: [{ operation: { methods: ["GET"], paths: ["/public*"] } }]
"#;

/// The same object, invalid (an ipBlock that is no address) and, were it
/// applied, opening every path: the agent must refuse it.
const ALLOW_BROKEN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: public-for-a, namespace: demo }
spec:
  targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: waypoint }]
  action: ALLOW
  rules:
  - from: [{ source: { ipBlocks: ["not-an-address"] } }]
    to: [{ operation: { paths: ["*"] } }]
"#;

const DENY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: block, namespace: demo }
spec:
  targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: waypoint }]
  action: DENY
  rules:
  - when: [{ key: "request.headers[x-block]", values: ["yes"] }]
"#;

const REQUESTS: u64 = 20;

/// One cell of the matrix: who asks, what, and the status every answer
/// must have.
struct Case {
    client: &'static str,
    path: &'static str,
    args: &'static [&'static str],
    status: u64,
}

const MATRIX: &[Case] = &[
    Case {
        client: "client-a",
        path: "/public",
        args: &[],
        status: 200,
    },
    Case {
        client: "client-a",
        path: "/public/items?page=2",
        args: &[],
        status: 200,
    },
    Case {
        client: "client-a",
        path: "/private",
        args: &[],
        status: 403,
    },
    // POST, not GET.
    Case {
        client: "client-a",
        path: "/public",
        args: &["--body-bytes", "16"],
        status: 403,
    },
    // Another principal.
    Case {
        client: "client-b",
        path: "/public",
        args: &[],
        status: 403,
    },
    // Allowed, but the DENY policy matches the header.
    Case {
        client: "client-a",
        path: "/public",
        args: &["-H", "x-block: yes"],
        status: 403,
    },
    Case {
        client: "client-a",
        path: "/public",
        args: &["-H", "x-block: no"],
        status: 200,
    },
];

/// Runs the matrix; an error names the first cell that failed.
fn check_matrix(clients: &[(&str, Pod)], base: &str, logs: &dyn Fn() -> String) -> Result<()> {
    let mut summary = Vec::new();
    for case in MATRIX {
        let pod = &clients
            .iter()
            .find(|(name, _)| *name == case.client)
            .context("client pod")?
            .1;
        let n = REQUESTS.to_string();
        let mut args = vec!["-n", n.as_str(), "-c", "2"];
        args.extend_from_slice(case.args);
        let report = load(pod, &format!("{base}{}", case.path), &args)?;
        let got = count_status(&report, case.status);
        summary.push(format!(
            "{} {} {:?}: {got}/{REQUESTS} × {}",
            case.client, case.path, case.args, case.status
        ));
        ensure!(
            got == REQUESTS,
            "{} {} {:?}: expected {REQUESTS} × {}, got {report}\n{}",
            case.client,
            case.path,
            case.args,
            case.status,
            logs()
        );
    }
    eprintln!("authorization matrix:\n  {}", summary.join("\n  "));
    Ok(())
}

#[test]
fn a_waypoint_enforces_attached_authorization_policies() -> Result<()> {
    require_root()?;
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace("demo", labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    for (name, node, pod_labels, sa) in [
        ("app", 1, labels(&[("app", "app")]), "app"),
        ("client-a", 0, labels(&[("app", "client-a")]), "client-a"),
        ("client-b", 0, labels(&[("app", "client-b")]), "client-b"),
    ] {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: "demo".into(),
            node,
            labels: pod_labels,
            service_account: Some(sa.into()),
        })?;
    }
    cluster.add_pod(waypoint_pod("demo", 1))?;
    add_app_service(&mut cluster)?;
    let (mesh, waypoint) = start_mesh_and_waypoint(&cluster, "demo")?;
    let config = cluster.config_dir().to_path_buf();
    let app = cluster.pod("app")?.clone();
    let server = start_http_server(&cluster, &app, 8080, &["--name", "app"])?;
    let vip = service_vip(&cluster, "app")?;
    let base = format!("http://{vip}");
    let clients = [
        ("client-a", cluster.pod("client-a")?.clone()),
        ("client-b", cluster.pod("client-b")?.clone()),
    ];
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());
    let status_of = |client: usize, path: &str, args: &[&str]| -> Result<Option<u64>> {
        let mut all = vec!["-n", "1"];
        all.extend_from_slice(args);
        let report = load(&clients[client].1, &format!("{base}{path}"), &all)?;
        Ok([200, 403]
            .into_iter()
            .find(|s| count_status(&report, *s) == 1))
    };

    // Through the waypoint, without policies: everyone reaches everything.
    eventually(Duration::from_secs(20), "client-b reaches /private", || {
        Ok(status_of(1, "/private", &[])? == Some(200))
    })
    .with_context(logs)?;

    std::fs::write(config.join(ALLOW_FILE), ALLOW)?;
    std::fs::write(config.join(DENY_FILE), DENY)?;
    eventually(Duration::from_secs(20), "both policies in force", || {
        Ok(status_of(1, "/public", &[])? == Some(403)
            && status_of(0, "/public", &["-H", "x-block: yes"])? == Some(403))
    })
    .with_context(logs)?;
    check_matrix(&clients, &base, &logs)?;
    // Envoy's answer, byte for byte, so clients and runbooks recognize it.
    let url = format!("{base}/public");
    let curl = clients[1].1.sandbox.exec(
        "curl",
        ["-sS", "--max-time", "5", "-w", " %{http_code}", &url],
    )?;
    let answer = String::from_utf8_lossy(&curl.stdout);
    ensure!(
        answer == "RBAC: access denied 403",
        "client-b's answer: {answer:?} {}",
        String::from_utf8_lossy(&curl.stderr)
    );
    // The waypoint explains each refusal, naming the policy, and a request
    // it lets through.
    let explain = |from: &str, extra: &[&str]| {
        let request = [extra, &[url.as_str()]].concat();
        warrenctl_waypoint_explain(&config, "demo", from, &request)
    };
    for (from, extra, says) in [
        (
            "demo/client-a",
            &[][..],
            ["allowed by", "verdict: forwarded"],
        ),
        (
            "demo/client-a",
            &["-H", "x-block: yes"][..],
            [
                "denied by DENY policy demo/block, its rule 0 matched",
                "verdict: denied",
            ],
        ),
        (
            "demo/client-b",
            &[][..],
            ["ALLOW policies apply and none matched", "verdict: denied"],
        ),
        (
            "demo/client-a",
            &["-X", "POST"][..],
            ["ALLOW policies apply and none matched", "verdict: denied"],
        ),
    ] {
        let shown = explain(from, extra)?;
        for part in says {
            ensure!(
                shown.contains(part),
                "warrenctl waypoint explain from {from} {extra:?} does not say {part:?}:\n{shown}"
            );
        }
    }
    let output = waypoint.output();
    for details in [
        "rbac_access_denied_matched_policy[ns[demo]-policy[block]-rule[0]]",
        "rbac_access_denied_matched_policy[none]",
    ] {
        ensure!(
            output.contains(details),
            "the access log does not say {details}:\n{output}"
        );
    }

    // A broken version of the ALLOW policy is refused by the agent; the last
    // good one stays in force.
    std::fs::write(config.join(ALLOW_FILE), ALLOW_BROKEN)?;
    eventually(
        Duration::from_secs(20),
        "the agents refuse the broken policy",
        || {
            Ok(mesh
                .logs()
                .lines()
                .filter(|l| {
                    l.contains("rejected") && l.contains("public-for-a") && l.contains("ipBlocks")
                })
                .count()
                >= 2)
        },
    )
    .with_context(logs)?;
    check_matrix(&clients, &base, &logs)?;

    // Policies removed: everything passes again.
    std::fs::remove_file(config.join(ALLOW_FILE))?;
    std::fs::remove_file(config.join(DENY_FILE))?;
    eventually(Duration::from_secs(20), "policies withdrawn", || {
        Ok(status_of(1, "/private", &[])? == Some(200)
            && status_of(0, "/public", &["-H", "x-block: yes"])? == Some(200))
    })
    .with_context(logs)?;

    drop(server);
    drop(waypoint);
    Ok(())
}
