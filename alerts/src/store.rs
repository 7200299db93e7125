//! Alert rows: loading, writing and the event that records each change. Every change of an
//! alert goes through [`save`], which writes the row and its event in the caller's
//! transaction, so the event log (and every delivery fed by it) matches the table exactly.

use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use crate::{
    consent::Pause,
    rules::{Breach, Severity},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    Acknowledged,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Acknowledged => "acknowledged",
            Self::Resolved => "resolved",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "acknowledged" => Self::Acknowledged,
            "resolved" => Self::Resolved,
            _ => Self::Open,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Opened,
    Updated,
    Escalated,
    Acknowledged,
    Resolved,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Updated => "updated",
            Self::Escalated => "escalated",
            Self::Acknowledged => "acknowledged",
            Self::Resolved => "resolved",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub team_id: Uuid,
    pub rule_id: String,
    pub rule_version: String,
    pub severity: Severity,
    pub state: State,
    pub title: String,
    /// `{"latest": …, "worst": …, "worst_badness": n}`: the breach details behind it.
    pub detail: Value,
    pub retrospective: bool,
    pub breach_count: i32,
    pub first_breach_at: OffsetDateTime,
    pub latest_breach_at: OffsetDateTime,
    pub opened_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub acknowledged_at: Option<OffsetDateTime>,
    pub acknowledged_by: Option<Uuid>,
    pub acknowledge_note: Option<String>,
    pub condition_cleared_at: Option<OffsetDateTime>,
    pub escalated_at: Option<OffsetDateTime>,
    pub resolved_at: Option<OffsetDateTime>,
    pub resolved_by: Option<Uuid>,
    pub resolution: Option<String>,
    /// Raised while the patient's monitoring was paused: the pause it was raised in.
    pub suppressed: Option<Pause>,
    /// Whether the row exists yet.
    pub stored: bool,
}

pub const COLUMNS: &str = "id, patient_id, team_id, rule_id, rule_version, severity, state, title, \
    detail, retrospective, breach_count, first_breach_at, latest_breach_at, opened_at, updated_at, \
    acknowledged_at, acknowledged_by, acknowledge_note, condition_cleared_at, escalated_at, \
    resolved_at, resolved_by, resolution, suppressed_reason, suppressed_until";

