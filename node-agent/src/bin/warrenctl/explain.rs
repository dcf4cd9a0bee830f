//! `warrenctl explain FROM TO`: asks this node's ztunnel what it would do with a
//! connection from one of its pods (`/explain` on its admin port), and prints
//! each step: who the source is, what the destination resolves to, the route,
//! the policy, and the verdict. `warrenctl waypoint explain` prints a
//! waypoint's answer for one request the same way.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use serde::Deserialize;

use crate::{admin, config::Output, table};

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// The source pod, on this node: its address, or NAMESPACE/NAME.
    from: String,
    /// The destination: ADDRESS:PORT, HOST:PORT for a Service or
    /// ServiceEntry host (as the pod's DNS proxy answers it), or
    /// NAMESPACE/POD:PORT for a pod's own address.
    to: String,
    /// ztunnel's admin endpoint (`--admin-addr` of warren-ztunnel).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Deserialize)]
struct Explanation {
    steps: Vec<Step>,
    verdict: String,
}

#[derive(Deserialize)]
struct Step {
    stage: String,
    detail: String,
}

pub fn run(args: ExplainArgs) -> Result<()> {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("from", &args.from)
        .append_pair("to", &args.to)
        .finish();
    let path = format!("/explain?{query}");
    let body = admin::get(args.admin, &path)?;
    print(&body, matches!(args.output, Output::Json))
}

/// Prints an explanation (ztunnel's or a waypoint's `/explain`): its steps as
/// a table and the verdict, or the JSON as it came.
pub fn print(body: &[u8], json: bool) -> Result<()> {
    if json {
        println!("{}", String::from_utf8_lossy(body).trim_end());
        return Ok(());
    }
    let explanation: Explanation =
        serde_json::from_slice(body).context("an /explain answer warrenctl cannot read")?;
    let rows: Vec<Vec<String>> = explanation
        .steps
        .into_iter()
        .map(|step| vec![step.stage, step.detail])
        .collect();
    table::print(&["STEP", "WHAT HAPPENS"], &rows);
    println!("\nverdict: {}", explanation.verdict.replace('_', " "));
    Ok(())
}
