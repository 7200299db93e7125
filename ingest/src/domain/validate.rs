//! Turns a [`RawReading`] into a [`Reading`], or says precisely why not.

use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

use super::{
    kinds::{self, QuantityType},
    reading::{Channel, RawReading, Reading, derived_key},
    reject::{Refusal, RejectReason as R},
};
use crate::config::ValidationSettings;

/// What is known about a reading besides its own fields.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub device_id: Uuid,
    pub channel: Channel,
    pub received_at: OffsetDateTime,
    pub rules: &'a ValidationSettings,
}

const MAX_FLAGS: usize = 16;
const MAX_FLAG_LEN: usize = 40;

pub fn validate(raw: &RawReading, ctx: &Context<'_>) -> Result<Reading, Refusal> {
    let (measured_at, utc_offset_minutes) = parse_time(&raw.measured_at, ctx)?;
    let key = match raw.id.as_deref() {
        Some(id) => Uuid::parse_str(id)
            .map_err(|_| Refusal::new(R::InvalidId, format!("`id` {id:?} is not a UUID")))?,
        None => derived_key(ctx.device_id, &raw.kind, measured_at),
    };
    let flags = check_flags(&raw.flags)?;
    let late = ctx.received_at - measured_at
        > Duration::seconds(i64::try_from(ctx.rules.late_after_secs).unwrap_or(i64::MAX));
    let mut reading = Reading {
        key,
        device_id: ctx.device_id,
        kind: "",
        measured_at,
        utc_offset_minutes,
        received_at: ctx.received_at,
        channel: ctx.channel,
        late,
        value: None,
        unit: "",
        systolic: None,
        diastolic: None,
        pulse: None,
        original_value: None,
        original_unit: String::new(),
        specimen: None,
        meal: None,
        range: None,
        posture: None,
        arm: None,
        flags,
    };
    if raw.kind == kinds::BLOOD_PRESSURE {
        blood_pressure(raw, &mut reading)?;
    } else if let Some(qt) = kinds::quantity_type(&raw.kind) {
        quantity(raw, qt, &mut reading)?;
    } else {
        return Err(Refusal::new(
            R::UnknownType,
            format!(
                "unknown reading type {:?}; expected one of {}",
                raw.kind,
                kinds::type_names().join(", ")
            ),
        ));
    }
    Ok(reading)
}

fn parse_time(text: &str, ctx: &Context<'_>) -> Result<(OffsetDateTime, i16), Refusal> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        Refusal::new(
            R::InvalidTimestamp,
            format!(
                "`measured_at` {text:?} is not an RFC 3339 timestamp with an offset, \
                 e.g. 2026-11-22T07:30:00+00:00"
            ),
        )
    })?;
    let offset_minutes = parsed.offset().whole_minutes();
    // An extreme offset can carry a valid local time outside the representable UTC range.
    let utc = parsed
        .checked_to_offset(time::UtcOffset::UTC)
        .ok_or_else(|| {
            Refusal::new(
                R::InvalidTimestamp,
                format!("`measured_at` {text:?} is outside the supported range"),
            )
        })?;
    let utc = utc.replace_nanosecond(0).unwrap_or(utc);
    let skew = Duration::seconds(i64::try_from(ctx.rules.max_future_skew_secs).unwrap_or(0));
    if utc > ctx.received_at + skew {
        return Err(Refusal::new(
            R::FutureTimestamp,
            format!(
                "`measured_at` {text:?} is more than {}s after the time it was received; \
                 check the device clock",
                ctx.rules.max_future_skew_secs
            ),
        ));
    }
    if utc < ctx.received_at - Duration::days(i64::from(ctx.rules.max_age_days)) {
        return Err(Refusal::new(
            R::StaleTimestamp,
            format!(
                "`measured_at` {text:?} is more than {} days old; check the device clock",
                ctx.rules.max_age_days
            ),
        ));
    }
    Ok((utc, offset_minutes))
}

fn check_flags(flags: &[String]) -> Result<Vec<String>, Refusal> {
    if flags.len() > MAX_FLAGS {
        return Err(Refusal::new(
            R::InvalidField,
            format!("`flags` has {} entries; at most {MAX_FLAGS}", flags.len()),
        ));
    }
    for flag in flags {
        let well_formed = !flag.is_empty()
            && flag.len() <= MAX_FLAG_LEN
            && flag.starts_with(|c: char| c.is_ascii_lowercase())
            && flag
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !well_formed {
            return Err(Refusal::new(
                R::InvalidField,
                format!("flag {flag:?} must be snake_case, at most {MAX_FLAG_LEN} characters"),
            ));
        }
    }
    let mut flags = flags.to_vec();
    flags.sort();
    flags.dedup();
    Ok(flags)
}

