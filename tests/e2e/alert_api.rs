//! The clinician side, through the real `vigil alerts` worker: a dangerous reading reaches
//! a watching clinician of the patient's team and nobody else; repeats update the same
//! alert; a reconnecting watcher resumes without gaps; actions are audited.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tonic::{Code, Request, Streaming};
use uuid::Uuid;
use vigil_alerts::clinicians;
use vigil_proto::v1::{
    AcknowledgeAlertRequest, AlertEvent, GetPatientThresholdsRequest, ListAlertsRequest,
    SetPatientThresholdsRequest, SubmitReadingsRequest, WatchAlertsRequest,
    alert_service_client::AlertServiceClient,
};

use crate::{child::ChildService, harness::*};

type Client = AlertServiceClient<tonic::transport::Channel>;

async fn clinician(db_url: &str, team: Uuid) -> String {
    let client = connect(db_url).await;
    clinicians::add(&client, "Dr Test", &[team])
        .await
        .expect("clinician")
        .token
}

async fn alert_client(worker: &ChildService) -> Client {
    AlertServiceClient::connect(format!("http://{}", worker.grpc_addr))
        .await
        .expect("alert API connects")
}

async fn watch(client: &mut Client, token: &str, after: Option<i64>) -> Streaming<AlertEvent> {
    client
        .watch_alerts(with_token(
            WatchAlertsRequest {
                after_event_id: after,
            },
            token,
        ))
        .await
        .expect("watch opens")
        .into_inner()
}

async fn next(stream: &mut Streaming<AlertEvent>) -> AlertEvent {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an alert event arrives")
        .expect("stream open")
        .expect("event")
}

/// Ingest in-process, one registered patient and device, a clinician of their team, and a
/// `vigil alerts` process (with `env` on top of the test's settings).
struct Fixture {
    db: TestDb,
    app: TestApp,
    reg: Registered,
    token: String,
    worker: ChildService,
    api: Client,
}

async fn fixture(kind: &str, env: &[(&str, String)]) -> Fixture {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, kind).await;
    let token = clinician(&db.url, reg.team).await;
    let worker = ChildService::alerts(&app.settings, env).await;
    let api = alert_client(&worker).await;
    Fixture {
        db,
        app,
        reg,
        token,
        worker,
        api,
    }
}

