//! The rule pack. Every rule is a pure function of readings and patient settings, names its
//! source, and is tested at its boundaries in the unit its guideline uses.
//!
//! | rule | source | severity |
//! | --- | --- | --- |
//! | `bp.high` | NICE NG136 1.5 (severe ≥ 180/120), stage 2 (≥ 160/100) | red / amber |
//! | `bp.low` | hypotension, systolic < 90; < 80 local choice | amber / red |
//! | `bp.home_average` | NICE NG136 1.2.7 protocol, 1.4.22 targets | amber |
//! | `glucose.low` | ADA Standards of Care §6, level 1 / level 2; meter LO | amber / red |
//! | `glucose.high` | ADA Standards of Care §6, level 2 hyperglycaemia; meter HI | amber |
//! | `ketones.high` | NHS blood ketone guidance | amber / red |
//! | `cgm.time_in_range` | 2019 International Consensus on Time in Range | amber |
//! | `data.missing.<device kind>` | adherence (local settings) | low |

pub mod readings;
pub mod thresholds;
pub mod windowed;

use serde::Serialize;

pub use readings::{Observation, evaluate, still_breached};
pub use thresholds::Thresholds;

/// Version of the rule pack as a whole; each rule also carries its own version.
pub const PACK_VERSION: &str = "2026.11";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Amber,
    Red,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Amber => "amber",
            Self::Red => "red",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "low" => Some(Self::Low),
            "amber" => Some(Self::Amber),
            "red" => Some(Self::Red),
            _ => None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    pub version: u32,
    pub source: &'static str,
}

impl Rule {
    /// `pack/rule@version`, as stored on each alert.
    pub fn versioned(&self) -> String {
        format!("{PACK_VERSION}/{}@{}", self.id, self.version)
    }
}

pub const BP_HIGH: Rule = Rule {
    id: "bp.high",
    version: 1,
    source: "NICE NG136 (2019, updated 2023) 1.5.1–1.5.2 severe hypertension; stage 2 thresholds",
};
pub const BP_LOW: Rule = Rule {
    id: "bp.low",
    version: 1,
    source: "Hypotension, systolic < 90 mmHg; red threshold is a local setting",
};
pub const BP_HOME_AVERAGE: Rule = Rule {
    id: "bp.home_average",
    version: 1,
    source: "NICE NG136 1.2.7 (home monitoring protocol) and 1.4.22 (home targets)",
};
pub const GLUCOSE_LOW: Rule = Rule {
    id: "glucose.low",
    version: 1,
    source: "ADA Standards of Care in Diabetes, section 6: level 1 (< 70 mg/dL, 3.9 mmol/L) and level 2 (< 54 mg/dL, 3.0 mmol/L) hypoglycaemia",
};
pub const GLUCOSE_HIGH: Rule = Rule {
    id: "glucose.high",
    version: 1,
    source: "ADA Standards of Care in Diabetes, section 6: level 2 hyperglycaemia (> 250 mg/dL, 13.9 mmol/L)",
};
pub const KETONES_HIGH: Rule = Rule {
    id: "ketones.high",
    version: 1,
    source: "NHS blood ketone guidance: 1.6–3.0 mmol/L contact the diabetes team; above 3.0 mmol/L urgent",
};
pub const CGM_TIME_IN_RANGE: Rule = Rule {
    id: "cgm.time_in_range",
    version: 1,
    source: "Battelino et al., International Consensus on Time in Range, Diabetes Care 2019;42(8):1593–1603",
};
pub const DATA_MISSING: Rule = Rule {
    id: "data.missing",
    version: 1,
    source: "Adherence: hours without a reading per device kind (care-team setting)",
};

pub const ALL: [&Rule; 8] = [
    &BP_HIGH,
    &BP_LOW,
    &BP_HOME_AVERAGE,
    &GLUCOSE_LOW,
    &GLUCOSE_HIGH,
    &KETONES_HIGH,
    &CGM_TIME_IN_RANGE,
    &DATA_MISSING,
];

/// One rule's verdict on one reading or window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breach {
    /// The rule id; windowed adherence rules append the device kind (`data.missing.cgm`).
    pub rule_id: String,
    pub rule_version: String,
    pub severity: Severity,
    pub title: String,
    /// Larger is worse; decides which reading is the alert's worst.
    pub badness: f64,
    /// Values, thresholds used, flags and guidance, as stored on the alert.
    pub detail: serde_json::Value,
}