fn finite(name: &str, v: Option<f64>) -> Result<Option<f64>, Refusal> {
    match v {
        Some(x) if !x.is_finite() => Err(Refusal::new(
            R::NonFiniteValue,
            format!("`{name}` must be a finite number"),
        )),
        other => Ok(other),
    }
}

fn within(name: &str, v: f64, (min, max): (f64, f64), unit: &str) -> Result<(), Refusal> {
    if v < min || v > max {
        return Err(Refusal::new(
            R::ImplausibleValue,
            format!("`{name}` {v} {unit} is outside the plausible range {min}–{max} {unit}"),
        ));
    }
    Ok(())
}

fn required(name: &str, kind: &str, v: Option<f64>) -> Result<f64, Refusal> {
    v.ok_or_else(|| Refusal::new(R::MissingField, format!("`{name}` is required for {kind}")))
}

fn not_for(kind: &str, present: &[(&str, bool)]) -> Result<(), Refusal> {
    match present.iter().find(|(_, p)| *p) {
        Some((name, _)) => Err(Refusal::new(
            R::InvalidField,
            format!("`{name}` does not apply to {kind}"),
        )),
        None => Ok(()),
    }
}

fn one_of(
    name: &str,
    value: Option<&str>,
    allowed: &'static [&'static str],
) -> Result<Option<&'static str>, Refusal> {
    let Some(value) = value else { return Ok(None) };
    allowed
        .iter()
        .find(|a| **a == value)
        .copied()
        .map(Some)
        .ok_or_else(|| {
            Refusal::new(
                R::InvalidField,
                format!("`{name}` {value:?} is not one of {}", allowed.join(", ")),
            )
        })
}

fn blood_pressure(raw: &RawReading, r: &mut Reading) -> Result<(), Refusal> {
    let kind = kinds::BLOOD_PRESSURE;
    not_for(
        kind,
        &[
            ("value", raw.value.is_some()),
            ("specimen", raw.specimen.is_some()),
            ("meal", raw.meal.is_some()),
            ("range", raw.range.is_some()),
        ],
    )?;
    let unit = raw
        .unit
        .as_deref()
        .unwrap_or(kinds::PRESSURE_CANONICAL_UNIT);
    if !kinds::PRESSURE_UNITS.contains(&unit) {
        return Err(Refusal::new(
            R::UnknownUnit,
            format!(
                "unit {unit:?} is not accepted for {kind}; use {}",
                kinds::PRESSURE_UNITS.join(" or ")
            ),
        ));
    }
    let systolic = required("systolic", kind, finite("systolic", raw.systolic)?)?;
    let diastolic = required("diastolic", kind, finite("diastolic", raw.diastolic)?)?;
    let pulse = finite("pulse", raw.pulse)?;
    within("systolic", systolic, kinds::SYSTOLIC_LIMITS, unit)?;
    within("diastolic", diastolic, kinds::DIASTOLIC_LIMITS, unit)?;
    if let Some(p) = pulse {
        within("pulse", p, kinds::PULSE_LIMITS, "/min")?;
    }
    if systolic <= diastolic {
        return Err(Refusal::new(
            R::SystolicNotAboveDiastolic,
            format!("systolic {systolic} must be above diastolic {diastolic}"),
        ));
    }
    r.kind = kind;
    r.unit = kinds::PRESSURE_CANONICAL_UNIT;
    r.systolic = Some(systolic);
    r.diastolic = Some(diastolic);
    r.pulse = pulse;
    r.original_unit = unit.to_string();
    r.posture = one_of("posture", raw.posture.as_deref(), kinds::POSTURES)?;
    r.arm = one_of("arm", raw.arm.as_deref(), kinds::ARMS)?;
    Ok(())
}