#[tokio::test]
async fn a_dangerous_reading_reaches_its_team_only_and_repeats_update_the_same_alert() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let ours = register(&db.url, "glucose_meter").await;
    let theirs = register(&db.url, "glucose_meter").await;
    let our_token = clinician(&db.url, ours.team).await;
    let their_token = clinician(&db.url, theirs.team).await;
    let worker = ChildService::alerts(&app.settings, &[]).await;
    let mut api = alert_client(&worker).await;
    let mut ours_watch = watch(&mut api, &our_token, None).await;
    let mut theirs_watch = watch(&mut api, &their_token, None).await;

    let mut grpc = app.grpc().await;
    let submit = |value: f64, mins: i64| SubmitReadingsRequest {
        readings: vec![glucose_pb(&now_rfc3339(-60 * mins), value, "mmol/L")],
        ..Default::default()
    };
    // The first reading arrives over MQTT, the repeat over gRPC.
    let mut device = MqttDevice::connect(Some(app.results_topic(ours.device))).await;
    let hypo = json!({ "type": "blood_glucose", "measured_at": now_rfc3339(-600), "value": 2.6, "unit": "mmol/L" });
    device
        .publish(&app.readings_topic(ours.device), hypo.to_string())
        .await;
    assert_eq!(device.next_result().await["accepted"], 1);
    let opened = next(&mut ours_watch).await;
    let alert = opened.alert.clone().expect("alert");
    assert_eq!(opened.kind, "opened");
    assert_eq!(
        (alert.rule_id.as_str(), alert.severity.as_str()),
        ("glucose.low", "red")
    );
    assert!(alert.urgent);
    assert_eq!(alert.patient_id, ours.patient.to_string());

    grpc.submit_readings(with_token(submit(2.9, 5), &ours.token))
        .await
        .expect("stored");
    let updated = next(&mut ours_watch).await;
    assert_eq!(updated.kind, "updated");
    let same = updated.alert.clone().expect("alert");
    assert_eq!(same.id, alert.id, "a repeat breach updates the open alert");
    assert_eq!(same.breach_count, 2);

    // The other team's clinician sees nothing and can touch nothing.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), theirs_watch.next())
            .await
            .is_err(),
        "another team's watcher received an event"
    );
    let listed = api
        .list_alerts(with_token(ListAlertsRequest::default(), &their_token))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.alerts.is_empty());
    let denied = api
        .acknowledge_alert(with_token(
            AcknowledgeAlertRequest {
                alert_id: alert.id.clone(),
                note: String::new(),
            },
            &their_token,
        ))
        .await
        .expect_err("not their alert");
    assert_eq!(denied.code(), Code::NotFound);
    let denied = api
        .get_patient_thresholds(with_token(
            GetPatientThresholdsRequest {
                patient_id: ours.patient.to_string(),
            },
            &their_token,
        ))
        .await
        .expect_err("not their patient");
    assert_eq!(denied.code(), Code::NotFound);
    let anonymous = api
        .list_alerts(Request::new(ListAlertsRequest::default()))
        .await
        .expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    // Acknowledge, then resume a watch from the first event: nothing in between is missed.
    let acked = api
        .acknowledge_alert(with_token(
            AcknowledgeAlertRequest {
                alert_id: alert.id.clone(),
                note: "phoned, eating".into(),
            },
            &our_token,
        ))
        .await
        .expect("acknowledged")
        .into_inner();
    assert_eq!(acked.state, "acknowledged");
    assert_eq!(next(&mut ours_watch).await.kind, "acknowledged");
    let mut resumed = watch(&mut api, &our_token, Some(opened.event_id)).await;
    let replayed: Vec<String> = vec![next(&mut resumed).await.kind, next(&mut resumed).await.kind];
    assert_eq!(replayed, vec!["updated", "acknowledged"]);

    let listed = api
        .list_alerts(with_token(
            ListAlertsRequest {
                states: vec!["acknowledged".into()],
                ..Default::default()
            },
            &our_token,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.alerts.len(), 1);

    let client = db.client().await;
    let actions: Vec<String> = client
        .query(
            "SELECT action FROM audit_log WHERE actor_kind = 'clinician' AND patient_id IS NOT DISTINCT FROM $1
             OR (actor_kind = 'clinician' AND action IN ('watch_alerts', 'list_alerts')) ORDER BY id",
            &[&ours.patient],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        actions.contains(&"acknowledge_alert".to_string()),
        "{actions:?}"
    );
    assert!(actions.contains(&"watch_alerts".to_string()), "{actions:?}");
    worker.terminate().await;
    app.stop().await;
}

#[tokio::test]
async fn patient_thresholds_are_overridden_with_who_when_and_why() {
    let Fixture {
        db,
        app,
        reg,
        token,
        worker,
        mut api,
    } = fixture("bp_monitor", &[]).await;
    let bad = api
        .set_patient_thresholds(with_token(
            SetPatientThresholdsRequest {
                patient_id: reg.patient.to_string(),
                override_json: json!({ "bp_high_sistolic": 170 }).to_string(),
                reason: "typo".into(),
            },
            &token,
        ))
        .await
        .expect_err("unknown key");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let set = api
        .set_patient_thresholds(with_token(
            SetPatientThresholdsRequest {
                patient_id: reg.patient.to_string(),
                override_json: json!({ "bp_high_systolic": 170 }).to_string(),
                reason: "frail, falls risk: treat less aggressively".into(),
            },
            &token,
        ))
        .await
        .expect("set")
        .into_inner();
    let resolved: serde_json::Value = serde_json::from_str(&set.thresholds_json).expect("json");
    assert_eq!(resolved["bp_high_systolic"], 170.0);
    assert!(set.set_by.starts_with("clinician:"));
    assert!(!set.set_at.is_empty());

    // The override is in force for the next reading: 165/90 no longer alerts.
    let mut grpc = app.grpc().await;
    let reading = vigil_proto::v1::Reading {
        r#type: "blood_pressure".into(),
        measured_at: now_rfc3339(-60),
        systolic: Some(165.0),
        diastolic: Some(90.0),
        ..Default::default()
    };
    grpc.submit_readings(with_token(
        SubmitReadingsRequest {
            readings: vec![reading],
            ..Default::default()
        },
        &reg.token,
    ))
    .await
    .expect("stored");
    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 1);
    assert_eq!(count(&client, "SELECT count(*) FROM alerts").await, 0);
    worker.terminate().await;
    app.stop().await;
}

