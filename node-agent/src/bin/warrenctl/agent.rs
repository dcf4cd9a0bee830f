//! Asking a running node agent, over its Unix socket.

use std::{future::Future, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use warren_api::config::config_distribution_client::ConfigDistributionClient;

#[derive(Args, Clone, Debug)]
pub struct AgentArgs {
    /// The node agent's socket.
    #[arg(long, default_value = warren_api::socket::DEFAULT_PATH, env = "WARREN_AGENT_SOCKET")]
    pub socket: PathBuf,
}

impl AgentArgs {
    /// Runs `call` against the agent on a one-off runtime (warrenctl is
    /// otherwise synchronous).
    pub fn call<T, F>(
        &self,
        call: impl FnOnce(ConfigDistributionClient<tonic::transport::Channel>) -> F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T, tonic::Status>>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime")?;
        let socket = self.socket.clone();
        runtime.block_on(async move {
            let client = ConfigDistributionClient::new(warren_api::socket::channel(&socket))
                .max_decoding_message_size(512 << 20);
            call(client).await.map_err(|status| {
                anyhow::anyhow!(
                    "the node agent at {} answered {:?}: {}",
                    socket.display(),
                    status.code(),
                    status.message()
                )
            })
        })
    }
}