impl Alert {
    /// A new open alert for `breach`, first breached at `at`, not yet stored.
    pub fn open(
        patient_id: Uuid,
        team_id: Uuid,
        breach: &Breach,
        at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            id: Uuid::new_v4(),
            patient_id,
            team_id,
            rule_id: breach.rule_id.clone(),
            rule_version: breach.rule_version.clone(),
            severity: breach.severity,
            state: State::Open,
            title: breach.title.clone(),
            detail: json!({ "latest": breach.detail, "worst": breach.detail, "worst_badness": breach.badness }),
            retrospective: false,
            breach_count: 1,
            first_breach_at: at,
            latest_breach_at: at,
            opened_at: now,
            updated_at: now,
            acknowledged_at: None,
            acknowledged_by: None,
            acknowledge_note: None,
            condition_cleared_at: None,
            escalated_at: None,
            resolved_at: None,
            resolved_by: None,
            resolution: None,
            suppressed: None,
            stored: false,
        }
    }

    pub fn from_row(r: &Row) -> Self {
        Self {
            id: r.get("id"),
            patient_id: r.get("patient_id"),
            team_id: r.get("team_id"),
            rule_id: r.get("rule_id"),
            rule_version: r.get("rule_version"),
            severity: Severity::parse(r.get("severity")).unwrap_or(Severity::Red),
            state: State::parse(r.get("state")),
            title: r.get("title"),
            detail: r.get("detail"),
            retrospective: r.get("retrospective"),
            breach_count: r.get("breach_count"),
            first_breach_at: r.get("first_breach_at"),
            latest_breach_at: r.get("latest_breach_at"),
            opened_at: r.get("opened_at"),
            updated_at: r.get("updated_at"),
            acknowledged_at: r.get("acknowledged_at"),
            acknowledged_by: r.get("acknowledged_by"),
            acknowledge_note: r.get("acknowledge_note"),
            condition_cleared_at: r.get("condition_cleared_at"),
            escalated_at: r.get("escalated_at"),
            resolved_at: r.get("resolved_at"),
            resolved_by: r.get("resolved_by"),
            resolution: r.get("resolution"),
            suppressed: r
                .get::<_, Option<OffsetDateTime>>("suppressed_until")
                .map(|until| Pause {
                    until,
                    reason: r
                        .get::<_, Option<String>>("suppressed_reason")
                        .unwrap_or_default(),
                }),
            stored: true,
        }
    }

    /// Closes the alert: `by` a clinician, or automatically when `None`.
    pub fn resolve(&mut self, by: Option<Uuid>, now: OffsetDateTime, resolution: String) {
        self.state = State::Resolved;
        self.resolved_at = Some(now);
        self.resolved_by = by;
        self.resolution = Some(resolution);
        self.updated_at = now;
    }

    /// Red alerts that nobody has acknowledged are the ones to push as urgent; a suppressed
    /// alert is pushed to nobody.
    pub fn urgent(&self) -> bool {
        self.severity == Severity::Red
            && self.state == State::Open
            && !self.retrospective
            && self.suppressed.is_none()
    }

    /// The alert as delivered to streams, MQTT and webhooks.
    pub fn snapshot(&self) -> Value {
        let ts = |t: Option<OffsetDateTime>| {
            t.and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
        };
        json!({
            "id": self.id, "patient_id": self.patient_id, "team_id": self.team_id,
            "rule_id": self.rule_id, "rule_version": self.rule_version,
            "severity": self.severity.as_str(), "state": self.state.as_str(),
            "title": self.title, "detail": self.detail,
            "retrospective": self.retrospective, "urgent": self.urgent(),
            "breach_count": self.breach_count,
            "first_breach_at": ts(Some(self.first_breach_at)),
            "latest_breach_at": ts(Some(self.latest_breach_at)),
            "opened_at": ts(Some(self.opened_at)), "updated_at": ts(Some(self.updated_at)),
            "acknowledged_at": ts(self.acknowledged_at), "acknowledged_by": self.acknowledged_by,
            "acknowledge_note": self.acknowledge_note,
            "condition_cleared_at": ts(self.condition_cleared_at),
            "escalated_at": ts(self.escalated_at), "resolved_at": ts(self.resolved_at),
            "resolved_by": self.resolved_by, "resolution": self.resolution,
            "suppressed": self.suppressed.is_some(),
            "suppressed_reason": self.suppressed.as_ref().map(|p| &p.reason),
            "suppressed_until": ts(self.suppressed.as_ref().map(|p| p.until)),
        })
    }
}

/// Whether an event is kept from the team's channels (deliveries and `WatchAlerts`): every
/// event of a suppressed alert, and whatever a paused patient's data does to their other
/// alerts, except resolving them (which pages nobody and clears what the team was shown).
pub fn suppressed_event(alert: &Alert, kind: EventKind, paused: bool) -> bool {
    alert.suppressed.is_some() || (paused && kind != EventKind::Resolved)
}

