//! Per-reading rules: blood pressure, glucose and ketones. Glucose is compared in the unit
//! it was measured in, against the guideline's threshold in that unit: 70 mg/dL is not a
//! level 1 hypo, 69 mg/dL is; 3.9 mmol/L is not, 3.8 is.

use serde_json::json;
use time::OffsetDateTime;

use super::{
    BP_HIGH, BP_LOW, Breach, GLUCOSE_HIGH, GLUCOSE_LOW, KETONES_HIGH, Rule, Severity, Thresholds,
};

/// Badness of a LO/HI reading: worse than any measured value, and finite and modest so it
/// survives a round trip through `jsonb` (PostgreSQL prints `f64::MAX` as a 309-digit
/// integer, which JSON readers refuse).
const OUT_OF_RANGE_BADNESS: f64 = 1.0e6;

/// What the rules need from a stored reading.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub kind: String,
    pub measured_at: Option<OffsetDateTime>,
    /// Canonical value (mmol/L for glucose and ketones).
    pub value: Option<f64>,
    pub original_value: Option<f64>,
    pub original_unit: String,
    pub systolic: Option<f64>,
    pub diastolic: Option<f64>,
    pub range: Option<String>,
    pub flags: Vec<String>,
}

fn breach(
    rule: &Rule,
    severity: Severity,
    title: String,
    badness: f64,
    detail: serde_json::Value,
) -> Breach {
    Breach {
        rule_id: rule.id.to_string(),
        rule_version: rule.versioned(),
        severity,
        title,
        badness,
        detail,
    }
}

/// Device flags that make a blood-pressure reading less reliable; carried on the alert.
const BP_QUALITY_FLAGS: &[&str] = &[
    "irregular_pulse",
    "body_movement",
    "cuff_fit",
    "improper_position",
];

