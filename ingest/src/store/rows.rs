//! The row shape of `readings` as the writer inserts it, shared with `vigil bench` so the
//! storage ceiling it measures is the writer's own statement on the same columns.

use time::OffsetDateTime;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::domain::Reading;

/// The columns `INSERT_READINGS` fills, in order, for COPY.
pub const COLUMNS: &str = "key, measured_at, patient_id, device_id, type, value, unit, systolic, \
    diastolic, pulse, original_value, original_unit, range, specimen, meal, posture, arm, \
    flags, utc_offset_minutes, received_at, channel, late, fingerprint";

/// Their types, for binary COPY.
pub const COLUMN_TYPES: [Type; 23] = [
    Type::UUID,
    Type::TIMESTAMPTZ,
    Type::UUID,
    Type::UUID,
    Type::TEXT,
    Type::FLOAT8,
    Type::TEXT,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT_ARRAY,
    Type::INT2,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::BOOL,
    Type::UUID,
];

/// Idempotent batch insert: rows whose key or fingerprint is already stored insert nothing
/// and are missing from the returned keys.
pub const INSERT_READINGS: &str = "
INSERT INTO readings (key, measured_at, patient_id, device_id, type, value, unit, systolic,
    diastolic, pulse, original_value, original_unit, range, specimen, meal, posture, arm,
    flags, utc_offset_minutes, received_at, channel, late, fingerprint)
SELECT key, measured_at, patient_id, device_id, type, value, unit, systolic,
    diastolic, pulse, original_value, original_unit, range, specimen, meal, posture, arm,
    CASE WHEN flags = '' THEN '{}'::text[] ELSE string_to_array(flags, ',') END,
    utc_offset_minutes, received_at, channel, late, fingerprint
FROM unnest($1::uuid[], $2::timestamptz[], $3::uuid[], $4::uuid[], $5::text[], $6::float8[],
    $7::text[], $8::float8[], $9::float8[], $10::float8[], $11::float8[], $12::text[],
    $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[],
    $19::int2[], $20::timestamptz[], $21::text[], $22::bool[], $23::uuid[])
    AS t(key, measured_at, patient_id, device_id, type, value, unit, systolic,
    diastolic, pulse, original_value, original_unit, range, specimen, meal, posture, arm,
    flags, utc_offset_minutes, received_at, channel, late, fingerprint)
ON CONFLICT DO NOTHING
RETURNING key, measured_at";

/// Column arrays for one `unnest` insert.
#[derive(Default)]
pub struct ReadingRows<'a> {
    pub readings: Vec<&'a Reading>,
    pub key: Vec<Uuid>,
    pub measured_at: Vec<OffsetDateTime>,
    pub patient_id: Vec<Uuid>,
    device_id: Vec<Uuid>,
    kind: Vec<&'a str>,
    value: Vec<Option<f64>>,
    unit: Vec<&'a str>,
    systolic: Vec<Option<f64>>,
    diastolic: Vec<Option<f64>>,
    pulse: Vec<Option<f64>>,
    original_value: Vec<Option<f64>>,
    original_unit: Vec<&'a str>,
    range: Vec<Option<&'a str>>,
    specimen: Vec<Option<&'a str>>,
    meal: Vec<Option<&'a str>>,
    posture: Vec<Option<&'a str>>,
    arm: Vec<Option<&'a str>>,
    flags: Vec<String>,
    utc_offset_minutes: Vec<i16>,
    received_at: Vec<OffsetDateTime>,
    channel: Vec<&'a str>,
    late: Vec<bool>,
    fingerprint: Vec<Uuid>,
}

impl<'a> ReadingRows<'a> {
    pub fn push(&mut self, r: &'a Reading, patient: Uuid, fingerprint: Uuid) {
        self.readings.push(r);
        self.key.push(r.key);
        self.measured_at.push(r.measured_at);
        self.patient_id.push(patient);
        self.device_id.push(r.device_id);
        self.kind.push(r.kind);
        self.value.push(r.value);
        self.unit.push(r.unit);
        self.systolic.push(r.systolic);
        self.diastolic.push(r.diastolic);
        self.pulse.push(r.pulse);
        self.original_value.push(r.original_value);
        self.original_unit.push(&r.original_unit);
        self.range.push(r.range);
        self.specimen.push(r.specimen);
        self.meal.push(r.meal);
        self.posture.push(r.posture);
        self.arm.push(r.arm);
        // Flags are validated snake_case words, so a comma cannot occur inside one.
        self.flags.push(r.flags.join(","));
        self.utc_offset_minutes.push(r.utc_offset_minutes);
        self.received_at.push(r.received_at);
        self.channel.push(r.channel.as_str());
        self.late.push(r.late);
        self.fingerprint.push(fingerprint);
    }

    pub fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 23] {
        [
            &self.key,
            &self.measured_at,
            &self.patient_id,
            &self.device_id,
            &self.kind,
            &self.value,
            &self.unit,
            &self.systolic,
            &self.diastolic,
            &self.pulse,
            &self.original_value,
            &self.original_unit,
            &self.range,
            &self.specimen,
            &self.meal,
            &self.posture,
            &self.arm,
            &self.flags,
            &self.utc_offset_minutes,
            &self.received_at,
            &self.channel,
            &self.late,
            &self.fingerprint,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<&str> {
        s.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .collect()
    }

    #[test]
    fn copy_columns_are_the_insert_columns() {
        let insert = INSERT_READINGS
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(columns, _)| columns)
            .expect("a column list");
        assert_eq!(words(insert), words(COLUMNS));
        assert_eq!(words(COLUMNS).len(), COLUMN_TYPES.len());
    }
}
