//! gRPC over TLS: served with the configured certificate, refused in plain text, and a
//! listener beyond loopback without TLS stops the service at start.

use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use vigil_ingest::{Application, config::TlsSettings};
use vigil_proto::v1::{
    ReadingStatus, SubmitReadingsRequest, ingest_service_client::IngestServiceClient,
};

use crate::{
    harness::{
        TestApp, TestDb, glucose_pb, now_rfc3339, register, settings, wait_count, with_token,
    },
    secure_broker::dev_certs,
};

#[tokio::test]
async fn the_ingest_api_is_served_over_tls_and_refuses_plain_text() {
    let db = TestDb::create().await;
    let certs = std::env::temp_dir().join(format!("vigil-tls-{}", uuid::Uuid::new_v4().simple()));
    dev_certs(&certs);
    let mut s = settings(&db.url);
    s.grpc.tls = TlsSettings {
        cert_file: Some(certs.join("server.pem")),
        key_file: Some(certs.join("server.key")),
    };
    let app = TestApp::spawn(s).await;
    let device = register(&db.url, "glucose_meter").await;
    let port = app.grpc_addr.port();

    let ca = std::fs::read(certs.join("ca.pem")).expect("CA");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("uri")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .expect("tls config")
        .connect()
        .await
        .expect("TLS connection");
    let reply = IngestServiceClient::new(channel)
        .submit_readings(with_token(
            SubmitReadingsRequest {
                readings: vec![glucose_pb(&now_rfc3339(-5), 5.9, "mmol/L")],
                ..Default::default()
            },
            &device.token,
        ))
        .await
        .expect("submit over TLS")
        .into_inner();
    assert_eq!(reply.results.len(), 1);
    assert_eq!(reply.results[0].status(), ReadingStatus::Accepted);
    wait_count(
        &db.client().await,
        &format!(
            "SELECT count(*) FROM readings WHERE device_id = '{}'",
            device.device
        ),
        1,
    )
    .await;

    let plain = IngestServiceClient::connect(format!("http://127.0.0.1:{port}")).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut client) => client
            .submit_readings(with_token(
                SubmitReadingsRequest {
                    readings: vec![glucose_pb(&now_rfc3339(-4), 6.0, "mmol/L")],
                    ..Default::default()
                },
                &device.token,
            ))
            .await
            .is_err(),
    };
    assert!(refused, "a plain-text call was served on the TLS listener");
    app.stop().await;
    let _ = std::fs::remove_dir_all(certs);
}

#[tokio::test]
async fn a_listener_beyond_loopback_without_tls_does_not_start() {
    let db = TestDb::create().await;
    let mut s = settings(&db.url);
    s.grpc.listen = "0.0.0.0:0".parse().expect("addr");
    let err = match Application::build(s).await {
        Ok(_) => panic!("a plain listener on every interface started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("needs TLS"), "{err}");
}
