//! Windowed rules per enrolled patient: the NICE home blood-pressure average, CGM time in
//! range and missing data. Each patient is evaluated in its own transaction under an
//! advisory lock, so concurrent workers split the patients instead of repeating them.
//!
//! A withdrawn patient is not evaluated (a withdrawal takes the same lock, so an evaluation
//! that began before it finishes first and its alerts are closed with the rest). While a
//! patient's monitoring is paused, alerts are raised suppressed and missing data is not
//! news; after a pause, silence counts from its end.

use deadpool_postgres::Pool;
use serde_json::json;
use time::{Date, Duration, OffsetDateTime, UtcOffset};
use tokio_postgres::GenericClient;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::JobError;
use crate::{
    consent::{self, Pause},
    record::{self, SUPERSEDED},
    rules::{
        Thresholds,
        windowed::{self, CgmPoint, HomeBp, RangeFlag, Verdict},
    },
    store::{self, Alert, EventKind},
};

/// Patients with a device bound now, unless their monitoring is withdrawn.
pub async fn evaluate_all(
    pool: &Pool,
    now: OffsetDateTime,
    token: &CancellationToken,
) -> Result<usize, JobError> {
    let patients: Vec<Uuid> = pool
        .get()
        .await?
        .query(
            "SELECT DISTINCT b.patient_id FROM device_bindings b
             JOIN devices d ON d.id = b.device_id
             JOIN patients p ON p.id = b.patient_id
             WHERE b.valid_during @> $1::timestamptz AND d.revoked_at IS NULL
               AND p.consent_state <> 'withdrawn'",
            &[&now],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut evaluated = 0;
    for patient in patients {
        if token.is_cancelled() {
            break;
        }
        if evaluate_patient(pool, patient, now).await? {
            evaluated += 1;
        }
    }
    Ok(evaluated)
}

/// The advisory lock a patient's evaluation runs under.
const PATIENT_LOCK: &str = "hashtextextended('vigil-windowed-' || $1::uuid::text, 0)";

/// Waits for an evaluation of `patient` in progress to finish and keeps new ones off them
/// until the caller's transaction ends.
pub async fn hold_patient(
    db: &impl GenericClient,
    patient: Uuid,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        &format!("SELECT pg_advisory_xact_lock({PATIENT_LOCK})"),
        &[&patient],
    )
    .await?;
    Ok(())
}

/// Evaluates one patient unless another worker holds them; returns whether it ran.
pub async fn evaluate_patient(
    pool: &Pool,
    patient: Uuid,
    now: OffsetDateTime,
) -> Result<bool, JobError> {
    let mut db = pool.get().await?;
    let tx = db.transaction().await?;
    let locked: bool = tx
        .query_one(
            &format!("SELECT pg_try_advisory_xact_lock({PATIENT_LOCK})"),
            &[&patient],
        )
        .await?
        .get(0);
    if !locked {
        return Ok(false);
    }
    // Read after the lock: a withdrawal that held it has committed by now.
    let settings = record::patients(&*tx, &[patient]).await?;
    let Some(settings) = settings.get(&patient) else {
        return Ok(false);
    };
    if settings.consent.at(now) == consent::State::Withdrawn {
        return Ok(false);
    }
    let (team, thresholds) = (settings.team_id, &settings.thresholds);
    let pause = settings.consent.pause_at(now);
    let resumed_at = settings.consent.resumed_at(now);
    let age = age(&*tx, patient, now).await?;
    let verdicts = [
        (
            "bp.home_average".to_string(),
            home_bp(&*tx, patient, now, thresholds, age).await?,
        ),
        (
            "cgm.time_in_range".to_string(),
            cgm(&*tx, patient, now, thresholds).await?,
        ),
    ]
    .into_iter()
    .chain(if pause.is_none() {
        missing(&*tx, patient, now, resumed_at, thresholds).await?
    } else {
        Vec::new()
    });
    for (rule, verdict) in verdicts {
        apply(&*tx, patient, team, &rule, verdict, now, pause.as_ref()).await?;
    }
    tx.commit().await?;
    Ok(true)
}

async fn age(
    db: &impl GenericClient,
    patient: Uuid,
    now: OffsetDateTime,
) -> Result<Option<u32>, JobError> {
    let dob: Option<Date> = db
        .query_one(
            "SELECT date_of_birth FROM patients WHERE id = $1",
            &[&patient],
        )
        .await?
        .get(0);
    Ok(dob.map(|dob| {
        let today = now.date();
        let mut years = today.year() - dob.year();
        if (today.month() as u8, today.day()) < (dob.month() as u8, dob.day()) {
            years -= 1;
        }
        u32::try_from(years).unwrap_or(0)
    }))
}

async fn home_bp(
    db: &impl GenericClient,
    patient: Uuid,
    now: OffsetDateTime,
    t: &Thresholds,
    age: Option<u32>,
) -> Result<Verdict, JobError> {
    let since = now - Duration::days(i64::from(t.bp_home_window_days));
    let rows = db
        .query(
            "SELECT measured_at, utc_offset_minutes, systolic, diastolic FROM readings
             WHERE patient_id = $1 AND type = 'blood_pressure' AND measured_at > $2 AND measured_at <= $3",
            &[&patient, &since, &now],
        )
        .await?;
    let readings: Vec<HomeBp> = rows
        .iter()
        .filter_map(|r| {
            let at: OffsetDateTime = r.get(0);
            let offset = UtcOffset::from_whole_seconds(i32::from(r.get::<_, i16>(1)) * 60)
                .unwrap_or(UtcOffset::UTC);
            Some(HomeBp {
                local_date: at.to_offset(offset).date(),
                systolic: r.get::<_, Option<f64>>(2)?,
                diastolic: r.get::<_, Option<f64>>(3)?,
            })
        })
        .collect();
    Ok(windowed::bp_home_average(&readings, age, t))
}