fn quantity(raw: &RawReading, qt: &'static QuantityType, r: &mut Reading) -> Result<(), Refusal> {
    let kind = qt.name;
    not_for(
        kind,
        &[
            ("systolic", raw.systolic.is_some()),
            ("diastolic", raw.diastolic.is_some()),
            ("pulse", raw.pulse.is_some()),
            ("posture", raw.posture.is_some()),
            ("arm", raw.arm.is_some()),
            ("specimen", !qt.has_specimen && raw.specimen.is_some()),
            ("meal", !qt.has_meal && raw.meal.is_some()),
            ("range", !qt.censorable && raw.range.is_some()),
        ],
    )?;
    let unit = match raw.unit.as_deref() {
        Some(code) => qt.unit(code).ok_or_else(|| {
            Refusal::new(
                R::UnknownUnit,
                format!(
                    "unit {code:?} is not accepted for {kind}; use one of {}",
                    qt.unit_codes().join(", ")
                ),
            )
        })?,
        None if qt.unit_required => {
            return Err(Refusal::new(
                R::MissingField,
                format!(
                    "`unit` is required for {kind}: one of {}",
                    qt.unit_codes().join(", ")
                ),
            ));
        }
        None => &qt.units[0],
    };
    if raw.specimen.as_deref() == Some("control_solution") {
        return Err(Refusal::new(
            R::ControlSolution,
            "control-solution tests check the meter, not the patient, and are not stored as readings",
        ));
    }
    let range = one_of("range", raw.range.as_deref(), kinds::RANGES)?;
    let value = finite("value", raw.value)?;
    match (value, range) {
        (None, None) => {
            return Err(Refusal::new(
                R::MissingField,
                format!(
                    "`value` is required for {kind} (or `range` low/high when the device showed LO/HI)"
                ),
            ));
        }
        // A LO/HI result may carry the device's limit; it is a bound, not a measurement,
        // and is kept even outside the plausibility limits.
        (Some(_), Some(_)) | (None, Some(_)) => {}
        (Some(v), None) => within("value", v, (unit.min, unit.max), unit.code)?,
    }
    r.kind = kind;
    r.unit = qt.canonical_unit;
    r.value = value.map(|v| v * unit.to_canonical);
    r.original_value = value;
    r.original_unit = unit.code.to_string();
    r.range = range;
    r.specimen = one_of("specimen", raw.specimen.as_deref(), kinds::SPECIMENS)?;
    r.meal = one_of("meal", raw.meal.as_deref(), kinds::MEALS)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-22 12:00:00 UTC);

    fn rules() -> ValidationSettings {
        ValidationSettings::default()
    }

    fn check(raw: RawReading) -> Result<Reading, Refusal> {
        let rules = rules();
        let ctx = Context {
            device_id: Uuid::nil(),
            channel: Channel::Mqtt,
            received_at: NOW,
            rules: &rules,
        };
        validate(&raw, &ctx)
    }

    fn glucose(value: f64, unit: &str) -> RawReading {
        RawReading {
            kind: "blood_glucose".into(),
            measured_at: "2026-11-22T11:55:00Z".into(),
            value: Some(value),
            unit: Some(unit.into()),
            ..Default::default()
        }
    }

    fn bp(systolic: f64, diastolic: f64) -> RawReading {
        RawReading {
            kind: "blood_pressure".into(),
            measured_at: "2026-11-22T07:30:00+01:00".into(),
            systolic: Some(systolic),
            diastolic: Some(diastolic),
            unit: Some("mmHg".into()),
            ..Default::default()
        }
    }

    fn reason(raw: RawReading) -> R {
        check(raw).expect_err("should be refused").reason
    }

    #[test]
    fn mg_dl_glucose_is_stored_in_mmol_l_with_the_original_kept() {
        let r = check(glucose(90.0, "mg/dL")).expect("valid");
        assert_eq!(r.unit, "mmol/L");
        assert!((r.value.expect("value") - 90.0 / 18.0156).abs() < 1e-9);
        assert_eq!(r.original_value, Some(90.0));
        assert_eq!(r.original_unit, "mg/dL");
    }

    #[test]
    fn glucose_plausibility_limits_hold_in_each_unit() {
        assert!(check(glucose(10.0, "mg/dL")).is_ok());
        assert!(check(glucose(900.0, "mg/dL")).is_ok());
        assert_eq!(reason(glucose(9.9, "mg/dL")), R::ImplausibleValue);
        assert_eq!(reason(glucose(900.1, "mg/dL")), R::ImplausibleValue);
        assert!(check(glucose(0.5, "mmol/L")).is_ok());
        assert!(check(glucose(50.0, "mmol/L")).is_ok());
        assert_eq!(reason(glucose(0.4, "mmol/L")), R::ImplausibleValue);
        assert_eq!(reason(glucose(50.1, "mmol/L")), R::ImplausibleValue);
    }

    #[test]
    fn a_severe_but_possible_value_is_accepted() {
        assert!(check(glucose(1.7, "mmol/L")).is_ok());
        assert!(check(bp(250.0, 140.0)).is_ok());
    }

    #[test]
    fn glucose_needs_a_unit_and_rejects_unknown_ones() {
        let mut raw = glucose(5.0, "mmol/L");
        raw.unit = None;
        assert_eq!(reason(raw), R::MissingField);
        assert_eq!(reason(glucose(5.0, "mmol/l")), R::UnknownUnit);
        assert_eq!(reason(glucose(5.0, "g/L")), R::UnknownUnit);
    }

    #[test]
    fn lo_and_hi_results_are_kept_not_dropped() {
        let mut raw = glucose(20.0, "mg/dL");
        raw.value = None;
        raw.range = Some("low".into());
        let r = check(raw).expect("LO is a reading");
        assert_eq!(r.range, Some("low"));
        assert_eq!(r.value, None);
        let mut raw = glucose(600.0, "mg/dL");
        raw.range = Some("high".into());
        let r = check(raw).expect("HI with its bound");
        assert_eq!(r.range, Some("high"));
        assert_eq!(r.original_value, Some(600.0));
    }

    #[test]
    fn control_solution_is_not_a_patient_reading() {
        let mut raw = glucose(6.0, "mmol/L");
        raw.specimen = Some("control_solution".into());
        assert_eq!(reason(raw), R::ControlSolution);
    }

    #[test]
    fn blood_pressure_limits_and_order() {
        assert!(check(bp(40.0, 20.0)).is_ok());
        assert!(check(bp(299.0, 200.0)).is_ok());
        assert_eq!(reason(bp(39.0, 20.0)), R::ImplausibleValue);
        assert_eq!(reason(bp(300.0, 100.0)), R::ImplausibleValue);
        assert_eq!(reason(bp(120.0, 19.0)), R::ImplausibleValue);
        assert_eq!(reason(bp(120.0, 120.0)), R::SystolicNotAboveDiastolic);
        assert_eq!(reason(bp(80.0, 90.0)), R::SystolicNotAboveDiastolic);
    }

    #[test]
    fn blood_pressure_keeps_its_offset_and_flags() {
        let mut raw = bp(150.0, 95.0);
        raw.flags = vec!["irregular_pulse".into(), "body_movement".into()];
        raw.pulse = Some(72.0);
        let r = check(raw).expect("valid");
        assert_eq!(r.measured_at, datetime!(2026-11-22 06:30:00 UTC));
        assert_eq!(r.utc_offset_minutes, 60);
        assert_eq!(r.flags, vec!["body_movement", "irregular_pulse"]);
        assert_eq!(r.original_unit, "mmHg");
        assert_eq!(r.unit, "mm[Hg]");
    }

    #[test]
    fn a_missing_blood_pressure_unit_means_mm_hg_but_kpa_is_refused() {
        let mut raw = bp(120.0, 80.0);
        raw.unit = None;
        assert_eq!(check(raw).expect("valid").original_unit, "mm[Hg]");
        let mut raw = bp(16.0, 10.0);
        raw.unit = Some("kPa".into());
        assert_eq!(reason(raw), R::UnknownUnit);
    }

    #[test]
    fn non_finite_values_are_refused() {
        assert_eq!(reason(glucose(f64::NAN, "mmol/L")), R::NonFiniteValue);
        assert_eq!(reason(bp(f64::INFINITY, 80.0)), R::NonFiniteValue);
    }

    #[test]
    fn timestamps_need_an_offset_and_a_sane_clock() {
        let mut raw = glucose(5.0, "mmol/L");
        raw.measured_at = "2026-11-22T11:00:00".into();
        assert_eq!(reason(raw.clone()), R::InvalidTimestamp);
        raw.measured_at = "2026-11-22T12:05:00Z".into();
        assert!(check(raw.clone()).is_ok(), "exactly the allowed skew");
        raw.measured_at = "2026-11-22T12:05:01Z".into();
        assert_eq!(reason(raw.clone()), R::FutureTimestamp);
        raw.measured_at = "1970-01-01T00:00:00Z".into();
        assert_eq!(reason(raw.clone()), R::StaleTimestamp);
        raw.measured_at = "9999-12-31T23:59:59-23:59".into();
        assert_eq!(reason(raw), R::InvalidTimestamp, "beyond year 9999 in UTC");
    }

    #[test]
    fn old_readings_are_flagged_late() {
        let mut raw = glucose(5.0, "mmol/L");
        raw.measured_at = "2026-11-22T11:00:00Z".into();
        assert!(!check(raw.clone()).expect("valid").late, "exactly one hour");
        raw.measured_at = "2026-11-22T10:59:59Z".into();
        assert!(check(raw).expect("valid").late);
    }

    #[test]
    fn derived_keys_ignore_sub_second_precision_and_client_ids_win() {
        let mut a = glucose(5.0, "mmol/L");
        a.measured_at = "2026-11-22T11:55:00.250Z".into();
        let b = glucose(5.0, "mmol/L");
        assert_eq!(check(a).expect("a").key, check(b.clone()).expect("b").key);
        let mut c = b;
        c.id = Some("0b6f6c1e-1f7a-4d8c-9a55-5f1d2c3b4a59".into());
        assert_eq!(
            check(c.clone()).expect("c").key.to_string(),
            "0b6f6c1e-1f7a-4d8c-9a55-5f1d2c3b4a59"
        );
        c.id = Some("not-a-uuid".into());
        assert_eq!(reason(c), R::InvalidId);
    }

    #[test]
    fn the_same_measurement_in_two_units_has_one_fingerprint() {
        let patient = Uuid::from_u128(7);
        let a = check(glucose(100.0, "mg/dL")).expect("a");
        let b = check(glucose(5.6, "mmol/L")).expect("b");
        assert_eq!(a.fingerprint(patient), b.fingerprint(patient));
        let c = check(glucose(5.8, "mmol/L")).expect("c");
        assert_ne!(a.fingerprint(patient), c.fingerprint(patient));
        assert_ne!(a.fingerprint(patient), a.fingerprint(Uuid::from_u128(8)));
    }

    #[test]
    fn fields_of_another_type_are_refused() {
        let mut raw = glucose(5.0, "mmol/L");
        raw.systolic = Some(120.0);
        assert_eq!(reason(raw), R::InvalidField);
        let mut raw = bp(120.0, 80.0);
        raw.value = Some(1.0);
        assert_eq!(reason(raw), R::InvalidField);
        let raw = RawReading {
            kind: "heart_rate".into(),
            measured_at: "2026-11-22T11:55:00Z".into(),
            value: Some(60.0),
            range: Some("low".into()),
            ..Default::default()
        };
        assert_eq!(reason(raw), R::InvalidField);
    }

    #[test]
    fn other_types_convert_to_their_canonical_unit() {
        let weight = RawReading {
            kind: "body_weight".into(),
            measured_at: "2026-11-22T08:00:00Z".into(),
            value: Some(200.0),
            unit: Some("[lb_av]".into()),
            ..Default::default()
        };
        let r = check(weight).expect("valid");
        assert!((r.value.expect("kg") - 90.718_474).abs() < 1e-6);
        let hr = RawReading {
            kind: "heart_rate".into(),
            measured_at: "2026-11-22T08:00:00Z".into(),
            value: Some(64.0),
            unit: Some("bpm".into()),
            ..Default::default()
        };
        let r = check(hr).expect("valid");
        assert_eq!(
            (r.value, r.unit, r.original_unit.as_str()),
            (Some(64.0), "/min", "bpm")
        );
        let ketones = RawReading {
            kind: "blood_ketones".into(),
            measured_at: "2026-11-22T08:00:00Z".into(),
            value: Some(0.0),
            ..Default::default()
        };
        assert_eq!(check(ketones).expect("valid").unit, "mmol/L");
    }

    #[test]
    fn unknown_types_and_bad_vocabulary_are_refused() {
        let mut raw = glucose(5.0, "mmol/L");
        raw.kind = "spo2".into();
        assert_eq!(reason(raw), R::UnknownType);
        let mut raw = glucose(5.0, "mmol/L");
        raw.meal = Some("brunch".into());
        assert_eq!(reason(raw), R::InvalidField);
        let mut raw = glucose(5.0, "mmol/L");
        raw.flags = vec!["Bad Flag".into()];
        assert_eq!(reason(raw), R::InvalidField);
    }
}
