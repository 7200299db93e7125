//! Measures end-to-end ingest throughput on this machine: readings/s from the client's
//! first send until every reading is committed (gRPC answers only after COMMIT; for MQTT
//! the database row count is polled). Prints one line per scenario.
//!
//! Needs the same services as the tests (see scripts/test for the variables):
//! `cargo run --release --example ingest_throughput -- [readings per scenario]`

#[path = "../tests/common/database.rs"]
#[allow(dead_code)]
mod database;
#[path = "../tests/e2e/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use harness::*;
use serde_json::json;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tonic::Request;
use uuid::Uuid;
use vigil_ingest::store::admin;
use vigil_proto::v1::{Reading, SubmitReadingsRequest};

/// Distinct measurement times, one second apart, ending an hour ago.
fn times(n: usize) -> Vec<String> {
    let end = OffsetDateTime::now_utc() - time::Duration::hours(1);
    (0..n)
        .map(|i| {
            (end - time::Duration::seconds(i as i64))
                .replace_nanosecond(0)
                .expect("valid")
                .format(&Rfc3339)
                .expect("formats")
        })
        .collect()
}

/// `n` distinct readings in requests of `size`.
fn batches(n: usize, size: usize) -> Vec<SubmitReadingsRequest> {
    times(n)
        .chunks(size)
        .map(|chunk| SubmitReadingsRequest {
            readings: chunk
                .iter()
                .enumerate()
                .map(|(i, t)| reading(t, i))
                .collect(),
            ..Default::default()
        })
        .collect()
}

fn reading(at: &str, i: usize) -> Reading {
    glucose_pb(at, 4.0 + (i % 80) as f64 / 10.0, "mmol/L")
}

/// A new patient per scenario: the same second and value for one patient would be the same
/// measurement, and be stored once.
async fn device(db_url: &str) -> (Uuid, Uuid, String) {
    let mut client = connect(db_url).await;
    let team = admin::add_team(&mut client, &Uuid::new_v4().to_string())
        .await
        .expect("team");
    let (patient, _) = admin::add_patient(&mut client, &team.to_string(), None, None)
        .await
        .expect("patient");
    let since = OffsetDateTime::now_utc() - time::Duration::days(390);
    let d = admin::add_device(&mut client, Uuid::new_v4(), patient, "cgm", None, since)
        .await
        .expect("device");
    (patient, d.id, d.token)
}

async fn stored(client: &tokio_postgres::Client, patient: Uuid) -> usize {
    let row = client
        .query_one(
            "SELECT count(*) FROM readings WHERE patient_id = $1",
            &[&patient],
        )
        .await
        .expect("count");
    row.get::<_, i64>(0) as usize
}

fn report(name: &str, n: usize, elapsed: Duration) {
    println!(
        "{name:<44} {n:>8} readings in {:>7.2}s = {:>9.0} readings/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a number of readings"))
        .unwrap_or(100_000);
    let db = TestDb::create().await;
    let mut s = settings(&db.url);
    s.mqtt.publish_results = false;
    let app = TestApp::spawn(s).await;
    let client = db.client().await;

    for (batch, concurrency) in [(500, 4), (100, 8)] {
        let (patient, _, token) = device(&db.url).await;
        let requests = batches(n, batch);
        let grpc = app.grpc().await;
        let start = Instant::now();
        stream::iter(requests)
            .map(|r| {
                let mut grpc = grpc.clone();
                let token = token.clone();
                async move {
                    loop {
                        match grpc.submit_readings(with_token(r.clone(), &token)).await {
                            Ok(_) => return,
                            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                                tokio::time::sleep(Duration::from_millis(5)).await
                            }
                            Err(s) => panic!("{s}"),
                        }
                    }
                }
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<_>>()
            .await;
        let elapsed = start.elapsed();
        assert_eq!(stored(&client, patient).await, n, "every reading stored");
        report(
            &format!("gRPC unary, batch {batch}, {concurrency} in flight"),
            n,
            elapsed,
        );
    }

    {
        let (patient, _, token) = device(&db.url).await;
        let batches = batches(n, 500);
        let mut grpc = app.grpc().await;
        let start = Instant::now();
        let mut request = Request::new(stream::iter(batches));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        let answered = grpc
            .stream_readings(request)
            .await
            .expect("stream")
            .into_inner()
            .count()
            .await;
        let elapsed = start.elapsed();
        assert_eq!(answered, n.div_ceil(500));
        assert_eq!(stored(&client, patient).await, n, "every reading stored");
        report("gRPC stream, batch 500", n, elapsed);
    }

    for per_message in [1usize, 100] {
        let messages = if per_message == 1 { n / 5 } else { n };
        let (patient, device_id, _) = device(&db.url).await;
        let topic = app.readings_topic(device_id);
        let publisher = MqttDevice::connect(None).await;
        let at = times(messages);
        let payloads: Vec<String> = at
            .chunks(per_message)
            .map(|chunk| {
                let readings: Vec<_> = chunk
                    .iter()
                    .map(|t| json!({ "type": "blood_glucose", "measured_at": t, "value": 6.2, "unit": "mmol/L" }))
                    .collect();
                if per_message == 1 {
                    readings[0].to_string()
                } else {
                    json!({ "readings": readings }).to_string()
                }
            })
            .collect();
        let start = Instant::now();
        for payload in payloads {
            publisher.publish(&topic, payload).await;
        }
        while stored(&client, patient).await < messages {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        report(
            &format!("MQTT QoS 1, {per_message} reading(s) per message"),
            messages,
            start.elapsed(),
        );
    }
    app.stop().await;
}
