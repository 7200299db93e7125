//! Consent to monitoring: a paused patient's readings are stored and their alerts recorded
//! but suppressed until the pause ends; a withdrawn patient's readings are refused over gRPC
//! and MQTT and kept nowhere, and their open alerts are closed; a withdrawal and ingest never
//! interleave; missing data raises nothing while paused or withdrawn; every change is
//! recorded with who, when and why.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::process::Command;
use uuid::Uuid;
use vigil_alerts::{
    admin::WITHDRAWN,
    clinicians,
    consent::{Change, State},
    record::SUPERSEDED,
};
use vigil_ingest::store::consent;
use vigil_proto::v1::{
    AlertEvent, ListAlertsRequest, ReadingStatus, SubmitReadingsRequest, WatchAlertsRequest,
    alert_service_client::AlertServiceClient,
};

use crate::{child::ChildService, harness::*};

/// `vigil admin … --json` against `db_url`: its JSON output, or its error message.
async fn vigil_admin(db_url: &str, args: &[&str]) -> Result<Value, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("admin")
        .args(args)
        .arg("--json")
        .env("VIGIL_DATABASE__URL", db_url)
        .output()
        .await
        .expect("vigil runs");
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).expect("JSON output"))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("formats")
}

async fn hypo(grpc_addr: std::net::SocketAddr, token: &str, value: f64, secs_ago: i64) -> i32 {
    let mut grpc = vigil_proto::v1::ingest_service_client::IngestServiceClient::connect(format!(
        "http://{grpc_addr}"
    ))
    .await
    .expect("grpc connects");
    let request = SubmitReadingsRequest {
        readings: vec![glucose_pb(&now_rfc3339(-secs_ago), value, "mmol/L")],
        ..Default::default()
    };
    let reply = grpc
        .submit_readings(with_token(request, token))
        .await
        .expect("answered")
        .into_inner();
    reply.results[0].status
}

async fn silent(events: &mut tonic::Streaming<AlertEvent>, what: &str) {
    let next = tokio::time::timeout(Duration::from_millis(1500), events.next()).await;
    assert!(next.is_err(), "{what}: {next:?}");
}

async fn next(events: &mut tonic::Streaming<AlertEvent>) -> AlertEvent {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("an alert event arrives")
        .expect("stream open")
        .expect("event")
}