#[tokio::test]
async fn an_unacknowledged_red_alert_is_escalated() {
    let fast = [
        ("VIGIL_ALERTS__ESCALATE_RED_AFTER_SECS", "1".to_string()),
        ("VIGIL_ALERTS__POLL_INTERVAL_MS", "200".to_string()),
    ];
    let Fixture {
        db: _db,
        app,
        reg,
        token,
        worker,
        mut api,
    } = fixture("ketone_meter", &fast).await;
    let mut events = watch(&mut api, &token, None).await;
    let reading = vigil_proto::v1::Reading {
        r#type: "blood_ketones".into(),
        measured_at: now_rfc3339(-60),
        value: Some(3.4),
        unit: "mmol/L".into(),
        ..Default::default()
    };
    let mut grpc = app.grpc().await;
    grpc.submit_readings(with_token(
        SubmitReadingsRequest {
            readings: vec![reading],
            ..Default::default()
        },
        &reg.token,
    ))
    .await
    .expect("stored");
    assert_eq!(next(&mut events).await.kind, "opened");
    let escalated = next(&mut events).await;
    assert_eq!(escalated.kind, "escalated");
    assert!(!escalated.alert.expect("alert").escalated_at.is_empty());
    worker.terminate().await;
    app.stop().await;
}

#[tokio::test]
async fn a_home_blood_pressure_average_above_target_raises_a_windowed_alert() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "bp_monitor").await;
    let mut client = connect(&db.url).await;
    let since = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    let cuff = vigil_ingest::store::admin::add_device(
        &mut client,
        Uuid::new_v4(),
        reg.patient,
        "bp_monitor",
        None,
        since,
    )
    .await
    .expect("cuff");
    // Five days of twice-daily duplicate readings averaging 142/88: above 135/85.
    let readings: Vec<vigil_proto::v1::Reading> = (0..5)
        .flat_map(|day| (0..4).map(move |i| (day, i)))
        .map(|(day, i)| vigil_proto::v1::Reading {
            r#type: "blood_pressure".into(),
            measured_at: now_rfc3339(-(day * 86_400 + i * 600 + 3600)),
            systolic: Some(140.0 + f64::from(i as u8)),
            diastolic: Some(88.0),
            ..Default::default()
        })
        .collect();
    let mut grpc = app.grpc().await;
    grpc.submit_readings(with_token(
        SubmitReadingsRequest {
            readings,
            ..Default::default()
        },
        &cuff.token,
    ))
    .await
    .expect("stored");
    let fast = [("VIGIL_ALERTS__WINDOWED_INTERVAL_SECS", "1".to_string())];
    let worker = ChildService::alerts(&app.settings, &fast).await;
    let db2 = db.client().await;
    eventually("home average alert", || async {
        count(
            &db2,
            "SELECT count(*) FROM alerts WHERE rule_id = 'bp.home_average'",
        )
        .await
            == 1
    })
    .await;
    let row = db2
        .query_one(
            "SELECT severity, detail FROM alerts WHERE rule_id = 'bp.home_average'",
            &[],
        )
        .await
        .expect("alert");
    assert_eq!(row.get::<_, &str>(0), "amber");
    let detail: serde_json::Value = row.get(1);
    assert_eq!(
        detail["latest"]["readings"], 16,
        "day 1 discarded: 4 of 20 readings"
    );
    worker.terminate().await;
    app.stop().await;
}

/// Latency from a committed reading (the gRPC answer comes after COMMIT) to its alert on a
/// `WatchAlerts` stream. Prints percentiles; run with
/// `cargo test --release --test e2e alert_latency -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement, not a test: prints latency percentiles"]
async fn alert_latency() {
    let Fixture {
        db: _db,
        app,
        reg,
        token,
        worker,
        mut api,
    } = fixture("glucose_meter", &[]).await;
    let mut events = watch(&mut api, &token, None).await;
    let mut grpc = app.grpc().await;
    let mut latencies = Vec::new();
    for i in 0..200 {
        // Alternate a low and a normal reading: each low opens (or reopens) an amber alert.
        let value = if i % 2 == 0 { 3.5 } else { 6.0 };
        let request = SubmitReadingsRequest {
            readings: vec![glucose_pb(&now_rfc3339(-(200 - i)), value, "mmol/L")],
            ..Default::default()
        };
        grpc.submit_readings(with_token(request, &reg.token))
            .await
            .expect("stored");
        let committed = Instant::now();
        let _ = next(&mut events).await;
        latencies.push(committed.elapsed());
    }
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "commit → WatchAlerts: n={} p50={:?} p95={:?} p99={:?} max={:?}",
        latencies.len(),
        p(0.50),
        p(0.95),
        p(0.99),
        latencies[latencies.len() - 1]
    );
    worker.terminate().await;
    app.stop().await;
}