/// Every per-reading rule's breach for this reading.
pub fn evaluate(obs: &Observation, t: &Thresholds) -> Vec<Breach> {
    match obs.kind.as_str() {
        "blood_pressure" => blood_pressure(obs, t),
        "blood_glucose" => glucose(obs, t),
        "blood_ketones" => ketones(obs, t).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Whether `rule_id`'s condition still holds for this reading; `None` when the reading
/// says nothing about that rule (another type).
pub fn still_breached(rule_id: &str, obs: &Observation, t: &Thresholds) -> Option<bool> {
    let relevant = matches!(
        (rule_id, obs.kind.as_str()),
        ("bp.high" | "bp.low", "blood_pressure")
            | ("glucose.low" | "glucose.high", "blood_glucose")
            | ("ketones.high", "blood_ketones")
    );
    relevant.then(|| evaluate(obs, t).iter().any(|b| b.rule_id == rule_id))
}

fn blood_pressure(obs: &Observation, t: &Thresholds) -> Vec<Breach> {
    let (Some(sys), Some(dia)) = (obs.systolic, obs.diastolic) else {
        return Vec::new();
    };
    let quality: Vec<&String> = obs
        .flags
        .iter()
        .filter(|f| BP_QUALITY_FLAGS.contains(&f.as_str()))
        .collect();
    let caveat = if quality.is_empty() {
        String::new()
    } else {
        format!(
            " (device flagged: {}; reading may be inaccurate)",
            quality
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut out = Vec::new();
    let severe = sys >= t.bp_severe_systolic || dia >= t.bp_severe_diastolic;
    let high = sys >= t.bp_high_systolic || dia >= t.bp_high_diastolic;
    if severe || high {
        let (severity, title, guidance) = if severe {
            (
                Severity::Red,
                format!("Severe blood pressure {sys:.0}/{dia:.0} mmHg{caveat}"),
                "Home reading at or above the NICE NG136 severe threshold: a triage flag, not a \
                 diagnosis. Ask the patient to repeat the reading after 5 minutes seated and \
                 check for red-flag symptoms (chest pain, confusion, breathlessness, visual \
                 disturbance); same-day assessment if present.",
            )
        } else {
            (
                Severity::Amber,
                format!("High blood pressure {sys:.0}/{dia:.0} mmHg{caveat}"),
                "Home reading at or above 160/100 mmHg (NICE NG136 stage 2 threshold). Ask for \
                 a repeat reading and review treatment.",
            )
        };
        out.push(breach(
            &BP_HIGH,
            severity,
            title,
            (sys / t.bp_severe_systolic).max(dia / t.bp_severe_diastolic),
            json!({
                "systolic": sys, "diastolic": dia, "unit": "mm[Hg]", "flags": quality,
                "thresholds": {
                    "severe": [t.bp_severe_systolic, t.bp_severe_diastolic],
                    "high": [t.bp_high_systolic, t.bp_high_diastolic]
                },
                "guidance": guidance, "repeat_reading_requested": true,
            }),
        ));
    }
    let very_low = t.bp_very_low_systolic.is_some_and(|v| sys < v);
    if very_low || sys < t.bp_low_systolic {
        let severity = if very_low {
            Severity::Red
        } else {
            Severity::Amber
        };
        out.push(breach(
            &BP_LOW,
            severity,
            format!("Low blood pressure {sys:.0}/{dia:.0} mmHg{caveat}"),
            -sys,
            json!({
                "systolic": sys, "diastolic": dia, "unit": "mm[Hg]", "flags": quality,
                "thresholds": { "low": t.bp_low_systolic, "very_low": t.bp_very_low_systolic },
                "guidance": "Ask about dizziness or falls and repeat the reading; review antihypertensive treatment.",
            }),
        ));
    }
    out
}

/// The glucose value in the unit it was measured in, with that unit's thresholds.
struct GlucoseInUnit {
    value: f64,
    unit: &'static str,
    l1_low: f64,
    l2_low: f64,
    l2_high: f64,
}

fn in_measured_unit(obs: &Observation, t: &Thresholds) -> Option<GlucoseInUnit> {
    if obs.original_unit == "mg/dL" {
        Some(GlucoseInUnit {
            value: obs.original_value?,
            unit: "mg/dL",
            l1_low: t.glucose_l1_low_mg_dl,
            l2_low: t.glucose_l2_low_mg_dl,
            l2_high: t.glucose_l2_high_mg_dl,
        })
    } else {
        Some(GlucoseInUnit {
            value: obs.value?,
            unit: "mmol/L",
            l1_low: t.glucose_l1_low_mmol_l,
            l2_low: t.glucose_l2_low_mmol_l,
            l2_high: t.glucose_l2_high_mmol_l,
        })
    }
}

fn glucose(obs: &Observation, t: &Thresholds) -> Vec<Breach> {
    let thresholds = json!({
        "level_1_low": { "mmol/L": t.glucose_l1_low_mmol_l, "mg/dL": t.glucose_l1_low_mg_dl },
        "level_2_low": { "mmol/L": t.glucose_l2_low_mmol_l, "mg/dL": t.glucose_l2_low_mg_dl },
        "level_2_high": { "mmol/L": t.glucose_l2_high_mmol_l, "mg/dL": t.glucose_l2_high_mg_dl },
    });
    match obs.range.as_deref() {
        Some("low") => {
            return vec![breach(
                &GLUCOSE_LOW,
                Severity::Red,
                "Glucose below the meter's measuring range (LO)".into(),
                OUT_OF_RANGE_BADNESS,
                json!({ "range": "low", "bound": obs.original_value, "unit": obs.original_unit,
                        "thresholds": thresholds,
                        "guidance": "A LO result is a potential emergency: contact the patient now." }),
            )];
        }
        Some("high") => {
            return vec![breach(
                &GLUCOSE_HIGH,
                Severity::Amber,
                "Glucose above the meter's measuring range (HI)".into(),
                OUT_OF_RANGE_BADNESS,
                json!({ "range": "high", "bound": obs.original_value, "unit": obs.original_unit,
                        "thresholds": thresholds,
                        "guidance": "Ask the patient to check blood ketones and follow sick-day rules." }),
            )];
        }
        _ => {}
    }
    let Some(g) = in_measured_unit(obs, t) else {
        return Vec::new();
    };
    let (value, unit) = (g.value, g.unit);
    let shown = if unit == "mg/dL" {
        format!("{value:.0} mg/dL")
    } else {
        format!("{value:.1} mmol/L")
    };
    if value < g.l2_low {
        vec![breach(
            &GLUCOSE_LOW,
            Severity::Red,
            format!("Level 2 hypoglycaemia {shown}"),
            g.l1_low - value,
            json!({ "value": value, "unit": unit, "level": 2, "thresholds": thresholds,
                    "guidance": "Clinically significant hypoglycaemia: contact the patient now." }),
        )]
    } else if value < g.l1_low {
        vec![breach(
            &GLUCOSE_LOW,
            Severity::Amber,
            format!("Level 1 hypoglycaemia {shown}"),
            g.l1_low - value,
            json!({ "value": value, "unit": unit, "level": 1, "thresholds": thresholds,
                    "guidance": "Review hypoglycaemia treatment and causes." }),
        )]
    } else if value > g.l2_high {
        vec![breach(
            &GLUCOSE_HIGH,
            Severity::Amber,
            format!("Level 2 hyperglycaemia {shown}"),
            value - g.l2_high,
            json!({ "value": value, "unit": unit, "level": 2, "thresholds": thresholds,
                    "guidance": "Ask the patient to check blood ketones." }),
        )]
    } else {
        Vec::new()
    }
}

fn ketones(obs: &Observation, t: &Thresholds) -> Option<Breach> {
    let thresholds =
        json!({ "amber": t.ketones_amber_mmol_l, "red_above": t.ketones_red_above_mmol_l });
    if obs.range.as_deref() == Some("high") {
        return Some(breach(
            &KETONES_HIGH,
            Severity::Red,
            "Blood ketones above the meter's measuring range (HI)".into(),
            OUT_OF_RANGE_BADNESS,
            json!({ "range": "high", "unit": "mmol/L", "thresholds": thresholds,
                    "guidance": "Risk of diabetic ketoacidosis: urgent assessment." }),
        ));
    }
    let value = obs.value?;
    let (severity, guidance) = if value > t.ketones_red_above_mmol_l {
        (
            Severity::Red,
            "Above 3.0 mmol/L: risk of diabetic ketoacidosis, urgent assessment.",
        )
    } else if value >= t.ketones_amber_mmol_l {
        (
            Severity::Amber,
            "1.6–3.0 mmol/L: contact the diabetes team; recheck within 2 hours.",
        )
    } else {
        return None;
    };
    Some(breach(
        &KETONES_HIGH,
        severity,
        format!("Blood ketones {value:.1} mmol/L"),
        value,
        json!({ "value": value, "unit": "mmol/L", "thresholds": thresholds, "guidance": guidance }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Thresholds {
        Thresholds::default()
    }

    fn bp(sys: f64, dia: f64) -> Observation {
        Observation {
            kind: "blood_pressure".into(),
            systolic: Some(sys),
            diastolic: Some(dia),
            original_unit: "mm[Hg]".into(),
            ..Default::default()
        }
    }

    fn mgdl(v: f64) -> Observation {
        Observation {
            kind: "blood_glucose".into(),
            value: Some(v / 18.0156),
            original_value: Some(v),
            original_unit: "mg/dL".into(),
            ..Default::default()
        }
    }

    fn mmol(v: f64) -> Observation {
        Observation {
            kind: "blood_glucose".into(),
            value: Some(v),
            original_value: Some(v),
            original_unit: "mmol/L".into(),
            ..Default::default()
        }
    }

    fn ketone(v: f64) -> Observation {
        Observation {
            kind: "blood_ketones".into(),
            value: Some(v),
            original_value: Some(v),
            original_unit: "mmol/L".into(),
            ..Default::default()
        }
    }

    /// (rule id, severity) of every breach.
    fn verdict(obs: &Observation) -> Vec<(String, Severity)> {
        evaluate(obs, &t())
            .into_iter()
            .map(|b| (b.rule_id, b.severity))
            .collect()
    }

    fn one(rule: &str, severity: Severity) -> Vec<(String, Severity)> {
        vec![(rule.to_string(), severity)]
    }

    #[test]
    fn blood_pressure_severe_boundaries_are_inclusive_per_ng136() {
        assert_eq!(verdict(&bp(180.0, 90.0)), one("bp.high", Severity::Red));
        assert_eq!(verdict(&bp(179.0, 119.0)), one("bp.high", Severity::Amber));
        assert_eq!(verdict(&bp(150.0, 120.0)), one("bp.high", Severity::Red));
        assert_eq!(verdict(&bp(150.0, 119.0)), one("bp.high", Severity::Amber));
    }

    #[test]
    fn blood_pressure_high_boundaries() {
        assert_eq!(verdict(&bp(160.0, 80.0)), one("bp.high", Severity::Amber));
        assert_eq!(verdict(&bp(159.0, 99.0)), vec![]);
        assert_eq!(verdict(&bp(130.0, 100.0)), one("bp.high", Severity::Amber));
    }

    #[test]
    fn blood_pressure_low_boundaries() {
        assert_eq!(verdict(&bp(90.0, 60.0)), vec![]);
        assert_eq!(verdict(&bp(89.0, 60.0)), one("bp.low", Severity::Amber));
        assert_eq!(verdict(&bp(80.0, 50.0)), one("bp.low", Severity::Amber));
        assert_eq!(verdict(&bp(79.0, 50.0)), one("bp.low", Severity::Red));
        let off = Thresholds {
            bp_very_low_systolic: None,
            ..t()
        };
        let b = evaluate(&bp(70.0, 40.0), &off);
        assert_eq!(
            b[0].severity,
            Severity::Amber,
            "red threshold is a local choice"
        );
    }

    #[test]
    fn a_severe_home_reading_asks_for_a_repeat_and_carries_device_flags() {
        let mut obs = bp(186.0, 100.0);
        obs.flags = vec!["irregular_pulse".into(), "battery_low".into()];
        let b = &evaluate(&obs, &t())[0];
        assert!(b.title.contains("irregular_pulse"), "{}", b.title);
        assert_eq!(b.detail["repeat_reading_requested"], true);
        assert_eq!(b.detail["flags"], json!(["irregular_pulse"]));
        assert!(
            b.detail["guidance"]
                .as_str()
                .unwrap_or("")
                .contains("triage")
        );
    }

    #[test]
    fn glucose_boundaries_in_mg_dl() {
        assert_eq!(verdict(&mgdl(70.0)), vec![]);
        assert_eq!(verdict(&mgdl(69.0)), one("glucose.low", Severity::Amber));
        assert_eq!(verdict(&mgdl(54.0)), one("glucose.low", Severity::Amber));
        assert_eq!(verdict(&mgdl(53.0)), one("glucose.low", Severity::Red));
        assert_eq!(verdict(&mgdl(250.0)), vec![]);
        assert_eq!(verdict(&mgdl(251.0)), one("glucose.high", Severity::Amber));
    }

    #[test]
    fn glucose_boundaries_in_mmol_l() {
        assert_eq!(verdict(&mmol(3.9)), vec![]);
        assert_eq!(verdict(&mmol(3.8)), one("glucose.low", Severity::Amber));
        assert_eq!(verdict(&mmol(3.0)), one("glucose.low", Severity::Amber));
        assert_eq!(verdict(&mmol(2.9)), one("glucose.low", Severity::Red));
        assert_eq!(verdict(&mmol(13.9)), vec![]);
        assert_eq!(verdict(&mmol(14.0)), one("glucose.high", Severity::Amber));
    }

    #[test]
    fn seventy_mg_dl_is_not_converted_into_a_hypo() {
        // 70 mg/dL is 3.886 mmol/L, below 3.9: converting first would raise a false alert.
        let obs = mgdl(70.0);
        assert!(obs.value.is_some_and(|v| v < 3.9));
        assert_eq!(verdict(&obs), vec![]);
    }

    #[test]
    fn meter_lo_is_red_and_hi_is_amber_whatever_the_value() {
        let mut lo = mgdl(20.0);
        lo.range = Some("low".into());
        assert_eq!(verdict(&lo), one("glucose.low", Severity::Red));
        let mut hi = mmol(33.3);
        hi.range = Some("high".into());
        assert_eq!(verdict(&hi), one("glucose.high", Severity::Amber));
    }

    #[test]
    fn ketone_boundaries() {
        assert_eq!(verdict(&ketone(1.5)), vec![]);
        assert_eq!(verdict(&ketone(1.6)), one("ketones.high", Severity::Amber));
        assert_eq!(verdict(&ketone(3.0)), one("ketones.high", Severity::Amber));
        assert_eq!(verdict(&ketone(3.1)), one("ketones.high", Severity::Red));
        let mut hi = ketone(8.0);
        hi.range = Some("high".into());
        assert_eq!(verdict(&hi), one("ketones.high", Severity::Red));
    }

    #[test]
    fn clearing_needs_a_reading_of_the_same_type() {
        assert_eq!(still_breached("glucose.low", &mmol(5.5), &t()), Some(false));
        assert_eq!(still_breached("glucose.low", &mmol(3.5), &t()), Some(true));
        assert_eq!(still_breached("glucose.low", &bp(120.0, 80.0), &t()), None);
        assert_eq!(
            still_breached("bp.high", &bp(140.0, 85.0), &t()),
            Some(false)
        );
        assert_eq!(
            still_breached("ketones.high", &ketone(0.4), &t()),
            Some(false)
        );
    }

    #[test]
    fn other_types_raise_nothing() {
        let hr = Observation {
            kind: "heart_rate".into(),
            value: Some(190.0),
            ..Default::default()
        };
        assert!(evaluate(&hr, &t()).is_empty());
    }
}
