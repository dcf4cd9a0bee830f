//! `warren-ztunnel`: the node-local L4 proxy.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("warren-ztunnel is being built (issue #5)")
}
