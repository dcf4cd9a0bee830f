//! `warren-sample grpc-server` and `grpc-check`: the standard gRPC health
//! service (grpc.health.v1), so a test can send a real gRPC call through the
//! mesh and see its status, carried in HTTP/2 trailers, come back intact.
//!
//! The server reports [`SERVING`] as serving and [`NOT_SERVING`] as not;
//! any other service name is answered with the gRPC status NOT_FOUND, which
//! gives a test a non-OK status that only the server can have produced.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use serde::Serialize;
use tonic::{Code, transport::Endpoint};
use tonic_health::{
    ServingStatus,
    pb::{HealthCheckRequest, health_client::HealthClient},
};
use tracing::info;

use crate::shutdown::Shutdown;

/// A service the server reports as serving.
pub const SERVING: &str = "warren.sample.Serving";
/// A service the server reports as not serving.
pub const NOT_SERVING: &str = "warren.sample.NotServing";

pub async fn serve(listen: SocketAddr) -> Result<()> {
    let mut shutdown = Shutdown::install()?;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVING, ServingStatus::Serving)
        .await;
    reporter
        .set_service_status(NOT_SERVING, ServingStatus::NotServing)
        .await;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the gRPC server to {listen}"))?;
    info!(addr = %listen, "grpc health server listening (h2c)");
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let signal = shutdown.recv().await;
                info!(signal, "grpc server stopping");
            },
        )
        .await
        .context("serving gRPC")
}

/// What one health check call returned.
#[derive(Debug, Serialize)]
pub struct Checked {
    /// The gRPC status code (0 is OK).
    pub code: i32,
    /// Its name, e.g. "NotFound".
    pub code_name: String,
    pub message: String,
    /// The reported serving status, on OK.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving_status: Option<String>,
}

/// Calls `Check(service)` on `url` once and prints the outcome as JSON.
/// A failed call is an outcome too (its status is printed); only a bad URL
/// is an error.
pub async fn check(url: &str, service: &str, timeout: Duration) -> Result<Checked> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("`{url}` is not a gRPC endpoint URL"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let result = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connecting: {e}")))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
    }
    .await;
    Ok(match result {
        Ok(response) => Checked {
            code: Code::Ok as i32,
            code_name: format!("{:?}", Code::Ok),
            message: String::new(),
            serving_status: Some(
                tonic_health::pb::health_check_response::ServingStatus::try_from(
                    response.into_inner().status,
                )
                .map_or_else(|_| "UNKNOWN".to_owned(), |s| s.as_str_name().to_owned()),
            ),
        },
        Err(status) => Checked {
            code: status.code() as i32,
            code_name: format!("{:?}", status.code()),
            message: status.message().to_owned(),
            serving_status: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real call over loopback: OK with the serving status, and NOT_FOUND
    /// for a service the server does not know.
    #[tokio::test]
    async fn health_checks_report_status_and_codes() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let server = tokio::spawn(serve(addr));
        let url = format!("http://{addr}");
        let mut serving = None;
        for _ in 0..50 {
            let checked = check(&url, SERVING, Duration::from_secs(2)).await.unwrap();
            if checked.code == 0 {
                serving = Some(checked);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let serving = serving.expect("the server answers");
        assert_eq!(serving.serving_status.as_deref(), Some("SERVING"));
        let not = check(&url, NOT_SERVING, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(not.serving_status.as_deref(), Some("NOT_SERVING"));
        let unknown = check(&url, "nope", Duration::from_secs(2)).await.unwrap();
        assert_eq!((unknown.code, unknown.code_name.as_str()), (5, "NotFound"));
        server.abort();
    }
}
