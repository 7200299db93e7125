//! Per-device rate limit: one device over its limit is refused with a retry hint and
//! counted, keeps nothing from being lost (MQTT messages go to quarantine), and does not
//! slow any other device.

use serde_json::json;
use tonic::Code;
use vigil_proto::v1::SubmitReadingsRequest;

use crate::harness::*;

fn batch(n: usize, offset_secs: i64) -> SubmitReadingsRequest {
    SubmitReadingsRequest {
        readings: (0..n)
            .map(|i| glucose_pb(&now_rfc3339(offset_secs - i as i64), 6.0, "mmol/L"))
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_device_over_its_rate_limit_is_refused_with_a_retry_hint_and_others_are_not() {
    let db = TestDb::create().await;
    let mut s = settings(&db.url);
    s.rate_limit.readings_per_second = 1;
    s.rate_limit.burst_readings = 10;
    let app = TestApp::spawn(s).await;
    let noisy = register(&db.url, "cgm").await;
    let quiet = register(&db.url, "cgm").await;
    let mut grpc = app.grpc().await;

    grpc.submit_readings(with_token(batch(10, -3600), &noisy.token))
        .await
        .expect("within the burst");
    let refused = grpc
        .submit_readings(with_token(batch(5, -3000), &noisy.token))
        .await
        .expect_err("over the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("readings/s"),
        "{}",
        refused.message()
    );
    let retry: u64 = refused
        .metadata()
        .get("retry-after-ms")
        .expect("a retry hint")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("milliseconds");
    assert!((1..=5000).contains(&retry), "retry after {retry} ms");
    let too_big = grpc
        .submit_readings(with_token(batch(11, -2000), &noisy.token))
        .await
        .expect_err("never fits the burst");
    assert_eq!(too_big.code(), Code::InvalidArgument);
    assert!(too_big.metadata().get("retry-after-ms").is_none());
    assert!(
        too_big.message().contains("smaller batches"),
        "{}",
        too_big.message()
    );

    grpc.submit_readings(with_token(batch(10, -3600), &quiet.token))
        .await
        .expect("another device is not limited");

    // Over MQTT the message is kept in quarantine and the device is told why.
    let mut device = MqttDevice::connect(Some(app.results_topic(noisy.device))).await;
    let reading = json!({ "type": "blood_glucose", "measured_at": now_rfc3339(-100), "value": 5.5, "unit": "mmol/L" });
    device
        .publish(&app.readings_topic(noisy.device), reading.to_string())
        .await;
    let result = device.next_result().await;
    assert_eq!(result["rejected"], 1, "{result}");
    assert_eq!(result["results"][0]["reason"], "rate_limited", "{result}");
    let client = db.client().await;
    wait_count(
        &client,
        "SELECT count(*) FROM quarantine WHERE reason = 'rate_limited' AND payload IS NOT NULL",
        1,
    )
    .await;

    assert_eq!(
        count(
            &client,
            &format!(
                "SELECT count(*) FROM readings WHERE device_id = '{}'",
                noisy.device
            )
        )
        .await,
        10
    );
    assert!(metric(app.http_addr, "vigil_rate_limited_total").await >= 3.0);
    app.stop().await;
}
