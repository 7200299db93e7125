use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use vigil_proto::v1 as pb;

use crate::store::Alert;

fn ts(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

fn id(u: Option<uuid::Uuid>) -> String {
    u.map(|u| u.to_string()).unwrap_or_default()
}

impl From<&Alert> for pb::Alert {
    fn from(a: &Alert) -> Self {
        Self {
            id: a.id.to_string(),
            patient_id: a.patient_id.to_string(),
            team_id: a.team_id.to_string(),
            rule_id: a.rule_id.clone(),
            rule_version: a.rule_version.clone(),
            severity: a.severity.as_str().into(),
            state: a.state.as_str().into(),
            title: a.title.clone(),
            detail_json: a.detail.to_string(),
            retrospective: a.retrospective,
            urgent: a.urgent(),
            breach_count: a.breach_count,
            first_breach_at: ts(Some(a.first_breach_at)),
            latest_breach_at: ts(Some(a.latest_breach_at)),
            opened_at: ts(Some(a.opened_at)),
            updated_at: ts(Some(a.updated_at)),
            acknowledged_at: ts(a.acknowledged_at),
            acknowledged_by: id(a.acknowledged_by),
            acknowledge_note: a.acknowledge_note.clone().unwrap_or_default(),
            condition_cleared_at: ts(a.condition_cleared_at),
            escalated_at: ts(a.escalated_at),
            resolved_at: ts(a.resolved_at),
            resolved_by: id(a.resolved_by),
            resolution: a.resolution.clone().unwrap_or_default(),
            suppressed: a.suppressed.is_some(),
            suppressed_reason: a
                .suppressed
                .as_ref()
                .map(|p| p.reason.clone())
                .unwrap_or_default(),
            suppressed_until: ts(a.suppressed.as_ref().map(|p| p.until)),
        }
    }
}

/// An alert as carried in an event snapshot (`alert_events.alert`).
pub fn from_snapshot(v: &serde_json::Value) -> pb::Alert {
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    pb::Alert {
        id: s("id"),
        patient_id: s("patient_id"),
        team_id: s("team_id"),
        rule_id: s("rule_id"),
        rule_version: s("rule_version"),
        severity: s("severity"),
        state: s("state"),
        title: s("title"),
        detail_json: v.get("detail").map(|d| d.to_string()).unwrap_or_default(),
        retrospective: v
            .get("retrospective")
            .and_then(|x| x.as_bool())
            .unwrap_or(false),
        urgent: v.get("urgent").and_then(|x| x.as_bool()).unwrap_or(false),
        breach_count: v
            .get("breach_count")
            .and_then(|x| x.as_i64())
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(0),
        first_breach_at: s("first_breach_at"),
        latest_breach_at: s("latest_breach_at"),
        opened_at: s("opened_at"),
        updated_at: s("updated_at"),
        acknowledged_at: s("acknowledged_at"),
        acknowledged_by: s("acknowledged_by"),
        acknowledge_note: s("acknowledge_note"),
        condition_cleared_at: s("condition_cleared_at"),
        escalated_at: s("escalated_at"),
        resolved_at: s("resolved_at"),
        resolved_by: s("resolved_by"),
        resolution: s("resolution"),
        suppressed: v
            .get("suppressed")
            .and_then(|x| x.as_bool())
            .unwrap_or(false),
        suppressed_reason: s("suppressed_reason"),
        suppressed_until: s("suppressed_until"),
    }
}