#[tokio::test]
async fn a_paused_patients_alerts_are_suppressed_until_the_pause_ends() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "glucose_meter").await;
    let client = db.client().await;
    let token = clinicians::add(&client, "Dr Test", &[reg.team])
        .await
        .expect("clinician")
        .token;
    let worker = ChildService::alerts(&app.settings, &[]).await;
    let mut api = AlertServiceClient::connect(format!("http://{}", worker.grpc_addr))
        .await
        .expect("alert API");
    let mut events = api
        .watch_alerts(with_token(WatchAlertsRequest::default(), &token))
        .await
        .expect("watch")
        .into_inner();
    let patient = reg.patient.to_string();

    let refused = vigil_admin(
        &db.url,
        &[
            "patient",
            "pause",
            "--patient",
            &patient,
            "--until",
            &now_rfc3339(-60),
            "--by",
            "Dr A Smith",
            "--reason",
            "in hospital",
        ],
    )
    .await
    .expect_err("a pause must end in the future");
    assert!(refused.contains("must end in the future"), "{refused}");

    let until = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("valid")
        + time::Duration::hours(1);
    let paused = vigil_admin(
        &db.url,
        &[
            "patient",
            "pause",
            "--patient",
            &patient,
            "--until",
            &rfc3339(until),
            "--by",
            "Dr A Smith",
            "--reason",
            "admitted to hospital",
        ],
    )
    .await
    .expect("paused");
    assert_eq!(
        (&paused["from"], &paused["to"]),
        (&json!("enrolled"), &json!("paused"))
    );
    assert_eq!(paused["paused_until"], rfc3339(until));

    // A dangerous reading is stored; its alert exists, marked, and goes nowhere.
    assert_eq!(
        hypo(app.grpc_addr, &reg.token, 2.6, 600).await,
        ReadingStatus::Accepted as i32
    );
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 1);
    let row = client
        .query_one(
            "SELECT id, suppressed_reason, suppressed_until FROM alerts",
            &[],
        )
        .await
        .expect("one alert");
    let suppressed: Uuid = row.get(0);
    assert_eq!(row.get::<_, Option<&str>>(1), Some("admitted to hospital"));
    assert_eq!(row.get::<_, Option<OffsetDateTime>>(2), Some(until));
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM alert_events WHERE NOT suppressed"
        )
        .await,
        0
    );
    assert_eq!(count(&client, "SELECT count(*) FROM deliveries").await, 0);
    let listed = api
        .list_alerts(with_token(ListAlertsRequest::default(), &token))
        .await
        .expect("list")
        .into_inner()
        .alerts;
    assert_eq!(listed.len(), 1);
    let alert = &listed[0];
    assert!(alert.suppressed && !alert.urgent, "{alert:?}");
    assert_eq!(alert.severity, "red");
    assert_eq!(alert.suppressed_reason, "admitted to hospital");
    assert_eq!(alert.suppressed_until, rfc3339(until));
    silent(&mut events, "a suppressed alert was streamed").await;

    // The pause end, crossed for real: move it a few seconds ahead. Just before it the
    // patient is still paused; from it on, alerts flow again.
    let ends: OffsetDateTime = client
        .query_one(
            "UPDATE patients SET paused_until = date_trunc('second', clock_timestamp()) + interval '3 seconds'
             RETURNING paused_until",
            &[],
        )
        .await
        .expect("pause moved")
        .get(0);
    assert_eq!(
        hypo(app.grpc_addr, &reg.token, 2.7, 300).await,
        ReadingStatus::Accepted as i32
    );
    assert!(
        OffsetDateTime::now_utc() < ends,
        "the machine is too slow for this test"
    );
    let breaches: i32 = client
        .query_one(
            "SELECT breach_count FROM alerts WHERE id = $1",
            &[&suppressed],
        )
        .await
        .expect("alert")
        .get(0);
    assert_eq!(
        breaches, 2,
        "just before the end, a breach still updates the suppressed alert"
    );
    assert_eq!(count(&client, "SELECT count(*) FROM deliveries").await, 0);
    tokio::time::sleep(
        (ends - OffsetDateTime::now_utc()).unsigned_abs() + Duration::from_millis(100),
    )
    .await;

    assert_eq!(
        hypo(app.grpc_addr, &reg.token, 2.8, 60).await,
        ReadingStatus::Accepted as i32
    );
    let opened = next(&mut events).await;
    assert_eq!(opened.kind, "opened");
    let fresh = opened.alert.expect("alert");
    assert!(!fresh.suppressed && fresh.urgent, "{fresh:?}");
    assert_ne!(fresh.id, suppressed.to_string());
    let old = client
        .query_one(
            "SELECT state, resolution FROM alerts WHERE id = $1",
            &[&suppressed],
        )
        .await
        .expect("old alert");
    assert_eq!(old.get::<_, &str>(0), "resolved");
    assert_eq!(old.get::<_, Option<&str>>(1), Some(SUPERSEDED));
    assert!(count(&client, "SELECT count(*) FROM deliveries").await > 0);

    let refused = vigil_admin(
        &db.url,
        &[
            "patient",
            "resume",
            "--patient",
            &patient,
            "--by",
            "Dr A Smith",
        ],
    )
    .await
    .expect_err("the pause is over");
    assert!(
        refused.contains("not paused (the pause ended at"),
        "{refused}"
    );

    // Who, when and why.
    let change = client
        .query_one(
            "SELECT changed_by, from_state, to_state, paused_until, reason FROM consent_changes",
            &[],
        )
        .await
        .expect("one change");
    assert_eq!(change.get::<_, &str>(0), "Dr A Smith");
    assert_eq!(
        (change.get::<_, &str>(1), change.get::<_, &str>(2)),
        ("enrolled", "paused")
    );
    assert_eq!(change.get::<_, Option<OffsetDateTime>>(3), Some(until));
    assert_eq!(
        change.get::<_, Option<&str>>(4),
        Some("admitted to hospital")
    );
    let audit: Value = client
        .query_one(
            "SELECT detail FROM audit_log WHERE action = 'pause_monitoring' AND patient_id = $1",
            &[&reg.patient],
        )
        .await
        .expect("audited")
        .get(0);
    assert_eq!(audit["by"], "Dr A Smith");
    assert_eq!(audit["reason"], "admitted to hospital");
    worker.terminate().await;
    app.stop().await;
}

