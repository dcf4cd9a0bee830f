//! `warrenctl certs`: the workload certificates this node's agent serves
//! its ztunnel, read from the agent's view (never the private keys).

use anyhow::{Context as _, Result};
use clap::Args;
use warren_api::config::{DumpRequest, Role, resource::Kind};
use warren_node_agent::identity::describe;

use crate::{agent::AgentArgs, table};

#[derive(Args)]
pub struct CertsArgs {
    #[command(flatten)]
    agent: AgentArgs,
    /// Show the whole chain of this identity (a SPIFFE URI, or
    /// `<namespace>/<service account>`).
    #[arg(long)]
    chain: Option<String>,
}

pub fn run(args: CertsArgs) -> Result<()> {
    let dump = args.agent.call(|mut c| async move {
        c.dump(DumpRequest {
            role: Role::Ztunnel as i32,
            namespace: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
    })?;
    let certs: Vec<_> = dump
        .resources
        .iter()
        .filter_map(|r| match &r.kind {
            Some(Kind::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let roots = dump
        .resources
        .iter()
        .find_map(|r| match &r.kind {
            Some(Kind::TrustBundle(t)) => Some(t.roots_pem.len()),
            _ => None,
        })
        .unwrap_or(0);
    if let Some(wanted) = &args.chain {
        let cert = certs
            .iter()
            .find(|c| {
                c.identity == *wanted
                    || c.identity
                        .ends_with(&format!("/ns/{}", wanted.replacen('/', "/sa/", 1)))
            })
            .with_context(|| format!("no certificate for {wanted} on this node"))?;
        for (i, pem) in cert.chain_pem.iter().enumerate() {
            let s = describe(std::slice::from_ref(pem))
                .with_context(|| format!("reading certificate {i} of {}", cert.identity))?;
            println!(
                "[{i}] subject {:?}\n    issuer  {:?}\n    serial  {}\n    SANs    {}\n    valid   {} → {}",
                s.subject,
                s.issuer,
                s.serial,
                s.uris.join(", "),
                s.not_before,
                s.not_after
            );
        }
        return Ok(());
    }
    let now = time::OffsetDateTime::now_utc();
    let mut rows = Vec::new();
    for cert in &certs {
        let s = describe(&cert.chain_pem)
            .with_context(|| format!("reading the chain of {}", cert.identity))?;
        let left = s.not_after - now;
        rows.push(vec![
            cert.identity.clone(),
            s.serial,
            s.not_after.to_string(),
            format!("{}m", left.whole_minutes()),
            s.issuer,
            s.chain_len.to_string(),
        ]);
    }
    table::print(
        &["IDENTITY", "SERIAL", "NOT AFTER", "LEFT", "ISSUER", "CHAIN"],
        &rows,
    );
    println!("\ntrust bundle: {roots} root(s)");
    Ok(())
}
