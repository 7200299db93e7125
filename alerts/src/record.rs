//! Per-reading rules, applied inside the ingest transaction that stores the readings: a
//! reading is never committed without the alert it raises, and a redelivered reading
//! (a duplicate, so not inserted again) never raises a second one.
//!
//! While a patient's monitoring is paused, their alerts are still raised but suppressed
//! (see [`store::suppressed_event`]); once the pause is over, a new breach of a rule whose
//! alert was suppressed closes that alert and opens an ordinary one.

use std::collections::HashMap;

use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use tracing::error;
use uuid::Uuid;

use crate::{
    consent::{self, Consent, Pause},
    rules::{self, Breach, Observation, Severity, Thresholds},
    store::{self, Alert, EventKind, State},
};

/// A reading just inserted, with what the rules need.
#[derive(Debug, Clone)]
pub struct Inserted {
    pub key: Uuid,
    pub patient_id: Uuid,
    pub measured_at: OffsetDateTime,
    /// A backfill: alerts it raises are retrospective.
    pub late: bool,
    pub observation: Observation,
}

const PER_READING_RULES: [&str; 5] = [
    "bp.high",
    "bp.low",
    "glucose.low",
    "glucose.high",
    "ketones.high",
];

/// What the rules need to know about a patient.
#[derive(Debug, Clone)]
pub struct Patient {
    pub team_id: Uuid,
    pub thresholds: Thresholds,
    pub consent: Consent,
}

/// Loads each patient's team, resolved thresholds and consent.
pub async fn patients(
    db: &impl GenericClient,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Patient>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT p.id, p.team_id, t.thresholds, s.thresholds, p.consent_state,
                    p.paused_until, p.consent_reason, p.consent_changed_at
             FROM patients p
             LEFT JOIN team_alert_settings t ON t.team_id = p.team_id
             LEFT JOIN patient_alert_settings s ON s.patient_id = p.id
             WHERE p.id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let id: Uuid = r.get(0);
            let layers: Vec<Value> = [r.get::<_, Option<Value>>(2), r.get::<_, Option<Value>>(3)]
                .into_iter()
                .flatten()
                .collect();
            let thresholds = Thresholds::resolve(&layers).unwrap_or_else(|e| {
                // Settings are checked when stored; a bad row must not stop ingest.
                error!(patient = %id, error = %e, "invalid alert settings; using defaults");
                Thresholds::default()
            });
            let consent = Consent {
                state: consent::State::parse(r.get(4)).unwrap_or(consent::State::Enrolled),
                paused_until: r.get(5),
                reason: r.get(6),
                changed_at: r.get(7),
            };
            (
                id,
                Patient {
                    team_id: r.get(1),
                    thresholds,
                    consent,
                },
            )
        })
        .collect())
}

/// Evaluates `readings` and writes the resulting alert changes; returns how many alerts
/// changed.
pub async fn apply(
    db: &impl GenericClient,
    readings: &[Inserted],
) -> Result<usize, tokio_postgres::Error> {
    let relevant: Vec<&Inserted> = readings
        .iter()
        .filter(|r| {
            matches!(
                r.observation.kind.as_str(),
                "blood_pressure" | "blood_glucose" | "blood_ketones"
            )
        })
        .collect();
    if relevant.is_empty() {
        return Ok(0);
    }
    let mut ids: Vec<Uuid> = relevant.iter().map(|r| r.patient_id).collect();
    ids.sort();
    ids.dedup();
    // Transactions that touch the same patient's alerts (concurrent batches, or several
    // ingest instances) take turns, so neither opens an alert the other is opening. Locks
    // are taken in key order, so two transactions cannot wait for each other.
    db.execute(
        "SELECT pg_advisory_xact_lock(k) FROM (
             SELECT DISTINCT hashtextextended('vigil-alerts-' || p::text, 0) AS k
             FROM unnest($1::uuid[]) AS p ORDER BY k) AS keys",
        &[&ids],
    )
    .await?;
    let settings = patients(db, &ids).await?;
    let rule_ids: Vec<&str> = PER_READING_RULES.to_vec();
    let active = db
        .query(
            &format!(
                "SELECT {} FROM alerts WHERE patient_id = ANY($1) AND rule_id = ANY($2)
                 AND state <> 'resolved' FOR UPDATE",
                store::COLUMNS
            ),
            &[&ids, &rule_ids],
        )
        .await?;
    let mut alerts: HashMap<(Uuid, String), Change> = active
        .iter()
        .map(Alert::from_row)
        .map(|a| ((a.patient_id, a.rule_id.clone()), Change::existing(a)))
        .collect();

    let mut finished: Vec<Change> = Vec::new();
    let mut ordered = relevant;
    ordered.sort_by_key(|r| (r.patient_id, r.measured_at));
    let now = OffsetDateTime::now_utc();
    for reading in ordered {
        let Some(patient) = settings.get(&reading.patient_id) else {
            continue;
        };
        // The writer refuses a withdrawn patient's readings; none may raise an alert.
        if patient.consent.at(now) == consent::State::Withdrawn {
            continue;
        }
        let pause = patient.consent.pause_at(now);
        let breaches = rules::evaluate(&reading.observation, &patient.thresholds);
        for breach in &breaches {
            let key = (reading.patient_id, breach.rule_id.clone());
            // Resolved earlier in this batch, or suppressed in a pause that is over: that
            // alert is finished, and this breach opens a new one.
            if alerts.get(&key).is_some_and(|c| {
                c.alert.state == State::Resolved || superseded(&c.alert, pause.as_ref())
            }) && let Some(mut done) = alerts.remove(&key)
            {
                if done.alert.state != State::Resolved {
                    done.supersede(now);
                }
                finished.push(done);
            }
            let entry = alerts
                .entry(key)
                .or_insert_with(|| Change::new(reading, patient, breach, now, pause.clone()));
            entry.breach(reading, breach, now);
        }
        for rule in PER_READING_RULES {
            if breaches.iter().any(|b| b.rule_id == rule) {
                continue;
            }
            if let Some(change) = alerts.get_mut(&(reading.patient_id, rule.to_string()))
                && rules::still_breached(rule, &reading.observation, &patient.thresholds)
                    == Some(false)
            {
                change.cleared(reading, now);
            }
        }
    }

    let mut changed = 0;
    // Finished alerts first, so at most one alert per patient and rule is active at a time.
    for change in finished.iter_mut().chain(alerts.values_mut()) {
        let Some(kind) = change.kind() else { continue };
        let paused = settings
            .get(&change.alert.patient_id)
            .is_some_and(|p| p.consent.pause_at(now).is_some());
        store::save(db, &mut change.alert, kind, paused).await?;
        store::link_readings(db, change.alert.id, &change.readings).await?;
        changed += 1;
    }
    Ok(changed)
}