/// The value of `vigil_rejects_total` for one reason on a /metrics page.
async fn rejects(service: &ChildService, reason: &str) -> f64 {
    let (_, body) = http_get(service.http_addr, "/metrics")
        .await
        .expect("metrics");
    body.lines()
        .filter(|l| {
            l.starts_with("vigil_rejects_total{") && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_withdrawn_patients_readings_are_refused_and_kept_nowhere_and_their_alerts_closed() {
    let db = TestDb::create().await;
    let s = settings(&db.url);
    // Its own process, so the metric counts this test's refusals only.
    let ingest = ChildService::start(&s, &[]).await;
    let reg = register(&db.url, "glucose_meter").await;
    let client = db.client().await;
    let patient = reg.patient.to_string();

    assert_eq!(
        hypo(ingest.grpc_addr, &reg.token, 2.6, 600).await,
        ReadingStatus::Accepted as i32
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM alerts WHERE state = 'open'").await,
        1
    );

    let withdrawn = vigil_admin(
        &db.url,
        &[
            "patient",
            "withdraw",
            "--patient",
            &patient,
            "--by",
            "Dr A Smith",
            "--reason",
            "patient withdrew consent by phone",
        ],
    )
    .await
    .expect("withdrawn");
    assert_eq!(
        (&withdrawn["from"], &withdrawn["to"]),
        (&json!("enrolled"), &json!("withdrawn"))
    );
    assert_eq!(withdrawn["alerts_closed"], 1);
    let alert = client
        .query_one("SELECT state, resolution, id FROM alerts", &[])
        .await
        .expect("alert");
    assert_eq!(alert.get::<_, &str>(0), "resolved");
    assert_eq!(alert.get::<_, Option<&str>>(1), Some(WITHDRAWN));
    let closed: Uuid = alert.get(2);
    // The resolution is an event like any other, pushed to the team.
    assert_eq!(
        count(
            &client,
            &format!(
                "SELECT count(*) FROM alert_events e JOIN deliveries d ON d.event_id = e.id
                 WHERE e.alert_id = '{closed}' AND e.kind = 'resolved' AND NOT e.suppressed"
            )
        )
        .await,
        1
    );

    // gRPC: refused with the reason.
    let mut grpc = vigil_proto::v1::ingest_service_client::IngestServiceClient::connect(format!(
        "http://{}",
        ingest.grpc_addr
    ))
    .await
    .expect("grpc");
    let reply = grpc
        .submit_readings(with_token(
            SubmitReadingsRequest {
                readings: vec![glucose_pb(&now_rfc3339(-300), 2.4, "mmol/L")],
                ..Default::default()
            },
            &reg.token,
        ))
        .await
        .expect("answered")
        .into_inner();
    let result = &reply.results[0];
    assert_eq!(result.status, ReadingStatus::Rejected as i32);
    assert_eq!(result.reason, "consent_withdrawn");
    assert!(
        result.message.contains("withdrawn from monitoring"),
        "{}",
        result.message
    );

    // MQTT: refused on the results topic.
    let topic_root = &s.mqtt.topic_root;
    let mut device =
        MqttDevice::connect(Some(format!("{topic_root}/devices/{}/results", reg.device))).await;
    let reading = json!({ "type": "blood_glucose", "measured_at": now_rfc3339(-200), "value": 2.3, "unit": "mmol/L" });
    device
        .publish(
            &format!("{topic_root}/devices/{}/readings", reg.device),
            reading.to_string(),
        )
        .await;
    let result = device.next_result().await;
    assert_eq!(result["rejected"], 1, "{result}");
    assert_eq!(
        result["results"][0]["reason"], "consent_withdrawn",
        "{result}"
    );

    // Nothing kept: only the reading from before the withdrawal, no quarantine, no new alert.
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 1);
    assert_eq!(count(&client, "SELECT count(*) FROM quarantine").await, 0);
    assert_eq!(count(&client, "SELECT count(*) FROM alerts").await, 1);
    assert_eq!(rejects(&ingest, "consent_withdrawn").await, 2.0);

    let refused = vigil_admin(
        &db.url,
        &[
            "patient",
            "pause",
            "--patient",
            &patient,
            "--until",
            "2099-01-01",
            "--by",
            "Dr A Smith",
            "--reason",
            "x",
        ],
    )
    .await
    .expect_err("withdrawn");
    assert!(refused.contains("re-enrol the patient first"), "{refused}");

    // Who, when and why, in the history, the audit log and `show`.
    let audit: Value = client
        .query_one(
            "SELECT detail FROM audit_log WHERE action = 'withdraw_monitoring' AND patient_id = $1",
            &[&reg.patient],
        )
        .await
        .expect("audited")
        .get(0);
    assert_eq!(audit["by"], "Dr A Smith");
    assert_eq!(audit["reason"], "patient withdrew consent by phone");
    assert_eq!(audit["change"]["alerts_closed"], 1);

    // Re-enrolment is explicit; readings are then accepted again.
    let reenrolled = vigil_admin(
        &db.url,
        &[
            "patient",
            "reenrol",
            "--patient",
            &patient,
            "--by",
            "Dr B Jones",
            "--reason",
            "consent renewed, form ref 77",
        ],
    )
    .await
    .expect("re-enrolled");
    assert_eq!(reenrolled["to"], "enrolled");
    assert_eq!(
        hypo(ingest.grpc_addr, &reg.token, 5.6, 100).await,
        ReadingStatus::Accepted as i32
    );
    let shown = vigil_admin(&db.url, &["patient", "show", "--patient", &patient])
        .await
        .expect("shown");
    assert_eq!(shown["state"], "enrolled");
    let history: Vec<(String, String, String)> = shown["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| {
            (
                h["from"].as_str().unwrap_or_default().to_string(),
                h["to"].as_str().unwrap_or_default().to_string(),
                h["by"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        history,
        vec![
            ("enrolled".into(), "withdrawn".into(), "Dr A Smith".into()),
            ("withdrawn".into(), "enrolled".into(), "Dr B Jones".into()),
        ]
    );
    ingest.terminate().await;
}

/// A withdrawal and an ingest batch never interleave: a withdrawal waits for a batch in
/// flight and closes the alert it raised; a batch that arrives during a withdrawal waits
/// for it and is refused.
#[tokio::test]
async fn a_withdrawal_and_ingest_take_turns() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "glucose_meter").await;

    // A batch in flight, as the writer holds it: the readings lock, consent read, an alert.
    let mut batch = connect(&db.url).await;
    let tx = batch.transaction().await.expect("tx");
    tx.batch_execute("LOCK TABLE ONLY readings IN ROW EXCLUSIVE MODE")
        .await
        .expect("lock");
    tx.execute(
        "INSERT INTO alerts (id, patient_id, team_id, rule_id, rule_version, severity, state,
                             title, detail, first_breach_at, latest_breach_at)
         VALUES (gen_random_uuid(), $1, $2, 'glucose.low', 'test@1', 'red', 'open', 'hypo', '{}', now(), now())",
        &[&reg.patient, &reg.team],
    )
    .await
    .expect("alert");
    let url = db.url.clone();
    let patient = reg.patient;
    let mut withdraw = tokio::spawn(async move {
        let mut client = connect(&url).await;
        consent::change(
            &mut client,
            patient,
            Change::Withdraw,
            "Dr A Smith",
            Some("moved away"),
        )
        .await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut withdraw)
            .await
            .is_err(),
        "the withdrawal did not wait for the batch in flight"
    );
    tx.commit().await.expect("batch commits");
    let changed = withdraw.await.expect("join").expect("withdrawn");
    assert_eq!(changed.to, State::Withdrawn);
    assert_eq!(changed.alerts_closed, 1, "the batch's alert is closed too");

    // A withdrawal in progress, as `consent::change` holds it (here of a re-enrolled patient).
    let mut admin = connect(&db.url).await;
    consent::change(
        &mut admin,
        patient,
        Change::Reenrol,
        "Dr A Smith",
        Some("renewed"),
    )
    .await
    .expect("re-enrolled");
    let tx = admin.transaction().await.expect("tx");
    tx.batch_execute(
        "LOCK TABLE readings IN SHARE MODE;
         UPDATE patients SET consent_state = 'withdrawn', consent_changed_at = now()",
    )
    .await
    .expect("withdrawing");
    let (addr, token) = (app.grpc_addr, reg.token.clone());
    let mut submit = tokio::spawn(async move { hypo(addr, &token, 2.5, 30).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut submit)
            .await
            .is_err(),
        "the batch did not wait for the withdrawal"
    );
    tx.commit().await.expect("withdrawal commits");
    assert_eq!(submit.await.expect("join"), ReadingStatus::Rejected as i32);
    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 0);
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM alerts WHERE state <> 'resolved'"
        )
        .await,
        0
    );
    app.stop().await;
}

