//! Protobuf ⇄ domain. A gRPC reading maps field by field onto the same [`RawReading`] the
//! MQTT JSON decodes to, so both front-ends share one validation path.

use bytes::Bytes;
use vigil_proto::v1::{self as pb, ReadingStatus};

use crate::{
    domain::{
        RawReading,
        validate::{Context, validate},
    },
    submission::{Item, Outcome, PayloadFormat, Quarantined},
};

fn text(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<pb::Reading> for RawReading {
    fn from(r: pb::Reading) -> Self {
        Self {
            id: text(r.id),
            kind: r.r#type,
            measured_at: r.measured_at,
            systolic: r.systolic,
            diastolic: r.diastolic,
            pulse: r.pulse,
            value: r.value,
            unit: text(r.unit),
            specimen: text(r.specimen),
            meal: text(r.meal),
            range: text(r.range),
            posture: text(r.posture),
            arm: text(r.arm),
            flags: r.flags,
        }
    }
}

/// The inverse mapping, for clients built on this crate (`vigil simulate`, `vigil bench`).
impl From<RawReading> for pb::Reading {
    fn from(r: RawReading) -> Self {
        Self {
            id: r.id.unwrap_or_default(),
            r#type: r.kind,
            measured_at: r.measured_at,
            systolic: r.systolic,
            diastolic: r.diastolic,
            pulse: r.pulse,
            value: r.value,
            unit: r.unit.unwrap_or_default(),
            specimen: r.specimen.unwrap_or_default(),
            meal: r.meal.unwrap_or_default(),
            range: r.range.unwrap_or_default(),
            posture: r.posture.unwrap_or_default(),
            arm: r.arm.unwrap_or_default(),
            flags: r.flags,
        }
    }
}

pub fn item(reading: pb::Reading, ctx: &Context<'_>) -> Item {
    let raw = RawReading::from(reading);
    match validate(&raw, ctx) {
        Ok(reading) => Item::Reading(Box::new(reading)),
        Err(refusal) => Item::Refused(Quarantined {
            refusal,
            // JSON rather than protobuf bytes: readable in `quarantine list`, replayable
            // through the same path as MQTT readings.
            payload: Bytes::from(serde_json::to_vec(&raw).unwrap_or_default()),
            format: PayloadFormat::Reading,
            key: None,
        }),
    }
}

pub fn result(index: usize, outcome: &Outcome) -> pb::ReadingResult {
    let (status, reason, message) = match outcome {
        Outcome::Accepted { .. } => (ReadingStatus::Accepted, String::new(), String::new()),
        Outcome::Duplicate { .. } => (
            ReadingStatus::Duplicate,
            "duplicate".to_string(),
            "already stored; nothing changed".to_string(),
        ),
        Outcome::Rejected {
            reason, message, ..
        } => (
            ReadingStatus::Rejected,
            reason.code().to_string(),
            message.clone(),
        ),
    };
    pb::ReadingResult {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        id: outcome.key().map(|k| k.to_string()).unwrap_or_default(),
        status: status as i32,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_reading_survives_a_round_trip_through_protobuf() {
        let raw = RawReading {
            id: Some("661b33c5-4e24-5411-9612-bb2e50535bc2".into()),
            kind: "blood_pressure".into(),
            measured_at: "2026-11-22T07:30:00+01:00".into(),
            systolic: Some(152.0),
            diastolic: Some(94.0),
            pulse: Some(71.0),
            unit: Some("mm[Hg]".into()),
            posture: Some("sitting".into()),
            arm: Some("left".into()),
            flags: vec!["irregular_pulse".into()],
            ..Default::default()
        };
        assert_eq!(RawReading::from(pb::Reading::from(raw.clone())), raw);
    }
}
