//! The reading types Vigil accepts, their units and plausibility limits.
//!
//! Every type but blood pressure is a single quantity, described by one [`QuantityType`]
//! entry: adding SpO2 or temperature means adding an entry here, not a new table.
//!
//! Plausibility limits come from home-device measuring ranges (glucose meters 10–600 mg/dL,
//! some to 900; CGMs 40–500 mg/dL; oscillometric cuffs 0–299 mmHg) and are stated in each
//! accepted unit, so a limit never drifts through conversion. Severe but possible values
//! (systolic 250 mmHg, glucose 1.7 mmol/L) are inside the limits: they must alert, not vanish.

/// One accepted unit of a quantity type.
#[derive(Debug)]
pub struct UnitSpec {
    /// As written by the sender: a UCUM code, or one of the aliases `mmHg` and `bpm`.
    pub code: &'static str,
    /// Multiply by this to get the canonical unit.
    pub to_canonical: f64,
    /// Inclusive plausibility limits in this unit.
    pub min: f64,
    pub max: f64,
}

#[derive(Debug)]
pub struct QuantityType {
    pub name: &'static str,
    /// UCUM code of the stored value.
    pub canonical_unit: &'static str,
    pub units: &'static [UnitSpec],
    /// When false, a reading without a unit is taken to be in the first listed unit; types
    /// whose units differ in scale (mg/dL vs mmol/L, kg vs lb) must say which.
    pub unit_required: bool,
    /// Devices may report "LO"/"HI" (below/above measuring range) instead of a number.
    pub censorable: bool,
    pub has_specimen: bool,
    pub has_meal: bool,
}

/// mg/dL per mmol/L for glucose (molar mass 180.156 g/mol).
pub const GLUCOSE_MGDL_PER_MMOLL: f64 = 18.0156;

pub const BLOOD_PRESSURE: &str = "blood_pressure";

/// Units accepted for blood pressure values.
pub const PRESSURE_UNITS: &[&str] = &["mm[Hg]", "mmHg"];
pub const PRESSURE_CANONICAL_UNIT: &str = "mm[Hg]";
pub const SYSTOLIC_LIMITS: (f64, f64) = (40.0, 299.0);
pub const DIASTOLIC_LIMITS: (f64, f64) = (20.0, 200.0);
pub const PULSE_LIMITS: (f64, f64) = (20.0, 300.0);

pub const QUANTITY_TYPES: &[QuantityType] = &[
    QuantityType {
        name: "blood_glucose",
        unit_required: true,
        canonical_unit: "mmol/L",
        units: &[
            UnitSpec {
                code: "mmol/L",
                to_canonical: 1.0,
                min: 0.5,
                max: 50.0,
            },
            UnitSpec {
                code: "mg/dL",
                to_canonical: 1.0 / GLUCOSE_MGDL_PER_MMOLL,
                min: 10.0,
                max: 900.0,
            },
        ],
        censorable: true,
        has_specimen: true,
        has_meal: true,
    },
    QuantityType {
        name: "heart_rate",
        unit_required: false,
        canonical_unit: "/min",
        units: &[
            UnitSpec {
                code: "/min",
                to_canonical: 1.0,
                min: PULSE_LIMITS.0,
                max: PULSE_LIMITS.1,
            },
            UnitSpec {
                code: "{beats}/min",
                to_canonical: 1.0,
                min: PULSE_LIMITS.0,
                max: PULSE_LIMITS.1,
            },
            UnitSpec {
                code: "bpm",
                to_canonical: 1.0,
                min: PULSE_LIMITS.0,
                max: PULSE_LIMITS.1,
            },
        ],
        censorable: false,
        has_specimen: false,
        has_meal: false,
    },
    QuantityType {
        name: "blood_ketones",
        unit_required: false,
        canonical_unit: "mmol/L",
        // Blood beta-hydroxybutyrate meters read 0.0–8.0 mmol/L and show HI above.
        units: &[UnitSpec {
            code: "mmol/L",
            to_canonical: 1.0,
            min: 0.0,
            max: 10.0,
        }],
        censorable: true,
        has_specimen: false,
        has_meal: false,
    },
    QuantityType {
        name: "body_weight",
        unit_required: true,
        canonical_unit: "kg",
        units: &[
            UnitSpec {
                code: "kg",
                to_canonical: 1.0,
                min: 2.0,
                max: 500.0,
            },
            UnitSpec {
                code: "g",
                to_canonical: 0.001,
                min: 2000.0,
                max: 500_000.0,
            },
            UnitSpec {
                code: "[lb_av]",
                to_canonical: 0.453_592_37,
                min: 4.4,
                max: 1102.0,
            },
        ],
        censorable: false,
        has_specimen: false,
        has_meal: false,
    },
];

pub fn quantity_type(name: &str) -> Option<&'static QuantityType> {
    QUANTITY_TYPES.iter().find(|t| t.name == name)
}

/// Every type name, for error messages and documentation.
pub fn type_names() -> Vec<&'static str> {
    std::iter::once(BLOOD_PRESSURE)
        .chain(QUANTITY_TYPES.iter().map(|t| t.name))
        .collect()
}

impl QuantityType {
    pub fn unit(&self, code: &str) -> Option<&'static UnitSpec> {
        self.units.iter().find(|u| u.code == code)
    }

    pub fn unit_codes(&self) -> Vec<&'static str> {
        self.units.iter().map(|u| u.code).collect()
    }
}

pub const SPECIMENS: &[&str] = &["capillary", "interstitial"];
pub const MEALS: &[&str] = &["fasting", "before_meal", "after_meal", "bedtime", "random"];
pub const RANGES: &[&str] = &["low", "high"];
pub const POSTURES: &[&str] = &["sitting", "standing", "lying"];
pub const ARMS: &[&str] = &["left", "right"];
