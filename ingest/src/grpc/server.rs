use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{
    Server, ServerTlsConfig,
    server::{Router, TcpIncoming},
};
use tonic_health::ServingStatus;
use vigil_proto::v1::ingest_service_server::IngestServiceServer;

use super::service::Ingest;
use crate::health::Health;

/// Serves the ingest API on an already-bound listener until `token` is cancelled.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    ingest: Ingest,
    max_message_bytes: usize,
    health: Health,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let ingest = IngestServiceServer::new(ingest).max_decoding_message_size(max_message_bytes);
    serve_services(
        listener,
        tls,
        |router| router.add_service(ingest),
        "vigil.v1.IngestService",
        health,
        token,
    )
    .await
}

/// Serves `add`'s services beside grpc.health.v1 (mirroring `health` for `""` and
/// `service_name`) and server reflection, until `token` is cancelled; calls in progress
/// finish first. With `tls`, only TLS connections are served.
pub async fn serve_services(
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    add: impl FnOnce(Router) -> Router,
    service_name: &'static str,
    health: Health,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vigil_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    // The overall status starts as SERVING; mirror readiness instead.
    let mirror_token = token.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let status = if health.ready() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(service_name, status).await;
            tokio::select! {
                _ = mirror_token.cancelled() => {
                    reporter.set_service_status("", ServingStatus::NotServing).await;
                    return;
                }
                _ = tick.tick() => {}
            }
        }
    });

    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let router = builder.add_service(health_service).add_service(reflection);
    add(router)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), token.cancelled_owned())
        .await?;
    Ok(())
}
