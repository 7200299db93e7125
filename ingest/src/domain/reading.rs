//! The one domain type every front-end produces and the writer stores.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Mqtt,
    Grpc,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mqtt => "mqtt",
            Self::Grpc => "grpc",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mqtt" => Some(Self::Mqtt),
            "grpc" => Some(Self::Grpc),
            _ => None,
        }
    }
}

/// A reading as it travels on the wire (the MQTT JSON object, or a gRPC `Reading` mapped
/// field by field). Nothing in it has been checked yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReading {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub measured_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systolic: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diastolic: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulse: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specimen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// A validated reading, with values in the canonical unit of its type and the value and
/// unit as sent kept beside them.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Idempotency key: the client's `id`, or derived from device, type and `measured_at`.
    pub key: Uuid,
    pub device_id: Uuid,
    pub kind: &'static str,
    /// UTC, whole seconds (see docs/contract.md: deduplication works on seconds).
    pub measured_at: OffsetDateTime,
    /// The offset the device reported, so "time of day" can be shown in the patient's clock.
    pub utc_offset_minutes: i16,
    pub received_at: OffsetDateTime,
    pub channel: Channel,
    /// Measured long before it was received (a backfill).
    pub late: bool,
    pub value: Option<f64>,
    pub unit: &'static str,
    pub systolic: Option<f64>,
    pub diastolic: Option<f64>,
    pub pulse: Option<f64>,
    pub original_value: Option<f64>,
    pub original_unit: String,
    pub specimen: Option<&'static str>,
    pub meal: Option<&'static str>,
    pub range: Option<&'static str>,
    pub posture: Option<&'static str>,
    pub arm: Option<&'static str>,
    pub flags: Vec<String>,
}

impl Reading {
    /// The wire form of this reading, in the units it was sent in; what quarantine keeps
    /// when a valid reading is refused later (for instance, its device is unknown).
    pub fn to_raw(&self) -> RawReading {
        let offset = time::UtcOffset::from_whole_seconds(i32::from(self.utc_offset_minutes) * 60)
            .unwrap_or(time::UtcOffset::UTC);
        let measured_at = self
            .measured_at
            .to_offset(offset)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        RawReading {
            id: Some(self.key.to_string()),
            kind: self.kind.to_string(),
            measured_at,
            systolic: self.systolic,
            diastolic: self.diastolic,
            pulse: self.pulse,
            value: self.original_value,
            unit: Some(self.original_unit.clone()),
            specimen: self.specimen.map(str::to_string),
            meal: self.meal.map(str::to_string),
            range: self.range.map(str::to_string),
            posture: self.posture.map(str::to_string),
            arm: self.arm.map(str::to_string),
            flags: self.flags.clone(),
        }
    }

    /// Identifies the same measurement whoever relayed it: patient, type, second and
    /// values (0.1 in the canonical unit), but not device, channel or client id.
    pub fn fingerprint(&self, patient_id: Uuid) -> Uuid {
        fn tenths(v: Option<f64>) -> String {
            v.map(|v| format!("{:.1}", v)).unwrap_or_default()
        }
        let material = format!(
            "{patient_id}|{}|{}|{}|{}|{}|{}|{}",
            self.kind,
            self.measured_at.unix_timestamp(),
            tenths(self.value),
            tenths(self.systolic),
            tenths(self.diastolic),
            tenths(self.pulse),
            self.range.unwrap_or(""),
        );
        Uuid::new_v5(&FINGERPRINT_NAMESPACE, material.as_bytes())
    }
}

/// Namespace of derived idempotency keys (UUIDv5 of device, type and second).
pub const KEY_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_0c3e_8a52_4c1d_9a7e_2f41_d3c8_0b11);
/// Namespace of content fingerprints.
pub const FINGERPRINT_NAMESPACE: Uuid = Uuid::from_u128(0x0e9d_52aa_7c3b_4f60_8d21_9b5e_a4f7_6c22);

pub fn derived_key(device_id: Uuid, kind: &str, measured_at: OffsetDateTime) -> Uuid {
    let material = format!("{device_id}|{kind}|{}", measured_at.unix_timestamp());
    Uuid::new_v5(&KEY_NAMESPACE, material.as_bytes())
}
