use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::ServingStatus;
use vigil_proto::v1::ingest_service_server::IngestServiceServer;

use super::service::Ingest;
use crate::health::Health;

/// Serves on an already-bound listener until `token` is cancelled, then waits for calls in
/// progress to finish.
pub async fn serve(
    listener: TcpListener,
    ingest: Ingest,
    max_message_bytes: usize,
    health: Health,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vigil_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let ingest = IngestServiceServer::new(ingest).max_decoding_message_size(max_message_bytes);

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
            reporter
                .set_service_status("vigil.v1.IngestService", status)
                .await;
            tokio::select! {
                _ = mirror_token.cancelled() => {
                    reporter.set_service_status("", ServingStatus::NotServing).await;
                    return;
                }
                _ = tick.tick() => {}
            }
        }
    });

    Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ingest)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), token.cancelled_owned())
        .await?;
    Ok(())
}
