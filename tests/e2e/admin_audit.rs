//! Every registry change made through `vigil admin` leaves an audit entry: what, when, the
//! database role that made it, and the patient it concerns (so an erasure redacts it).

use time::OffsetDateTime;
use uuid::Uuid;
use vigil_ingest::store::admin;

use crate::harness::{TestApp, TestDb, settings};

/// action, patient, device id in the detail, whether the recorded role is this session's.
type Entry = (String, Option<Uuid>, Option<String>, Option<bool>);

#[tokio::test]
async fn registry_changes_are_audited_with_the_patient_they_concern() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let mut sql = db.client().await;
    let team = admin::add_team(&mut sql, &format!("team {}", Uuid::new_v4()))
        .await
        .expect("team");
    let (first, _) = admin::add_patient(&mut sql, &team.to_string(), None, None)
        .await
        .expect("patient");
    let (second, _) = admin::add_patient(&mut sql, &team.to_string(), None, None)
        .await
        .expect("patient");
    let since = OffsetDateTime::now_utc() - time::Duration::hours(2);
    let device = admin::add_device(&mut sql, Uuid::new_v4(), first, "cgm", None, since)
        .await
        .expect("device")
        .id;
    admin::set_device_token_expiry(
        &mut sql,
        device,
        Some(OffsetDateTime::now_utc() + time::Duration::days(30)),
    )
    .await
    .expect("expiry");
    admin::rotate_device_token(&mut sql, device, None)
        .await
        .expect("rotate");
    admin::rebind_device(
        &mut sql,
        device,
        second,
        OffsetDateTime::now_utc() - time::Duration::hours(1),
    )
    .await
    .expect("rebind");
    admin::revoke_device(&mut sql, device)
        .await
        .expect("revoke");

    let rows = sql
        .query(
            "SELECT action, patient_id, detail->>'device_id', detail->>'db_role' = session_user
             FROM audit_log ORDER BY id",
            &[],
        )
        .await
        .expect("audit");
    let seen: Vec<Entry> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let d = Some(device.to_string());
    assert_eq!(
        seen,
        vec![
            ("team_add".into(), None, None, Some(true)),
            ("patient_add".into(), Some(first), None, Some(true)),
            ("patient_add".into(), Some(second), None, Some(true)),
            ("device_add".into(), Some(first), d.clone(), Some(true)),
            (
                "device_token_expiry".into(),
                Some(first),
                d.clone(),
                Some(true)
            ),
            (
                "device_token_rotate".into(),
                Some(first),
                d.clone(),
                Some(true)
            ),
            ("device_rebind".into(), Some(second), d.clone(), Some(true)),
            ("device_revoke".into(), Some(second), d, Some(true)),
        ]
    );
    app.stop().await;
}
