//! Rule settings. Defaults come from the guidelines each rule cites; a care team may
//! override any of them, and a patient's own settings override the team's. Overrides are
//! stored as JSON objects holding only the keys they change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// NICE NG136 1.5: severe hypertension, systolic ≥ 180 or diastolic ≥ 120 mmHg.
    pub bp_severe_systolic: f64,
    pub bp_severe_diastolic: f64,
    /// NICE NG136 stage 2 clinic threshold, ≥ 160/100 mmHg.
    pub bp_high_systolic: f64,
    pub bp_high_diastolic: f64,
    /// Hypotension: systolic < 90 mmHg (amber).
    pub bp_low_systolic: f64,
    /// Systolic below this is red. A local choice (no guideline sets it): on by default at
    /// 80 mmHg; `null` turns it off.
    pub bp_very_low_systolic: Option<f64>,
    /// NICE NG136 1.4.22: home average targets, below 135/85 under 80 years, below 145/85
    /// at 80 and over.
    pub bp_home_target_under_80: [f64; 2],
    pub bp_home_target_80_and_over: [f64; 2],
    /// NICE NG136 1.2.7: at least 4 days, first day discarded; twice-daily duplicate
    /// readings give at least 12 readings after the first day.
    pub bp_home_min_days: u32,
    pub bp_home_min_readings: u32,
    pub bp_home_window_days: u32,
    /// ADA Standards of Care, section 6: level 1 hypoglycaemia < 70 mg/dL (3.9 mmol/L),
    /// level 2 < 54 mg/dL (3.0 mmol/L), level 2 hyperglycaemia > 250 mg/dL (13.9 mmol/L).
    /// Each pair is stated in both units and compared in the reading's own unit.
    pub glucose_l1_low_mmol_l: f64,
    pub glucose_l1_low_mg_dl: f64,
    pub glucose_l2_low_mmol_l: f64,
    pub glucose_l2_low_mg_dl: f64,
    pub glucose_l2_high_mmol_l: f64,
    pub glucose_l2_high_mg_dl: f64,
    /// NHS blood ketone guidance: 1.6–3.0 mmol/L contact the diabetes team (amber),
    /// above 3.0 mmol/L urgent (red).
    pub ketones_amber_mmol_l: f64,
    pub ketones_red_above_mmol_l: f64,
    /// 2019 International Consensus on Time in Range: over 14 days, time in range
    /// 3.9–10.0 mmol/L ≥ 70 %, below 3.9 < 4 %, below 3.0 < 1 %, assessed only when at least
    /// 70 % of expected readings exist.
    pub cgm_window_days: u32,
    pub cgm_range_low_mmol_l: f64,
    pub cgm_range_high_mmol_l: f64,
    pub cgm_range_low_mg_dl: f64,
    pub cgm_range_high_mg_dl: f64,
    pub cgm_tir_min_percent: f64,
    pub cgm_below_l1_max_percent: f64,
    pub cgm_below_l2_max_percent: f64,
    pub cgm_min_coverage_percent: f64,
    pub cgm_interval_minutes: u32,
    /// Hours without a reading, by device kind, before an adherence alert.
    pub missing_after_hours: BTreeMap<String, u32>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            bp_severe_systolic: 180.0,
            bp_severe_diastolic: 120.0,
            bp_high_systolic: 160.0,
            bp_high_diastolic: 100.0,
            bp_low_systolic: 90.0,
            bp_very_low_systolic: Some(80.0),
            bp_home_target_under_80: [135.0, 85.0],
            bp_home_target_80_and_over: [145.0, 85.0],
            bp_home_min_days: 4,
            bp_home_min_readings: 12,
            bp_home_window_days: 7,
            glucose_l1_low_mmol_l: 3.9,
            glucose_l1_low_mg_dl: 70.0,
            glucose_l2_low_mmol_l: 3.0,
            glucose_l2_low_mg_dl: 54.0,
            glucose_l2_high_mmol_l: 13.9,
            glucose_l2_high_mg_dl: 250.0,
            ketones_amber_mmol_l: 1.6,
            ketones_red_above_mmol_l: 3.0,
            cgm_window_days: 14,
            cgm_range_low_mmol_l: 3.9,
            cgm_range_high_mmol_l: 10.0,
            cgm_range_low_mg_dl: 70.0,
            cgm_range_high_mg_dl: 180.0,
            cgm_tir_min_percent: 70.0,
            cgm_below_l1_max_percent: 4.0,
            cgm_below_l2_max_percent: 1.0,
            cgm_min_coverage_percent: 70.0,
            cgm_interval_minutes: 5,
            missing_after_hours: [
                ("bp_monitor", 72),
                ("glucose_meter", 72),
                ("cgm", 6),
                ("scale", 168),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("threshold settings: {0}")]
pub struct SettingsError(String);

impl Thresholds {
    /// Defaults, then each override object in turn (team, then patient).
    pub fn resolve<'a>(
        overrides: impl IntoIterator<Item = &'a Value>,
    ) -> Result<Self, SettingsError> {
        let mut merged = match serde_json::to_value(Self::default()) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        for layer in overrides {
            let Value::Object(layer) = layer else {
                return Err(SettingsError("an override must be a JSON object".into()));
            };
            for (key, value) in layer {
                match (merged.get_mut(key), value) {
                    (Some(Value::Object(base)), Value::Object(inner)) => {
                        base.extend(inner.clone());
                    }
                    _ => {
                        merged.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        serde_json::from_value(Value::Object(merged)).map_err(|e| SettingsError(e.to_string()))
    }

    /// Checks an override object on its own (unknown keys, wrong types) before it is stored.
    pub fn check_override(value: &Value) -> Result<(), SettingsError> {
        Self::resolve([value]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patient_settings_override_team_settings_which_override_defaults() {
        let team = json!({ "bp_high_systolic": 150.0, "missing_after_hours": { "cgm": 12 } });
        let patient = json!({ "bp_high_systolic": 170.0, "bp_very_low_systolic": null });
        let t = Thresholds::resolve([&team, &patient]).expect("valid");
        assert_eq!(t.bp_high_systolic, 170.0);
        assert_eq!(t.bp_very_low_systolic, None);
        assert_eq!(t.missing_after_hours["cgm"], 12);
        assert_eq!(
            t.missing_after_hours["scale"], 168,
            "other kinds keep their default"
        );
        assert_eq!(t.bp_severe_systolic, 180.0);
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused() {
        assert!(Thresholds::check_override(&json!({ "bp_high_sistolic": 150 })).is_err());
        assert!(Thresholds::check_override(&json!({ "bp_high_systolic": "high" })).is_err());
        assert!(Thresholds::check_override(&json!([1, 2])).is_err());
        assert!(Thresholds::check_override(&json!({})).is_ok());
    }
}