/// Writes the alert (insert or update) and one event of `kind`; returns the event id.
/// `paused` says the change comes from the data of a patient whose monitoring is paused
/// (see [`suppressed_event`]); changes made by people or by escalation pass `false`.
pub async fn save(
    db: &impl GenericClient,
    alert: &mut Alert,
    kind: EventKind,
    paused: bool,
) -> Result<i64, tokio_postgres::Error> {
    let severity = alert.severity.as_str();
    let state = alert.state.as_str();
    let suppressed_reason = alert.suppressed.as_ref().map(|p| p.reason.as_str());
    let suppressed_until = alert.suppressed.as_ref().map(|p| p.until);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 25] = [
        &alert.id,
        &alert.patient_id,
        &alert.team_id,
        &alert.rule_id,
        &alert.rule_version,
        &severity,
        &state,
        &alert.title,
        &alert.detail,
        &alert.retrospective,
        &alert.breach_count,
        &alert.first_breach_at,
        &alert.latest_breach_at,
        &alert.opened_at,
        &alert.updated_at,
        &alert.acknowledged_at,
        &alert.acknowledged_by,
        &alert.acknowledge_note,
        &alert.condition_cleared_at,
        &alert.escalated_at,
        &alert.resolved_at,
        &alert.resolved_by,
        &alert.resolution,
        &suppressed_reason,
        &suppressed_until,
    ];
    if alert.stored {
        db.execute(
            "UPDATE alerts SET rule_version = $5, severity = $6, state = $7, title = $8,
                 detail = $9, retrospective = $10, breach_count = $11, first_breach_at = $12,
                 latest_breach_at = $13, updated_at = $15, acknowledged_at = $16,
                 acknowledged_by = $17, acknowledge_note = $18, condition_cleared_at = $19,
                 escalated_at = $20, resolved_at = $21, resolved_by = $22, resolution = $23,
                 suppressed_reason = $24, suppressed_until = $25
             WHERE id = $1 AND patient_id = $2 AND team_id = $3 AND rule_id = $4 AND opened_at = $14",
            &params,
        )
        .await?;
    } else {
        db.execute(
            &format!(
                "INSERT INTO alerts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                 $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)"
            ),
            &params,
        )
        .await?;
        alert.stored = true;
    }
    let row = db
        .query_one(
            "INSERT INTO alert_events (alert_id, team_id, kind, alert, suppressed)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING id",
            &[
                &alert.id,
                &alert.team_id,
                &kind.as_str(),
                &alert.snapshot(),
                &suppressed_event(alert, kind, paused),
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Records that `alert` rests on these readings.
pub async fn link_readings(
    db: &impl GenericClient,
    alert: Uuid,
    readings: &[(Uuid, OffsetDateTime)],
) -> Result<(), tokio_postgres::Error> {
    if readings.is_empty() {
        return Ok(());
    }
    let keys: Vec<Uuid> = readings.iter().map(|r| r.0).collect();
    let times: Vec<OffsetDateTime> = readings.iter().map(|r| r.1).collect();
    db.execute(
        "INSERT INTO alert_readings (alert_id, reading_key, measured_at)
         SELECT $1, k, t FROM unnest($2::uuid[], $3::timestamptz[]) AS u(k, t)
         ON CONFLICT DO NOTHING",
        &[&alert, &keys, &times],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::rules::Breach;

    fn alert() -> Alert {
        let at = datetime!(2026-11-22 08:00 UTC);
        let breach = Breach {
            rule_id: "glucose.low".into(),
            rule_version: "2026.11/glucose.low@1".into(),
            severity: Severity::Red,
            title: "Glucose 2.6 mmol/L".into(),
            badness: 1.0,
            detail: json!({}),
        };
        Alert::open(Uuid::nil(), Uuid::nil(), &breach, at, at)
    }

    #[test]
    fn a_suppressed_alert_is_never_pushed_or_urgent() {
        let mut a = alert();
        assert!(a.urgent());
        a.suppressed = Some(Pause {
            until: datetime!(2026-12-01 00:00 UTC),
            reason: "in hospital".into(),
        });
        assert!(!a.urgent());
        for kind in [
            EventKind::Opened,
            EventKind::Acknowledged,
            EventKind::Resolved,
        ] {
            assert!(suppressed_event(&a, kind, false), "{kind:?}");
        }
        assert_eq!(a.snapshot()["suppressed_until"], "2026-12-01T00:00:00Z");
    }

    #[test]
    fn while_paused_only_resolutions_of_earlier_alerts_go_out() {
        let a = alert();
        assert!(suppressed_event(&a, EventKind::Opened, true));
        assert!(suppressed_event(&a, EventKind::Updated, true));
        assert!(!suppressed_event(&a, EventKind::Resolved, true));
        assert!(!suppressed_event(&a, EventKind::Updated, false));
    }
}