/// Whether a new breach should close `alert` and open an ordinary one: the alert was
/// suppressed in a pause, and no pause is in force now.
pub fn superseded(alert: &Alert, pause: Option<&Pause>) -> bool {
    alert.suppressed.is_some() && pause.is_none()
}

/// What a suppressed alert is closed with when a breach after the pause supersedes it.
pub const SUPERSEDED: &str =
    "superseded: raised while monitoring was paused; the pause is over and a new alert was raised";

/// An alert and what this batch did to it.
struct Change {
    alert: Alert,
    created: bool,
    touched: bool,
    readings: Vec<(Uuid, OffsetDateTime)>,
}

impl Change {
    fn existing(alert: Alert) -> Self {
        Self {
            alert,
            created: false,
            touched: false,
            readings: Vec::new(),
        }
    }

    /// A new alert, suppressed when raised during `pause`; `breach` then records the first
    /// breach on it.
    fn new(
        reading: &Inserted,
        patient: &Patient,
        breach: &Breach,
        now: OffsetDateTime,
        pause: Option<Pause>,
    ) -> Self {
        let mut alert = Alert::open(
            reading.patient_id,
            patient.team_id,
            breach,
            reading.measured_at,
            now,
        );
        alert.detail = json!({});
        alert.breach_count = 0;
        alert.retrospective = reading.late;
        alert.suppressed = pause;
        Self {
            alert,
            created: true,
            touched: true,
            readings: Vec::new(),
        }
    }

    fn breach(&mut self, reading: &Inserted, breach: &Breach, now: OffsetDateTime) {
        let a = &mut self.alert;
        if a.state == State::Resolved {
            return;
        }
        a.breach_count += 1;
        a.rule_version.clone_from(&breach.rule_version);
        a.updated_at = now;
        a.first_breach_at = a.first_breach_at.min(reading.measured_at);
        let snapshot = json!({ "reading_key": reading.key, "measured_at": rfc3339(reading.measured_at),
                               "severity": breach.severity, "title": breach.title, "detail": breach.detail });
        let worst = a
            .detail
            .get("worst_badness")
            .and_then(Value::as_f64)
            .unwrap_or(f64::MIN);
        if breach.badness > worst {
            a.detail["worst_badness"] = json!(breach.badness);
            a.detail["worst"] = snapshot.clone();
        }
        if reading.measured_at >= a.latest_breach_at || a.detail.get("latest").is_none() {
            a.latest_breach_at = a.latest_breach_at.max(reading.measured_at);
            a.detail["latest"] = snapshot;
            a.title.clone_from(&breach.title);
            a.condition_cleared_at = None;
        }
        if breach.severity > a.severity {
            a.severity = breach.severity;
            a.title.clone_from(&breach.title);
            // A rise in severity needs a clinician's eyes again.
            if a.state == State::Acknowledged {
                a.state = State::Open;
            }
        }
        // A current breach makes a retrospective alert current.
        if !reading.late {
            a.retrospective = false;
        }
        self.readings.push((reading.key, reading.measured_at));
        self.touched = true;
    }

    /// A newer reading in range. Amber and low alerts resolve; a red alert nobody has
    /// acknowledged stays open (marked cleared), so a dangerous low is never resolved
    /// before a clinician has seen it.
    fn cleared(&mut self, reading: &Inserted, now: OffsetDateTime) {
        let a = &mut self.alert;
        if a.state == State::Resolved || reading.measured_at <= a.latest_breach_at {
            return;
        }
        if a.severity == Severity::Red && a.state == State::Open {
            if a.condition_cleared_at.is_none() {
                a.condition_cleared_at = Some(reading.measured_at);
                a.updated_at = now;
                self.touched = true;
            }
            return;
        }
        a.resolve(
            None,
            now,
            format!(
                "condition cleared by the reading measured at {}",
                reading.measured_at
            ),
        );
        a.condition_cleared_at = Some(reading.measured_at);
        self.touched = true;
    }

    fn supersede(&mut self, now: OffsetDateTime) {
        self.alert.resolve(None, now, SUPERSEDED.into());
        self.touched = true;
    }

    fn kind(&self) -> Option<EventKind> {
        if !self.touched {
            None
        } else if self.created {
            Some(EventKind::Opened)
        } else if self.alert.state == State::Resolved {
            Some(EventKind::Resolved)
        } else {
            Some(EventKind::Updated)
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