/// A silent CGM raises a missing-data alert for an enrolled patient only: not while paused,
/// not after withdrawal, and not right after a pause (silence counts from its end).
#[tokio::test]
async fn missing_data_raises_nothing_while_paused_or_withdrawn() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let enrolled = register(&db.url, "cgm").await.patient;
    let paused = register(&db.url, "cgm").await.patient;
    let withdrawn = register(&db.url, "cgm").await.patient;
    let pause_over = register(&db.url, "cgm").await.patient;
    let mut client = connect(&db.url).await;
    let week = OffsetDateTime::now_utc() + time::Duration::days(7);
    for (patient, change) in [
        (paused, Change::Pause { until: week }),
        (withdrawn, Change::Withdraw),
        (pause_over, Change::Pause { until: week }),
    ] {
        consent::change(
            &mut client,
            patient,
            change,
            "Dr A Smith",
            Some("on holiday"),
        )
        .await
        .expect("changed");
    }
    client
        .execute(
            "UPDATE patients SET paused_until = now() - interval '1 minute' WHERE id = $1",
            &[&pause_over],
        )
        .await
        .expect("pause over");

    let fast = [("VIGIL_ALERTS__WINDOWED_INTERVAL_SECS", "1".to_string())];
    let worker = ChildService::alerts(&app.settings, &fast).await;
    wait_count(
        &client,
        &format!("SELECT count(*) FROM alerts WHERE patient_id = '{enrolled}' AND rule_id = 'data.missing.cgm'"),
        1,
    )
    .await;
    // Two more rounds for the others.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        count(
            &client,
            &format!("SELECT count(*) FROM alerts WHERE patient_id <> '{enrolled}'")
        )
        .await,
        0
    );
    worker.terminate().await;
    app.stop().await;
}