#[tokio::test]
async fn an_open_watch_ends_when_the_clinician_is_revoked() {
    let Fixture {
        db,
        app,
        reg: _reg,
        token,
        worker,
        mut api,
    } = fixture("glucose_meter", &[]).await;
    let mut events = watch(&mut api, &token, None).await;
    let client = db.client().await;
    client
        .execute("UPDATE clinicians SET revoked_at = now()", &[])
        .await
        .expect("revoke");
    let end = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("the stream reacts")
        .expect("an item");
    assert_eq!(end.expect_err("refused").code(), Code::Unauthenticated);
    worker.terminate().await;
    app.stop().await;
}

/// Event ids are taken at insert; an event whose transaction commits late must still reach
/// a watcher that has already seen a later id.
#[tokio::test]
async fn watchers_receive_events_in_commit_order_without_gaps() {
    let Fixture {
        db,
        app,
        reg,
        token,
        worker,
        mut api,
    } = fixture("glucose_meter", &[]).await;
    let mut events = watch(&mut api, &token, None).await;

    let raise = |rule: &'static str| {
        format!(
            "WITH a AS (
                 INSERT INTO alerts (id, patient_id, team_id, rule_id, rule_version, severity, state,
                                     title, detail, first_breach_at, latest_breach_at)
                 VALUES (gen_random_uuid(), '{p}', '{t}', '{rule}', 'test@1', 'amber', 'open',
                         '{rule}', '{{}}', now(), now())
                 RETURNING id)
             INSERT INTO alert_events (alert_id, team_id, kind, alert)
             SELECT id, '{t}', 'opened', jsonb_build_object('rule_id', '{rule}') FROM a",
            p = reg.patient,
            t = reg.team
        )
    };
    let mut slow = connect(&db.url).await;
    let slow_tx = slow.transaction().await.expect("tx");
    slow_tx
        .batch_execute(&raise("test.slow"))
        .await
        .expect("slow event");
    let fast = connect(&db.url).await;
    fast.batch_execute(&raise("test.fast"))
        .await
        .expect("fast event");
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), events.next())
            .await
            .is_err(),
        "a later event was streamed while an earlier one was uncommitted"
    );
    slow_tx.commit().await.expect("commit");
    let first = next(&mut events).await;
    let second = next(&mut events).await;
    let rule = |e: &AlertEvent| {
        e.alert
            .as_ref()
            .map(|a| a.rule_id.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        (rule(&first), rule(&second)),
        ("test.slow".into(), "test.fast".into())
    );
    assert!(first.event_id < second.event_id);
    let mut resumed = watch(&mut api, &token, Some(first.event_id)).await;
    assert_eq!(rule(&next(&mut resumed).await), "test.fast");
    worker.terminate().await;
    app.stop().await;
}

#[tokio::test]
async fn a_lo_reading_raises_an_alert_clinicians_can_read() {
    let Fixture {
        db: _db,
        app,
        reg,
        token,
        worker,
        mut api,
    } = fixture("cgm", &[]).await;
    let mut events = watch(&mut api, &token, None).await;
    let mut lo = glucose_pb(&now_rfc3339(-60), 2.2, "mmol/L");
    lo.range = "low".into();
    lo.specimen = "interstitial".into();
    let request = SubmitReadingsRequest {
        readings: vec![lo],
        ..Default::default()
    };
    app.grpc()
        .await
        .submit_readings(with_token(request, &reg.token))
        .await
        .expect("stored");
    let alert = loop {
        let alert = next(&mut events).await.alert.expect("the alert");
        if alert.rule_id == "glucose.low" {
            break alert;
        }
    };
    assert_eq!(alert.severity, "red");
    let listed = api
        .list_alerts(with_token(ListAlertsRequest::default(), &token))
        .await
        .expect("the alert list reads the LO alert's details")
        .into_inner();
    let listed = listed
        .alerts
        .iter()
        .find(|a| a.id == alert.id)
        .expect("the LO alert is listed");
    let detail: serde_json::Value =
        serde_json::from_str(&listed.detail_json).expect("detail is JSON");
    assert_eq!(detail["latest"]["detail"]["range"], "low");
    assert!(
        time::OffsetDateTime::parse(
            detail["latest"]["measured_at"].as_str().expect("a time"),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok(),
        "{detail}"
    );
    worker.terminate().await;
    app.stop().await;
}
