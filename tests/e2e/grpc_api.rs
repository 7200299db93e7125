use futures_util::StreamExt;
use tonic::{Code, Request};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};
use vigil_proto::v1::{ReadingStatus, SubmitReadingsRequest};

use crate::harness::*;

fn one_reading() -> SubmitReadingsRequest {
    SubmitReadingsRequest {
        readings: vec![glucose_pb(&now_rfc3339(-30), 5.1, "mmol/L")],
        ..Default::default()
    }
}

#[tokio::test]
async fn calls_without_a_valid_token_for_the_device_are_refused() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let owner = register(&db.url, "glucose_meter").await;
    let other = register(&db.url, "glucose_meter").await;
    let mut grpc = app.grpc().await;

    let status = grpc
        .submit_readings(Request::new(one_reading()))
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);

    let forged = format!("vgd_{}", "A".repeat(43));
    let status = grpc
        .submit_readings(with_token(one_reading(), &forged))
        .await
        .expect_err("wrong token");
    assert_eq!(status.code(), Code::Unauthenticated);

    let mut cross = one_reading();
    cross.device_id = other.device.to_string();
    let status = grpc
        .submit_readings(with_token(cross, &owner.token))
        .await
        .expect_err("another device's id");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains(&other.device.to_string()));

    let mut client = connect(&db.url).await;
    vigil_ingest::store::admin::revoke_device(&mut client, owner.device)
        .await
        .expect("revoke");
    let status = grpc
        .submit_readings(with_token(one_reading(), &owner.token))
        .await
        .expect_err("revoked token");
    assert_eq!(status.code(), Code::Unauthenticated);

    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 0);
    let accepted = grpc
        .submit_readings(with_token(one_reading(), &other.token))
        .await
        .expect("the other device still works")
        .into_inner();
    assert_eq!(accepted.results[0].status, ReadingStatus::Accepted as i32);
    app.stop().await;
}

#[tokio::test]
async fn health_and_reflection_answer() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connects");

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "vigil.v1.IngestService"] {
        eventually("health reports SERVING", || {
            let mut health = health.clone();
            let service = service.to_string();
            async move {
                health
                    .check(HealthCheckRequest { service })
                    .await
                    .map(|r| r.into_inner().status == ServingStatus::Serving as i32)
                    .unwrap_or(false)
            }
        })
        .await;
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("one response")
        .expect("ok response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"vigil.v1.IngestService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_stream_returns_one_result_batch_per_request_batch_in_order() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "cgm").await;
    let mut grpc = app.grpc().await;
    let batches: Vec<SubmitReadingsRequest> = (0..20)
        .map(|b| SubmitReadingsRequest {
            batch_id: format!("batch-{b}"),
            readings: (0..25)
                .map(|i| glucose_pb(&now_rfc3339(-(b * 25 + i + 1) * 60), 6.5, "mmol/L"))
                .collect(),
            ..Default::default()
        })
        .collect();
    let mut request = Request::new(tokio_stream::iter(batches));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", reg.token).parse().expect("ascii"),
    );
    let responses: Vec<_> = grpc
        .stream_readings(request)
        .await
        .expect("stream opens")
        .into_inner()
        .collect()
        .await;
    assert_eq!(responses.len(), 20);
    for (b, response) in responses.into_iter().enumerate() {
        let response = response.expect("batch answered");
        assert_eq!(response.batch_id, format!("batch-{b}"));
        assert_eq!(response.results.len(), 25);
        assert!(
            response
                .results
                .iter()
                .all(|r| r.status == ReadingStatus::Accepted as i32)
        );
    }
    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 500);
    app.stop().await;
}