#[tokio::test]
async fn consent_changes_need_a_named_person_and_a_reason() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "bp_monitor").await;
    let patient = reg.patient.to_string();
    let until = rfc3339(
        OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("valid")
            + time::Duration::days(3),
    );

    let unnamed = vigil_admin(
        &db.url,
        &[
            "patient",
            "pause",
            "--patient",
            &patient,
            "--until",
            &until,
            "--by",
            " ",
            "--reason",
            "holiday",
        ],
    )
    .await
    .expect_err("nobody named");
    assert!(unnamed.contains("a named person"), "{unnamed}");
    let no_by = vigil_admin(
        &db.url,
        &[
            "patient",
            "withdraw",
            "--patient",
            &patient,
            "--reason",
            "x",
        ],
    )
    .await
    .expect_err("--by is required");
    assert!(no_by.contains("--by"), "{no_by}");
    let not_paused = vigil_admin(
        &db.url,
        &[
            "patient",
            "resume",
            "--patient",
            &patient,
            "--by",
            "Dr A Smith",
        ],
    )
    .await
    .expect_err("not paused");
    assert!(not_paused.contains("not paused"), "{not_paused}");
    let unknown = vigil_admin(
        &db.url,
        &[
            "patient",
            "withdraw",
            "--patient",
            &Uuid::new_v4().to_string(),
            "--by",
            "Dr A Smith",
            "--reason",
            "x",
        ],
    )
    .await
    .expect_err("no such patient");
    assert!(unknown.contains("no patient"), "{unknown}");

    vigil_admin(
        &db.url,
        &[
            "patient",
            "pause",
            "--patient",
            &patient,
            "--until",
            &until,
            "--by",
            "Dr A Smith",
            "--reason",
            "holiday abroad",
        ],
    )
    .await
    .expect("paused");
    let shown = vigil_admin(&db.url, &["patient", "show", "--patient", &patient])
        .await
        .expect("shown");
    assert_eq!(
        (&shown["state"], &shown["paused_until"]),
        (&json!("paused"), &json!(until))
    );
    let resumed = vigil_admin(
        &db.url,
        &[
            "patient",
            "resume",
            "--patient",
            &patient,
            "--by",
            "Nurse C Patel",
        ],
    )
    .await
    .expect("resumed without a reason");
    assert_eq!(
        (&resumed["from"], &resumed["to"]),
        (&json!("paused"), &json!("enrolled"))
    );

    let client = db.client().await;
    let actions: Vec<(String, Value)> = client
        .query(
            "SELECT action, detail FROM audit_log
             WHERE patient_id = $1 AND action LIKE '%_monitoring' ORDER BY id",
            &[&reg.patient],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = actions.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(names, vec!["pause_monitoring", "resume_monitoring"]);
    assert_eq!(actions[1].1["by"], "Nurse C Patel");
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM consent_changes WHERE reason IS NULL AND to_state = 'enrolled'"
        )
        .await,
        1
    );
    app.stop().await;
}