async fn cgm(
    db: &impl GenericClient,
    patient: Uuid,
    now: OffsetDateTime,
    t: &Thresholds,
) -> Result<Verdict, JobError> {
    let since = now - Duration::days(i64::from(t.cgm_window_days));
    let rows = db
        .query(
            "SELECT value, original_value, original_unit, range FROM readings
             WHERE patient_id = $1 AND type = 'blood_glucose' AND specimen = 'interstitial'
               AND measured_at > $2 AND measured_at <= $3",
            &[&patient, &since, &now],
        )
        .await?;
    let points: Vec<CgmPoint> = rows
        .iter()
        .map(|r| {
            let mg_dl = r.get::<_, &str>(2) == "mg/dL";
            CgmPoint {
                value: if mg_dl { r.get(1) } else { r.get(0) },
                mg_dl,
                range: match r.get::<_, Option<&str>>(3) {
                    Some("low") => Some(RangeFlag::Low),
                    Some("high") => Some(RangeFlag::High),
                    _ => None,
                },
            }
        })
        .collect();
    Ok(windowed::cgm_time_in_range(&points, t))
}

/// Missing data per bound device kind; silence counts from the newest reading, the binding
/// or `resumed_at` (the end of a pause, a resumption or re-enrolment), whichever is latest.
async fn missing(
    db: &impl GenericClient,
    patient: Uuid,
    now: OffsetDateTime,
    resumed_at: Option<OffsetDateTime>,
    t: &Thresholds,
) -> Result<Vec<(String, Verdict)>, JobError> {
    let rows = db
        .query(
            "SELECT d.kind, max(lower(b.valid_during)),
                    (SELECT max(r.measured_at) FROM readings r
                     WHERE r.patient_id = $1 AND r.device_id = ANY(array_agg(d.id))
                       AND r.measured_at > $2::timestamptz - interval '400 days')
             FROM device_bindings b JOIN devices d ON d.id = b.device_id
             WHERE b.patient_id = $1 AND b.valid_during @> $2::timestamptz AND d.revoked_at IS NULL
             GROUP BY d.kind",
            &[&patient, &now],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let kind: String = r.get(0);
            let bound: OffsetDateTime = r.get(1);
            let last: Option<OffsetDateTime> = r.get(2);
            let quiet_since = last
                .map_or(bound, |l| l.max(bound))
                .max(resumed_at.unwrap_or(bound));
            let verdict = windowed::missing_data(&kind, quiet_since, now, t);
            (format!("data.missing.{kind}"), verdict)
        })
        .collect())
}

/// Opens, refreshes or resolves the patient's alert for `rule` according to `verdict`;
/// during `pause`, a new alert is suppressed and changes are not pushed.
async fn apply(
    db: &impl GenericClient,
    patient: Uuid,
    team: Uuid,
    rule: &str,
    verdict: Verdict,
    now: OffsetDateTime,
    pause: Option<&Pause>,
) -> Result<(), JobError> {
    let paused = pause.is_some();
    let active = db
        .query_opt(
            &format!(
                "SELECT {} FROM alerts WHERE patient_id = $1 AND rule_id = $2 AND state <> 'resolved' FOR UPDATE",
                store::COLUMNS
            ),
            &[&patient, &rule],
        )
        .await?
        .map(|r| Alert::from_row(&r));
    let active = match active {
        Some(mut alert)
            if matches!(verdict, Verdict::Breach(_)) && record::superseded(&alert, pause) =>
        {
            alert.resolve(None, now, SUPERSEDED.into());
            store::save(db, &mut alert, EventKind::Resolved, paused).await?;
            None
        }
        active => active,
    };
    match (verdict, active) {
        (Verdict::Breach(b), None) => {
            let mut alert = Alert::open(patient, team, &b, now, now);
            alert.suppressed = pause.cloned();
            store::save(db, &mut alert, EventKind::Opened, paused).await?;
        }
        (Verdict::Breach(b), Some(mut alert)) => {
            // Re-evaluation finds the same breach every round; only a changed picture is news.
            if alert.title != b.title || b.severity > alert.severity {
                let worst = alert
                    .detail
                    .get("worst_badness")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(f64::MIN);
                if b.badness > worst {
                    alert.detail["worst"] = b.detail.clone();
                    alert.detail["worst_badness"] = json!(b.badness);
                }
                alert.detail["latest"] = b.detail;
                alert.title = b.title;
                alert.severity = alert.severity.max(b.severity);
                alert.rule_version = b.rule_version;
                alert.latest_breach_at = now;
                alert.breach_count += 1;
                alert.updated_at = now;
                store::save(db, &mut alert, EventKind::Updated, paused).await?;
            }
        }
        (Verdict::Met, Some(mut alert)) => {
            let resolution = if rule.starts_with("data.missing") {
                "readings resumed"
            } else {
                "target met on re-evaluation"
            };
            alert.resolve(None, now, resolution.into());
            alert.condition_cleared_at = Some(now);
            store::save(db, &mut alert, EventKind::Resolved, paused).await?;
        }
        (Verdict::Met, None) | (Verdict::Insufficient(_), _) => {}
    }
    Ok(())
}
