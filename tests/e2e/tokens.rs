//! Token expiry and rotation, through `vigil admin` as an operator uses it.

use serde_json::Value;
use tokio::process::Command;
use tonic::Code;
use vigil_proto::v1::{
    ListAlertsRequest, SubmitReadingsRequest, alert_service_client::AlertServiceClient,
};

use crate::{child::ChildService, harness::*};

async fn admin(db_url: &str, args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("admin")
        .arg("--json")
        .args(args)
        .env("VIGIL_DATABASE__URL", db_url)
        .output()
        .await
        .expect("vigil runs");
    assert!(
        output.status.success(),
        "vigil admin {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("json")
}

fn one_reading(offset: i64) -> SubmitReadingsRequest {
    SubmitReadingsRequest {
        readings: vec![glucose_pb(&now_rfc3339(offset), 6.0, "mmol/L")],
        ..Default::default()
    }
}

#[tokio::test]
async fn expired_device_tokens_are_refused_and_a_rotated_token_replaces_the_old_one() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "glucose_meter").await;
    let patient = reg.patient.to_string();
    let mut grpc = app.grpc().await;

    let soon = now_rfc3339(2);
    let added = admin(
        &db.url,
        &[
            "device",
            "add",
            "--patient",
            &patient,
            "--kind",
            "glucose_meter",
            "--token-expires",
            &soon,
        ],
    )
    .await;
    let token = added["token"].as_str().expect("token").to_string();
    let device = added["device_id"].as_str().expect("id").to_string();
    grpc.submit_readings(with_token(one_reading(-30), &token))
        .await
        .expect("valid until it expires");

    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let expired = grpc
        .submit_readings(with_token(one_reading(-20), &token))
        .await
        .expect_err("expired");
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert!(
        expired.message().contains("expired"),
        "{}",
        expired.message()
    );

    let rotated = admin(&db.url, &["device", "rotate-token", "--device", &device]).await;
    let new_token = rotated["token"].as_str().expect("token").to_string();
    assert_ne!(new_token, token);
    grpc.submit_readings(with_token(one_reading(-10), &new_token))
        .await
        .expect("the new token works and does not expire");
    let old = grpc
        .submit_readings(with_token(one_reading(-5), &token))
        .await
        .expect_err("the old token is gone");
    assert_eq!(old.code(), Code::Unauthenticated);
    app.stop().await;
}

#[tokio::test]
async fn an_expired_clinician_token_reads_nothing() {
    let db = TestDb::create().await;
    let s = settings(&db.url);
    let app = TestApp::spawn(s.clone()).await;
    let reg = register(&db.url, "glucose_meter").await;
    let team = reg.team.to_string();
    let valid = admin(
        &db.url,
        &["clinician", "add", "--name", "Dr Valid", "--team", &team],
    )
    .await;
    let lapsed = admin(
        &db.url,
        &[
            "clinician",
            "add",
            "--name",
            "Dr Lapsed",
            "--team",
            &team,
            "--token-expires",
            &now_rfc3339(-60),
        ],
    )
    .await;
    let worker = ChildService::alerts(&s, &[]).await;
    let mut api = AlertServiceClient::connect(format!("http://{}", worker.grpc_addr))
        .await
        .expect("alert api");
    api.list_alerts(with_token(
        ListAlertsRequest::default(),
        valid["token"].as_str().expect("token"),
    ))
    .await
    .expect("a current token reads its team's alerts");
    let refused = api
        .list_alerts(with_token(
            ListAlertsRequest::default(),
            lapsed["token"].as_str().expect("token"),
        ))
        .await
        .expect_err("expired");
    assert_eq!(refused.code(), Code::Unauthenticated);
    worker.terminate().await;
    app.stop().await;
}
