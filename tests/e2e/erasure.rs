//! `vigil admin patient erase` leaves none of the patient's health data in any table, and the
//! audit log cannot be rewritten or emptied.

use time::OffsetDateTime;
use tokio::process::Command;
use uuid::Uuid;
use vigil_alerts::consent::Change;
use vigil_ingest::store::consent;
use vigil_proto::v1::SubmitReadingsRequest;

use crate::{database::TestDb, harness::*};

async fn erase(db_url: &str, patient: Uuid) {
    let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "admin",
            "patient",
            "erase",
            "--patient",
            &patient.to_string(),
        ])
        .args([
            "--by",
            "Information governance",
            "--reason",
            "patient request ref 42",
        ])
        .env("VIGIL_DATABASE__URL", db_url)
        .output()
        .await
        .expect("vigil runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Readings (a hypo that raises an alert), a quarantined reading, a threshold override, a
/// clinician's note in the audit log and a pause of monitoring (its free-text reason on the
/// patient, in the consent history, on the suppressed alert and in the audit log), for one
/// patient. Returns the pause's reason, which is unique to the patient.
async fn history(app: &TestApp, db: &TestDb, reg: &Registered) -> String {
    let reason = format!("admitted with DKA, ref {}", Uuid::new_v4());
    let mut admin = db.client().await;
    consent::change(
        &mut admin,
        reg.patient,
        Change::Pause {
            until: OffsetDateTime::now_utc() + time::Duration::days(2),
        },
        "Dr A Smith",
        Some(&reason),
    )
    .await
    .expect("paused");
    let mut grpc = app.grpc().await;
    let request = SubmitReadingsRequest {
        readings: vec![
            glucose_pb(&now_rfc3339(-3600), 2.8, "mmol/L"),
            glucose_pb(&now_rfc3339(-1800), 6.0, "mmol/L"),
            glucose_pb(&now_rfc3339(-900), 95.0, "mmol/L"),
        ],
        ..Default::default()
    };
    grpc.submit_readings(with_token(request, &reg.token))
        .await
        .expect("stored");
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "INSERT INTO patient_alert_settings (patient_id, thresholds, set_by, reason)
                 VALUES ('{p}', '{{}}', 'Dr A', 'frail, falls');
             INSERT INTO audit_log (actor_kind, action, patient_id, detail)
                 VALUES ('clinician', 'acknowledge_alert', '{p}', '{{\"note\": \"phoned, eating\"}}');",
            p = reg.patient
        ))
        .await
        .expect("override and note");
    let _ = client.batch_execute("CALL vigil_refresh_rollups()").await;
    reason
}

async fn run(db: TestDb) {
    let app = TestApp::spawn(settings(&db.url)).await;
    let gone = register(&db.url, "glucose_meter").await;
    let kept = register(&db.url, "glucose_meter").await;
    let gone_reason = history(&app, &db, &gone).await;
    let kept_reason = history(&app, &db, &kept).await;
    let client = db.client().await;
    let before_kept = count(
        &client,
        &format!(
            "SELECT count(*) FROM readings WHERE patient_id = '{}'",
            kept.patient
        ),
    )
    .await;
    assert!(before_kept > 0);
    assert!(
        count(
            &client,
            &format!(
                "SELECT count(*) FROM alerts WHERE patient_id = '{}' AND suppressed_reason IS NOT NULL",
                gone.patient
            )
        )
        .await
            > 0
    );
    assert_eq!(
        count(
            &client,
            &format!(
                "SELECT count(*) FROM consent_changes WHERE patient_id = '{}'",
                gone.patient
            )
        )
        .await,
        1
    );

    erase(&db.url, gone.patient).await;

    // Every row of every table, as text, searched for the patient's and the device's ids, and
    // for the free-text reason the patient's monitoring was paused with (no exceptions).
    let tables: Vec<String> = client
        .query(
            "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables
             WHERE table_schema = 'public' AND table_type IN ('BASE TABLE', 'VIEW')",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() > 10, "{tables:?}");
    for table in &tables {
        for (what, id) in [("patient", gone.patient), ("device", gone.device)] {
            let allowed = match what {
                "patient" => ["public.audit_log", "public.erasures"].contains(&table.as_str()),
                _ => table == "public.devices",
            };
            if allowed {
                continue;
            }
            let n = count(
                &client,
                &format!("SELECT count(*) FROM {table} t WHERE t::text LIKE '%{id}%'"),
            )
            .await;
            assert_eq!(n, 0, "{table} still holds the erased {what} {id}");
        }
        let n = count(
            &client,
            &format!("SELECT count(*) FROM {table} t WHERE t::text LIKE '%{gone_reason}%'"),
        )
        .await;
        assert_eq!(
            n, 0,
            "{table} still holds the erased patient's pause reason"
        );
    }
    // The audit trail keeps who did what, with no free text left for the erased patient.
    let notes = count(
        &client,
        &format!(
            "SELECT count(*) FROM audit_log WHERE patient_id = '{}' AND detail::text LIKE '%eating%'",
            gone.patient
        ),
    )
    .await;
    assert_eq!(notes, 0);
    assert_eq!(
        count(
            &client,
            &format!(
                "SELECT count(*) FROM audit_log WHERE patient_id = '{}' AND action = 'erase_patient'",
                gone.patient
            )
        )
        .await,
        1
    );
    let revoked = count(
        &client,
        &format!(
            "SELECT count(*) FROM devices WHERE id = '{}' AND revoked_at IS NOT NULL",
            gone.device
        ),
    )
    .await;
    assert_eq!(revoked, 1, "the erased patient's device is revoked");

    // The other patient is untouched.
    assert_eq!(
        count(
            &client,
            &format!(
                "SELECT count(*) FROM readings WHERE patient_id = '{}'",
                kept.patient
            )
        )
        .await,
        before_kept
    );
    assert!(
        count(
            &client,
            &format!(
                "SELECT count(*) FROM alerts WHERE patient_id = '{}'",
                kept.patient
            )
        )
        .await
            > 0
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM audit_log WHERE detail::text LIKE '%eating%'"
        )
        .await,
        1,
        "the kept patient's note stays"
    );
    assert_eq!(
        count(
            &client,
            &format!("SELECT count(*) FROM consent_changes WHERE reason = '{kept_reason}'")
        )
        .await,
        1,
        "the kept patient's consent history stays"
    );

    // Append-only: no rewrite, no delete, no truncate, not even of the kept patient's rows.
    for sql in [
        "UPDATE audit_log SET detail = '{}'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        assert!(
            err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
            "{sql}: {err:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn erasing_a_patient_leaves_no_health_data_on_plain_postgresql() {
    run(TestDb::create().await).await;
}

#[tokio::test]
async fn erasing_a_patient_leaves_no_health_data_on_timescaledb() {
    let Ok(server) = std::env::var("VIGIL_TEST_TIMESCALE_URL") else {
        eprintln!("VIGIL_TEST_TIMESCALE_URL not set: TimescaleDB path not exercised");
        return;
    };
    run(TestDb::create_on(&server).await).await;
}
