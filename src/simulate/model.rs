//! Synthetic patients for `vigil simulate` and `vigil bench`: who they are, which devices
//! they own and what those devices measure, as a pure function of a seed.
//!
//! Patients live in UTC: their local time is UTC, so a 07:00 reading is taken at 07:00Z.
//!
//! Every reading a device takes on one UTC day comes from randomness seeded by (seed,
//! patient, device, day) alone, and slow changes (blood pressure drifting over a week) are
//! smoothed from the seeds of the preceding days instead of being carried between calls. Any
//! window therefore gives the same readings however it is cut into pieces, which is what lets
//! the simulator send a backfill, then live readings a second at a time, without gaps or
//! repeats.

use rand::{Rng, SeedableRng, seq::index};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::Serialize;
use serde_json::{Value, json};
use time::{Date, Duration, OffsetDateTime, UtcOffset, macros::date};

const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
const MG_DL_PER_MMOL_L: f64 = 18.0156;
/// Ages are drawn as of this date, so a cohort does not change with the year it is built in.
const AGE_REFERENCE: Date = date!(2026 - 07 - 01);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    Hypertension,
    Type2Diabetes,
    Type1Diabetes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    BpMonitor,
    GlucoseMeter,
    Cgm,
    KetoneMeter,
    Scale,
}

impl DeviceKind {
    /// The device registry's name for the kind, as `vigil admin device add` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BpMonitor => "bp_monitor",
            Self::GlucoseMeter => "glucose_meter",
            Self::Cgm => "cgm",
            Self::KetoneMeter => "ketone_meter",
            Self::Scale => "scale",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub kind: DeviceKind,
    /// Sampling interval of a CGM (5 or 1 minutes); devices used by hand have none.
    pub interval: Option<Duration>,
}

/// The unit a patient's meter or CGM displays: mmol/L in the UK, mg/dL for some imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GlucoseUnit {
    #[serde(rename = "mmol/L")]
    MmolL,
    #[serde(rename = "mg/dL")]
    MgDl,
}

impl GlucoseUnit {
    /// The number the device shows: mmol/L to 0.1, mg/dL whole.
    fn displayed(self, mmol_per_l: f64) -> f64 {
        match self {
            Self::MmolL => tenths(mmol_per_l),
            Self::MgDl => (mmol_per_l * MG_DL_PER_MMOL_L).round(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Specimen {
    Capillary,
    Interstitial,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[expect(
    clippy::enum_variant_names,
    reason = "the contract's own words: before_meal, after_meal"
)]
pub enum Meal {
    Fasting,
    BeforeMeal,
    AfterMeal,
    Bedtime,
    Random,
}

/// The device showed LO or HI instead of a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Range {
    Low,
    High,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measurement {
    BloodPressure {
        systolic: f64,
        diastolic: f64,
        pulse: f64,
        irregular_pulse: bool,
    },
    /// `mmol_per_l` is the modelled value even when `range` says the device could only show
    /// LO or HI; the wire form then carries the device's limit instead.
    Glucose {
        mmol_per_l: f64,
        unit: GlucoseUnit,
        specimen: Specimen,
        meal: Option<Meal>,
        range: Option<Range>,
    },
    Ketones {
        mmol_per_l: f64,
    },
    Weight {
        kg: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimReading {
    /// Index into [`Profile::devices`].
    pub device: usize,
    /// UTC, whole seconds.
    pub measured_at: OffsetDateTime,
    pub measurement: Measurement,
}

/// A scripted event, so a demonstration shows alerts within a minute instead of waiting for
/// the model to produce one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Episode {
    /// Glucose reaches about 2.8 mmol/L within 15 minutes of `start`, stays below 3.0 for
    /// about half an hour, then recovers. Shown by the CGM, or else by meter tests.
    Hypoglycaemia { start: OffsetDateTime },
    /// A blood-pressure session at `at` of about 186/114 then 182/112, replacing any regular
    /// session within 10 minutes.
    SevereHypertension { at: OffsetDateTime },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub index: usize,
    pub condition: Condition,
    pub date_of_birth: Date,
    pub devices: Vec<Device>,
    physiology: Physiology,
    episodes: Vec<Episode>,
}

/// What makes one patient's readings theirs. Every patient gets every parameter, drawn in a
/// fixed order, though only those of the devices they own are used.
#[derive(Debug, Clone, PartialEq)]
struct Physiology {
    systolic: f64,
    diastolic: f64,
    morning_surge: f64,
    pulse: f64,
    severe_spikes: bool,
    low_spells: bool,
    fasting_glucose: f64,
    /// On insulin or a sulfonylurea, so fingerstick tests are sometimes low.
    hypo_prone: bool,
    tests_per_day: i64,
    tags_meals: bool,
    glucose_unit: GlucoseUnit,
    cgm_baseline: f64,
    meal_response: f64,
    night_hypo_chance: f64,
    exercise_chance: f64,
    /// Seconds after each interval boundary at which the sensor samples, so a cohort's CGMs
    /// do not all report on the same second.
    cgm_phase: i64,
    weight_kg: f64,
}

/// About 45% hypertension, 30% type 2 diabetes testing by fingerstick (40% of them with a
/// BP monitor too) and 25% type 1 diabetes on a CGM (a third of those sampling every minute)
/// with a ketone meter; 30% (15% of type 1) also weigh themselves. Patient `i` depends only
/// on `(seed, i)`, so a larger cohort extends a smaller one.
pub fn cohort(seed: u64, patients: usize) -> Vec<Profile> {
    (0..patients).map(|i| Profile::generate(seed, i)).collect()
}

impl Profile {
    fn generate(seed: u64, index: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, Stream::Profile, &[index as u64]));
        let used_by_hand = |kind| Device {
            kind,
            interval: None,
        };
        let roll: f64 = rng.random();
        let (condition, mut devices) = if roll < 0.45 {
            (
                Condition::Hypertension,
                vec![used_by_hand(DeviceKind::BpMonitor)],
            )
        } else if roll < 0.75 {
            let mut devices = vec![used_by_hand(DeviceKind::GlucoseMeter)];
            if rng.random_bool(0.4) {
                devices.push(used_by_hand(DeviceKind::BpMonitor));
            }
            (Condition::Type2Diabetes, devices)
        } else {
            let minutes = if rng.random_bool(0.35) { 1 } else { 5 };
            let cgm = Device {
                kind: DeviceKind::Cgm,
                interval: Some(Duration::minutes(minutes)),
            };
            (
                Condition::Type1Diabetes,
                vec![cgm, used_by_hand(DeviceKind::KetoneMeter)],
            )
        };
        let scale_share = if condition == Condition::Type1Diabetes {
            0.15
        } else {
            0.3
        };
        if rng.random_bool(scale_share) {
            devices.push(used_by_hand(DeviceKind::Scale));
        }
        let age: i64 = match condition {
            Condition::Hypertension => rng.random_range(45..=90),
            Condition::Type2Diabetes => rng.random_range(40..=88),
            Condition::Type1Diabetes => rng.random_range(30..=75),
        };
        let date_of_birth =
            AGE_REFERENCE - Duration::days(age * 365 + age / 4 + rng.random_range(0..365));
        let systolic = normal(&mut rng, 145.0, 12.0).clamp(120.0, 168.0);
        let severe_spikes = rng.random_bool(0.1);
        let physiology = Physiology {
            systolic,
            diastolic: normal(&mut rng, 88.0, 7.0).clamp(65.0, systolic - 35.0),
            morning_surge: rng.random_range(5.0..10.0),
            pulse: normal(&mut rng, 72.0, 7.0).clamp(58.0, 90.0),
            severe_spikes,
            low_spells: !severe_spikes && rng.random_bool(0.05),
            fasting_glucose: normal(&mut rng, 7.5, 1.5).clamp(5.2, 12.0),
            hypo_prone: rng.random_bool(0.35),
            tests_per_day: rng.random_range(1..=4),
            tags_meals: rng.random_bool(0.85),
            glucose_unit: if rng.random_bool(0.2) {
                GlucoseUnit::MgDl
            } else {
                GlucoseUnit::MmolL
            },
            cgm_baseline: normal(&mut rng, 7.5, 0.8).clamp(6.0, 9.5),
            meal_response: rng.random_range(0.7..1.2),
            night_hypo_chance: rng.random_range(0.04..0.2),
            exercise_chance: rng.random_range(0.1..0.4),
            cgm_phase: rng.random_range(0..5 * MINUTE),
            weight_kg: normal(&mut rng, 84.0, 15.0).clamp(48.0, 150.0),
        };
        Self {
            index,
            condition,
            date_of_birth,
            devices,
            physiology,
            episodes: Vec::new(),
        }
    }

    /// Every reading this patient's devices take in [from, to), sorted by time.
    pub fn readings(&self, seed: u64, from: OffsetDateTime, to: OffsetDateTime) -> Vec<SimReading> {
        let (from, to) = (from.to_offset(UtcOffset::UTC), to.to_offset(UtcOffset::UTC));
        let mut out = Vec::new();
        if from >= to {
            return out;
        }
        let first = from.date();
        let last = (to - Duration::nanoseconds(1)).date();
        let window = (ceil_secs(from), ceil_secs(to));
        for n in 0..=(last - first).whole_days() {
            let day = first + Duration::days(n);
            for (device, spec) in self.devices.iter().enumerate() {
                match spec.kind {
                    DeviceKind::BpMonitor => self.bp_day(seed, device, day, &mut out),
                    DeviceKind::GlucoseMeter => self.meter_day(seed, device, day, &mut out),
                    DeviceKind::Cgm => self.cgm_day(seed, device, day, window, &mut out),
                    DeviceKind::KetoneMeter => self.ketone_day(seed, device, day, &mut out),
                    DeviceKind::Scale => self.scale_day(seed, device, day, &mut out),
                }
            }
        }
        self.add_scripted(&mut out);
        out.retain(|r| from <= r.measured_at && r.measured_at < to);
        out.sort_by_key(|r| (r.measured_at, r.device));
        out
    }

    /// Adds a scripted episode (used by the demo so alerts appear within a minute). An episode
    /// for a device the patient lacks shows nothing.
    pub fn add_episode(&mut self, episode: Episode) {
        let whole = |t: OffsetDateTime| utc(t.to_offset(UtcOffset::UTC).unix_timestamp());
        self.episodes.push(match episode {
            Episode::Hypoglycaemia { start } => Episode::Hypoglycaemia {
                start: whole(start),
            },
            Episode::SevereHypertension { at } => Episode::SevereHypertension { at: whole(at) },
        });
    }

    fn device_of(&self, kind: DeviceKind) -> Option<usize> {
        self.devices.iter().position(|d| d.kind == kind)
    }

    fn day_rng(&self, seed: u64, device: usize, day: Date) -> ChaCha8Rng {
        let parts = [self.index as u64, device as u64, day_number(day)];
        ChaCha8Rng::seed_from_u64(mix(seed, Stream::Day, &parts))
    }

    /// A roughly standard-normal offset for `day` that changes slowly: each day's own noise,
    /// averaged with geometrically less weight over the `days` before it.
    fn drift(&self, seed: u64, device: usize, day: Date, days: i64, decay: f64) -> f64 {
        let (mut sum, mut norm) = (0.0, 0.0);
        let mut weight = 1.0;
        for k in 0..days {
            let past = day_number(day - Duration::days(k));
            let parts = [self.index as u64, device as u64, past];
            sum += weight * gaussian(mix(seed, Stream::Drift, &parts));
            norm += weight * weight;
            weight *= decay;
        }
        sum / f64::sqrt(norm)
    }

    /// Morning and evening sessions of two readings a minute apart, as home monitoring asks.
    fn bp_day(&self, seed: u64, device: usize, day: Date, out: &mut Vec<SimReading>) {
        let p = &self.physiology;
        let mut rng = self.day_rng(seed, device, day);
        let drift = self.drift(seed, device, day, 7, 0.7);
        let midnight = midnight(day);
        for (hour, surge) in [(7, p.morning_surge), (19, 0.0)] {
            if rng.random_bool(0.1) {
                continue;
            }
            let start = midnight + hour * HOUR + rng.random_range(-30 * MINUTE..=30 * MINUTE);
            let mut systolic = normal(&mut rng, p.systolic + surge + 3.0 * drift, 4.5);
            let mut diastolic = normal(&mut rng, p.diastolic + 0.4 * surge + 2.5 * drift, 3.5);
            if p.severe_spikes && rng.random_bool(0.08) {
                systolic += rng.random_range(30.0..50.0);
                diastolic += rng.random_range(12.0..26.0);
            } else if p.low_spells && rng.random_bool(0.08) {
                systolic = rng.random_range(82.0..95.0);
                diastolic = systolic - rng.random_range(25.0..35.0);
            }
            let second = (rng.random_range(50..=75), rng.random_range(2.0..6.0));
            for (offset, settle) in [(0, 0.0), second] {
                let s = normal(&mut rng, systolic - settle, 2.5).clamp(75.0, 260.0);
                let d = normal(&mut rng, diastolic - 0.5 * settle, 2.0).clamp(40.0, s - 20.0);
                let measurement = Measurement::BloodPressure {
                    systolic: s,
                    diastolic: d,
                    pulse: normal(&mut rng, p.pulse, 4.0).clamp(45.0, 130.0),
                    irregular_pulse: rng.random_bool(0.03),
                };
                out.push(SimReading::new(device, start + offset, measurement));
            }
        }
    }

    /// A fasting test most mornings plus a patient's habitual number of tests around meals.
    fn meter_day(&self, seed: u64, device: usize, day: Date, out: &mut Vec<SimReading>) {
        const LATER: [(i64, Meal); 5] = [
            (12 * HOUR + 15 * MINUTE, Meal::BeforeMeal),
            (14 * HOUR, Meal::AfterMeal),
            (18 * HOUR, Meal::BeforeMeal),
            (20 * HOUR, Meal::AfterMeal),
            (22 * HOUR + 30 * MINUTE, Meal::Bedtime),
        ];
        let p = &self.physiology;
        let mut rng = self.day_rng(seed, device, day);
        let mean = p.fasting_glucose + 0.8 * self.drift(seed, device, day, 7, 0.7);
        let tests = (p.tests_per_day + rng.random_range(-1..=1)).clamp(1, 4) as usize;
        let fasting = !rng.random_bool(0.08);
        let later = index::sample(&mut rng, LATER.len(), tests - usize::from(fasting));
        let fasting = fasting.then_some((7 * HOUR + 15 * MINUTE, Meal::Fasting));
        for (centre, meal) in fasting.into_iter().chain(later.iter().map(|i| LATER[i])) {
            let t = midnight(day) + centre + rng.random_range(-30 * MINUTE..=30 * MINUTE);
            let mut mmol = match meal {
                Meal::Fasting => normal(&mut rng, mean, 0.7),
                Meal::BeforeMeal => normal(&mut rng, mean - 0.3, 0.9),
                Meal::AfterMeal => {
                    let rise = rng.random_range(2.0..4.0);
                    normal(&mut rng, mean + rise, 0.8)
                }
                Meal::Bedtime | Meal::Random => normal(&mut rng, mean + 1.2, 0.9),
            }
            .max(4.0);
            if p.hypo_prone && rng.random_bool(0.03) {
                mmol = if rng.random_bool(0.15) {
                    rng.random_range(2.5..3.0)
                } else {
                    rng.random_range(3.0..3.8)
                };
            }
            let meal = if !p.tags_meals {
                None
            } else if meal != Meal::Fasting && rng.random_bool(0.05) {
                Some(Meal::Random)
            } else {
                Some(meal)
            };
            out.push(self.glucose(device, DeviceKind::GlucoseMeter, t, mmol, meal));
        }
    }

    /// What moves a CGM wearer's glucose on `day`, drawn before anything else from the day's
    /// seed so the ketone meter can recompute it.
    fn cgm_plan(&self, seed: u64, device: usize, day: Date) -> CgmPlan {
        let p = &self.physiology;
        let mut rng = self.day_rng(seed, device, day);
        let midnight = midnight(day);
        let mut bumps = Vec::with_capacity(4);
        for (centre, spread) in [
            (7 * HOUR + 30 * MINUTE, 45 * MINUTE),
            (12 * HOUR + 30 * MINUTE, 45 * MINUTE),
            (18 * HOUR + 30 * MINUTE, 60 * MINUTE),
        ] {
            // A forgotten or late bolus: a higher, longer rise.
            let missed = if rng.random_bool(0.06) { 1.8 } else { 1.0 };
            bumps.push(Bump {
                at: midnight + centre + rng.random_range(-spread..=spread),
                height: rng.random_range(3.0..8.0) * p.meal_response * missed,
                rise: rng.random_range(45.0..75.0) * 60.0,
                fall: rng.random_range(120.0..180.0) * 60.0 * missed,
            });
        }
        if rng.random_bool(p.exercise_chance) {
            bumps.push(Bump {
                at: midnight + rng.random_range(15 * HOUR..=17 * HOUR + 30 * MINUTE),
                height: -rng.random_range(1.5..3.5),
                rise: 50.0 * 60.0,
                fall: 90.0 * 60.0,
            });
        }
        let night_low = rng.random_bool(p.night_hypo_chance).then(|| Dip {
            start: midnight + rng.random_range(HOUR..=3 * HOUR + 30 * MINUTE),
            fall: 25 * MINUTE,
            hold: rng.random_range(15 * MINUTE..=45 * MINUTE),
            recover: 25 * MINUTE,
            nadir: rng.random_range(2.3..3.6),
        });
        let gaps = (0..rng.random_range(0..=2))
            .map(|_| {
                let start = midnight + rng.random_range(0..DAY);
                (start, start + rng.random_range(10 * MINUTE..=30 * MINUTE))
            })
            .collect();
        let baseline = |d| p.cgm_baseline + 0.8 * self.drift(seed, device, d, 7, 0.7);
        CgmPlan {
            midnight,
            base: (baseline(day), baseline(day + Duration::days(1))),
            bumps,
            night_low,
            gaps,
        }
    }

    /// Samples on the sensor's grid within `window` (unix seconds, both rounded up).
    fn cgm_day(
        &self,
        seed: u64,
        device: usize,
        day: Date,
        window: (i64, i64),
        out: &mut Vec<SimReading>,
    ) {
        let interval = self.devices[device]
            .interval
            .map_or(5 * MINUTE, |i| i.whole_seconds());
        let today = self.cgm_plan(seed, device, day);
        let yesterday = self.cgm_plan(seed, device, day - Duration::days(1));
        let episodes: Vec<Dip> = self
            .episodes
            .iter()
            .filter_map(|e| match e {
                Episode::Hypoglycaemia { start } => Some(Dip::scripted(start.unix_timestamp())),
                Episode::SevereHypertension { .. } => None,
            })
            .collect();
        let first = today.midnight + self.physiology.cgm_phase % interval;
        let ks = (window.0 - first).div_euclid(interval).max(0)
            ..=(window.1 - first)
                .div_euclid(interval)
                .min(DAY / interval - 1);
        for k in ks {
            let t = first + k * interval;
            let scripted = episodes.iter().any(|d| d.covers(t));
            if !scripted && today.gaps.iter().any(|&(a, b)| a <= t && t < b) {
                continue;
            }
            let smooth = today.smooth(&yesterday, t);
            let parts = [self.index as u64, device as u64, t as u64];
            let z = gaussian(mix(seed, Stream::Sample, &parts));
            let mut mmol = smooth + (0.2 + 0.02 * smooth) * z;
            for dip in today.night_low.iter().chain(&episodes) {
                let w = dip.weight(t);
                mmol = (1.0 - w) * mmol + w * (dip.nadir + 0.07 * z);
            }
            out.push(self.glucose(device, DeviceKind::Cgm, t, mmol.max(1.0), None));
        }
    }

    /// A ketone check in about a third of the day's rises above 14 mmol/L, as patients are
    /// told to test when high.
    fn ketone_day(&self, seed: u64, device: usize, day: Date, out: &mut Vec<SimReading>) {
        let Some(cgm) = self.device_of(DeviceKind::Cgm) else {
            return;
        };
        let today = self.cgm_plan(seed, cgm, day);
        let yesterday = self.cgm_plan(seed, cgm, day - Duration::days(1));
        let mut rng = self.day_rng(seed, device, day);
        let step = 5 * MINUTE;
        let mut was_high = today.smooth(&yesterday, today.midnight - step) > 14.0;
        for t in (today.midnight..today.midnight + DAY).step_by(step as usize) {
            let high = today.smooth(&yesterday, t) > 14.0;
            if high && !was_high && rng.random_bool(1.0 / 3.0) {
                let at = t + rng.random_range(20 * MINUTE..=60 * MINUTE);
                let roll: f64 = rng.random();
                let mmol_per_l = if roll < 0.75 {
                    rng.random_range(0.1..0.6)
                } else if roll < 0.95 {
                    rng.random_range(0.6..1.5)
                } else {
                    rng.random_range(1.5..3.0)
                };
                // A day's readings stay within the day, or a window could miss them.
                if at < today.midnight + DAY {
                    out.push(SimReading::new(
                        device,
                        at,
                        Measurement::Ketones { mmol_per_l },
                    ));
                }
            }
            was_high = high;
        }
    }

    fn scale_day(&self, seed: u64, device: usize, day: Date, out: &mut Vec<SimReading>) {
        let mut rng = self.day_rng(seed, device, day);
        if !rng.random_bool(0.8) {
            return;
        }
        let t = midnight(day) + rng.random_range(6 * HOUR + 30 * MINUTE..=8 * HOUR + 30 * MINUTE);
        let usual = self.physiology.weight_kg + self.drift(seed, device, day, 21, 0.9);
        let kg = normal(&mut rng, usual, 0.4);
        out.push(SimReading::new(device, t, Measurement::Weight { kg }));
    }

    fn glucose(
        &self,
        device: usize,
        kind: DeviceKind,
        t: i64,
        mmol_per_l: f64,
        meal: Option<Meal>,
    ) -> SimReading {
        let unit = self.physiology.glucose_unit;
        let (low, high) = measuring_range(kind, unit);
        let shown = unit.displayed(mmol_per_l);
        let specimen = match kind {
            DeviceKind::Cgm => Specimen::Interstitial,
            _ => Specimen::Capillary,
        };
        let range = if shown < low {
            Some(Range::Low)
        } else {
            (shown > high).then_some(Range::High)
        };
        let measurement = Measurement::Glucose {
            mmol_per_l,
            unit,
            specimen,
            meal,
            range,
        };
        SimReading::new(device, t, measurement)
    }

    /// Scripted readings that are not part of a CGM trace (those are shaped in `cgm_day`).
    fn add_scripted(&self, out: &mut Vec<SimReading>) {
        for episode in &self.episodes {
            match *episode {
                Episode::SevereHypertension { at } => {
                    let Some(device) = self.device_of(DeviceKind::BpMonitor) else {
                        continue;
                    };
                    out.retain(|r| {
                        r.device != device || (r.measured_at - at).abs() > Duration::minutes(10)
                    });
                    let at = at.unix_timestamp();
                    for (offset, systolic, diastolic, pulse) in
                        [(0, 186.0, 114.0, 96.0), (60, 182.0, 112.0, 94.0)]
                    {
                        let measurement = Measurement::BloodPressure {
                            systolic,
                            diastolic,
                            pulse,
                            irregular_pulse: false,
                        };
                        out.push(SimReading::new(device, at + offset, measurement));
                    }
                }
                Episode::Hypoglycaemia { start } => {
                    let meter = self.device_of(DeviceKind::GlucoseMeter);
                    let Some(device) = meter.filter(|_| self.device_of(DeviceKind::Cgm).is_none())
                    else {
                        continue;
                    };
                    let span = start..start + Duration::minutes(90);
                    out.retain(|r| r.device != device || !span.contains(&r.measured_at));
                    let meal = self.physiology.tags_meals.then_some(Meal::Random);
                    let start = start.unix_timestamp();
                    // Test, treat, re-test after 15 minutes, until back in range.
                    for (minutes, mmol) in [(12, 2.8), (27, 2.9), (42, 3.6), (60, 5.4)] {
                        let t = start + minutes * MINUTE;
                        out.push(self.glucose(device, DeviceKind::GlucoseMeter, t, mmol, meal));
                    }
                }
            }
        }
    }
}

impl SimReading {
    fn new(device: usize, unix_seconds: i64, measurement: Measurement) -> Self {
        Self {
            device,
            measured_at: utc(unix_seconds),
            measurement,
        }
    }

    /// The contract's JSON reading object, as the device would send it.
    ///
    /// # Panics
    /// If the reading is not one of `profile`'s (its device index is out of range).
    pub fn to_json(&self, profile: &Profile) -> Value {
        let mut v = match self.measurement {
            Measurement::BloodPressure {
                systolic,
                diastolic,
                pulse,
                irregular_pulse,
            } => json!({
                "type": "blood_pressure",
                "systolic": systolic.round() as i64,
                "diastolic": diastolic.round() as i64,
                "pulse": pulse.round() as i64,
                "unit": "mm[Hg]",
                "flags": irregular_pulse.then_some(["irregular_pulse"]),
            }),
            Measurement::Glucose {
                mmol_per_l,
                unit,
                specimen,
                meal,
                range,
            } => {
                let (low, high) = measuring_range(profile.devices[self.device].kind, unit);
                let shown = match range {
                    Some(Range::Low) => low,
                    Some(Range::High) => high,
                    None => unit.displayed(mmol_per_l),
                };
                let value = match unit {
                    GlucoseUnit::MmolL => json!(shown),
                    GlucoseUnit::MgDl => json!(shown as i64),
                };
                json!({
                    "type": "blood_glucose", "value": value, "unit": unit,
                    "specimen": specimen, "meal": meal, "range": range,
                })
            }
            Measurement::Ketones { mmol_per_l } => {
                json!({"type": "blood_ketones", "value": tenths(mmol_per_l), "unit": "mmol/L"})
            }
            Measurement::Weight { kg } => {
                json!({"type": "body_weight", "value": tenths(kg), "unit": "kg"})
            }
        };
        let at = self.measured_at.to_offset(UtcOffset::UTC);
        v["measured_at"] = json!(format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ));
        // Absent, not null: the contract has no nulls.
        if let Value::Object(fields) = &mut v {
            fields.retain(|_, field| !field.is_null());
        }
        v
    }
}

/// Lowest and highest value the device shows as a number, in the unit it displays; stated
/// per unit, as makers do, so LO/HI never depend on a conversion.
fn measuring_range(kind: DeviceKind, unit: GlucoseUnit) -> (f64, f64) {
    match (kind == DeviceKind::Cgm, unit) {
        (true, GlucoseUnit::MmolL) => (2.2, 22.2),
        (true, GlucoseUnit::MgDl) => (40.0, 400.0),
        (false, GlucoseUnit::MmolL) => (0.6, 33.3),
        (false, GlucoseUnit::MgDl) => (10.0, 600.0),
    }
}

struct CgmPlan {
    /// Unix seconds.
    midnight: i64,
    /// Baseline at this midnight and the next, interpolated between so days join up.
    base: (f64, f64),
    bumps: Vec<Bump>,
    night_low: Option<Dip>,
    gaps: Vec<(i64, i64)>,
}

impl CgmPlan {
    /// Glucose without sensor noise or lows. Yesterday's late meals still count after
    /// midnight.
    fn smooth(&self, yesterday: &CgmPlan, t: i64) -> f64 {
        let through_day = (t - self.midnight) as f64 / DAY as f64;
        let base = self.base.0 + (self.base.1 - self.base.0) * through_day;
        let bumps = self.bumps.iter().chain(&yesterday.bumps);
        base + bumps.map(|b| b.value(t)).sum::<f64>()
    }
}

/// A meal's rise (or, negative, exercise's fall) and return to baseline.
struct Bump {
    at: i64,
    height: f64,
    rise: f64,
    fall: f64,
}

impl Bump {
    fn value(&self, t: i64) -> f64 {
        let since = (t - self.at) as f64;
        if since <= 0.0 || since >= self.rise + self.fall {
            0.0
        } else if since < self.rise {
            self.height * ease(since / self.rise)
        } else {
            self.height * (1.0 - ease((since - self.rise) / self.fall))
        }
    }
}

/// A low: glucose pulled towards `nadir` over `fall` seconds, held, then let go.
struct Dip {
    start: i64,
    fall: i64,
    hold: i64,
    recover: i64,
    nadir: f64,
}

impl Dip {
    fn scripted(start: i64) -> Self {
        Self {
            start,
            fall: 15 * MINUTE,
            hold: 30 * MINUTE,
            recover: 30 * MINUTE,
            nadir: 2.75,
        }
    }

    fn covers(&self, t: i64) -> bool {
        (self.start..self.start + self.fall + self.hold + self.recover).contains(&t)
    }

    /// How far the low has taken over: 0 outside it, 1 while held.
    fn weight(&self, t: i64) -> f64 {
        let since = t - self.start;
        if !self.covers(t) {
            0.0
        } else if since < self.fall {
            ease(since as f64 / self.fall as f64)
        } else if since < self.fall + self.hold {
            1.0
        } else {
            1.0 - ease((since - self.fall - self.hold) as f64 / self.recover as f64)
        }
    }
}

/// 0 to 1 with zero slope at both ends, so traces have no corners.
fn ease(x: f64) -> f64 {
    (1.0 - (std::f64::consts::PI * x).cos()) / 2.0
}

fn tenths(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn midnight(day: Date) -> i64 {
    day.midnight().assume_utc().unix_timestamp()
}

fn utc(unix_seconds: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + Duration::seconds(unix_seconds)
}

/// The first whole second at or after `t`: readings are on whole seconds.
fn ceil_secs(t: OffsetDateTime) -> i64 {
    t.unix_timestamp() + i64::from(t.nanosecond() > 0)
}

fn day_number(day: Date) -> u64 {
    i64::from(day.to_julian_day()) as u64
}

fn normal(rng: &mut ChaCha8Rng, mean: f64, sd: f64) -> f64 {
    mean + sd * rng.sample::<f64, _>(StandardNormal)
}

/// Independent random streams for the same (patient, device, day).
#[derive(Clone, Copy)]
enum Stream {
    Profile = 1,
    Day,
    Drift,
    Sample,
}

/// Mixes a seed, a stream and its coordinates into one seed. ChaCha8 seeded from it is
/// stable across `rand` versions, unlike `StdRng`.
fn mix(seed: u64, stream: Stream, parts: &[u64]) -> u64 {
    let start = splitmix64(seed ^ splitmix64(stream as u64));
    parts.iter().fold(start, |h, &p| splitmix64(h ^ p))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal value from a hash (Box–Muller), for noise needed at one point in time
/// without running a generator through the whole day.
fn gaussian(h: u64) -> f64 {
    let unit = |x: u64| ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let (u1, u2) = (unit(h), unit(splitmix64(h)));
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use vigil_ingest::{
        config::ValidationSettings,
        domain::{
            Channel, RawReading,
            validate::{Context, validate},
        },
    };

    const SEED: u64 = 20_261_122;
    const START: OffsetDateTime = datetime!(2026-03-02 00:00 UTC);

    fn days(n: i64) -> OffsetDateTime {
        START + Duration::days(n)
    }

    /// The first patient of a large cohort whose devices include `kind` (with `minutes`
    /// sampling, for a CGM).
    fn patient_with(kind: DeviceKind, minutes: Option<i64>) -> Profile {
        cohort(SEED, 200)
            .into_iter()
            .find(|p| {
                p.devices
                    .iter()
                    .any(|d| d.kind == kind && d.interval.map(|i| i.whole_minutes()) == minutes)
            })
            .expect("a cohort of 200 has every kind of device")
    }

    fn of_kind(p: &Profile, kind: DeviceKind, readings: &[SimReading]) -> Vec<SimReading> {
        readings
            .iter()
            .filter(|r| p.devices[r.device].kind == kind)
            .cloned()
            .collect()
    }

    fn glucose_mmol(r: &SimReading) -> Option<f64> {
        match r.measurement {
            Measurement::Glucose { mmol_per_l, .. } => Some(mmol_per_l),
            _ => None,
        }
    }

    /// Blood-pressure readings grouped into sessions (readings under 5 minutes apart).
    fn sessions(readings: &[SimReading]) -> Vec<Vec<(OffsetDateTime, f64, f64)>> {
        let mut sessions: Vec<Vec<(OffsetDateTime, f64, f64)>> = Vec::new();
        for r in readings {
            if let Measurement::BloodPressure {
                systolic,
                diastolic,
                ..
            } = r.measurement
            {
                let reading = (r.measured_at, systolic.round(), diastolic.round());
                match sessions.last_mut() {
                    Some(s) if r.measured_at - s[s.len() - 1].0 < Duration::minutes(5) => {
                        s.push(reading);
                    }
                    _ => sessions.push(vec![reading]),
                }
            }
        }
        sessions
    }

    #[test]
    fn the_same_seed_gives_the_same_patients_and_readings() {
        let (a, b) = (cohort(SEED, 20), cohort(SEED, 20));
        assert_eq!(a, b);
        assert_eq!(cohort(SEED, 10)[..5], cohort(SEED, 5)[..]);
        let read = |c: &[Profile], seed| -> Vec<Vec<SimReading>> {
            c.iter().map(|p| p.readings(seed, START, days(2))).collect()
        };
        assert_eq!(read(&a, SEED), read(&b, SEED));
        assert_ne!(read(&a, SEED), read(&a, SEED + 1));
        assert_ne!(cohort(SEED, 20), cohort(SEED + 1, 20));
    }

    #[test]
    fn a_window_cut_anywhere_gives_the_same_readings() {
        let mut cgm = patient_with(DeviceKind::Cgm, Some(5));
        let cut = datetime!(2026-03-03 13:37:21.25 UTC);
        cgm.add_episode(Episode::Hypoglycaemia {
            start: cut - Duration::minutes(10),
        });
        let mut bp = patient_with(DeviceKind::BpMonitor, None);
        bp.add_episode(Episode::SevereHypertension {
            at: cut - Duration::seconds(30),
        });
        let one_minute = patient_with(DeviceKind::Cgm, Some(1));
        for p in [&cgm, &bp, &one_minute] {
            let whole = p.readings(SEED, START, days(4));
            assert!(!whole.is_empty());
            for b in [
                cut,
                days(1) + Duration::seconds(1),
                START + Duration::hours(7),
            ] {
                let mut parts = p.readings(SEED, START, b);
                parts.extend(p.readings(SEED, b, days(4)));
                assert_eq!(parts, whole, "patient {} cut at {b}", p.index);
            }
            let mut seconds = Vec::new();
            let mut t = cut;
            while t < cut + Duration::minutes(20) {
                seconds.extend(p.readings(SEED, t, t + Duration::seconds(1)));
                t += Duration::seconds(1);
            }
            let span = p.readings(SEED, cut, cut + Duration::minutes(20));
            assert_eq!(seconds, span);
        }
    }

    #[test]
    fn every_reading_is_within_the_contract() {
        let rules = ValidationSettings::default();
        let mut count = 0;
        for p in cohort(SEED, 50) {
            for r in p.readings(SEED, START, days(30)) {
                count += 1;
                assert_eq!(r.measured_at.nanosecond(), 0);
                assert_eq!(r.measured_at.offset(), UtcOffset::UTC);
                let json = r.to_json(&p);
                let number = |field: &str| json[field].as_f64().expect("a number");
                assert!(
                    json["measured_at"]
                        .as_str()
                        .is_some_and(|s| s.ends_with('Z'))
                );
                match json["type"].as_str().expect("a type") {
                    "blood_pressure" => {
                        let (s, d, pulse) =
                            (number("systolic"), number("diastolic"), number("pulse"));
                        assert!((40.0..=299.0).contains(&s) && s > d, "{json}");
                        assert!((20.0..=200.0).contains(&d), "{json}");
                        assert!((20.0..=300.0).contains(&pulse), "{json}");
                    }
                    "blood_glucose" => {
                        let limits = match json["unit"].as_str() {
                            Some("mmol/L") => 0.5..=50.0,
                            Some("mg/dL") => 10.0..=900.0,
                            other => panic!("glucose unit {other:?}"),
                        };
                        assert!(limits.contains(&number("value")), "{json}");
                    }
                    "blood_ketones" => assert!((0.0..=10.0).contains(&number("value"))),
                    "body_weight" => assert!((2.0..=500.0).contains(&number("value"))),
                    other => panic!("reading type {other}"),
                }
                let raw: RawReading = serde_json::from_value(json.clone()).expect("wire form");
                let ctx = Context {
                    device_id: uuid::Uuid::nil(),
                    channel: Channel::Mqtt,
                    received_at: r.measured_at + Duration::minutes(1),
                    rules: &rules,
                };
                if let Err(refusal) = validate(&raw, &ctx) {
                    panic!("{json} refused: {refusal:?}");
                }
            }
        }
        assert!(count > 100_000, "only {count} readings");
    }

    #[test]
    fn devices_keep_their_schedules() {
        let p = patient_with(DeviceKind::BpMonitor, None);
        let bp = of_kind(
            &p,
            DeviceKind::BpMonitor,
            &p.readings(SEED, START, days(28)),
        );
        let sessions = sessions(&bp);
        assert!(
            (42..=56).contains(&sessions.len()),
            "{} sessions",
            sessions.len()
        );
        let mut drop = 0.0;
        for s in &sessions {
            assert_eq!(s.len(), 2, "{s:?}");
            let apart = s[1].0 - s[0].0;
            assert!(apart >= Duration::seconds(50) && apart <= Duration::seconds(75));
            let hour = s[0].0.hour();
            assert!([6, 7, 18, 19].contains(&hour), "session at {}", s[0].0);
            drop += s[0].1 - s[1].1;
        }
        assert!(
            drop / sessions.len() as f64 > 1.0,
            "second readings are not lower"
        );

        for (minutes, per_day) in [(5, 288), (1, 1440)] {
            let p = patient_with(DeviceKind::Cgm, Some(minutes));
            for d in 0..7 {
                let readings = p.readings(SEED, days(d), days(d + 1));
                let cgm = of_kind(&p, DeviceKind::Cgm, &readings);
                assert!(cgm.len() <= per_day && cgm.len() >= per_day * 85 / 100);
                for pair in cgm.windows(2) {
                    let step = (pair[1].measured_at - pair[0].measured_at).whole_seconds();
                    assert_eq!(step % (minutes * 60), 0);
                }
            }
        }

        let p = patient_with(DeviceKind::Scale, None);
        let weighed = of_kind(&p, DeviceKind::Scale, &p.readings(SEED, START, days(50))).len();
        assert!(
            (30..=48).contains(&weighed),
            "weighed on {weighed} of 50 days"
        );
    }

    #[test]
    fn the_cohort_shows_abnormal_values_but_few_red_ones() {
        let (mut sessions_seen, mut severe, mut highest) = (0, 0, 0.0_f64);
        let (mut cgm_samples, mut below_3, mut below_3_9, mut meter_below_3_9) = (0, 0, 0, 0);
        let mut ketones = 0;
        for p in cohort(SEED, 100) {
            let readings = p.readings(SEED, START, days(14));
            for s in sessions(&of_kind(&p, DeviceKind::BpMonitor, &readings)) {
                sessions_seen += 1;
                highest = s.iter().fold(highest, |h, r| h.max(r.1));
                severe += usize::from(s.iter().any(|r| r.1 >= 180.0 || r.2 >= 120.0));
            }
            for r in of_kind(&p, DeviceKind::Cgm, &readings) {
                let mmol = glucose_mmol(&r).expect("glucose");
                cgm_samples += 1;
                below_3 += usize::from(mmol < 3.0);
                below_3_9 += usize::from(mmol < 3.9);
            }
            let meter = of_kind(&p, DeviceKind::GlucoseMeter, &readings);
            meter_below_3_9 += meter
                .iter()
                .filter(|r| glucose_mmol(r).is_some_and(|g| g < 3.9))
                .count();
            ketones += of_kind(&p, DeviceKind::KetoneMeter, &readings).len();
        }
        assert!(highest >= 180.0, "no severe blood pressure at all");
        assert!(
            severe * 20 < sessions_seen,
            "{severe} of {sessions_seen} sessions severe"
        );
        assert!(below_3_9 > 0 && meter_below_3_9 > 0, "no hypos");
        assert!(
            below_3 * 50 < cgm_samples,
            "{below_3} of {cgm_samples} below 3.0"
        );
        assert!(
            below_3_9 * 10 < cgm_samples,
            "{below_3_9} of {cgm_samples} below 3.9"
        );
        assert!(ketones > 0);

        let mix = cohort(SEED, 1000);
        let share = |c| mix.iter().filter(|p| p.condition == c).count();
        assert!((400..=500).contains(&share(Condition::Hypertension)));
        assert!((250..=350).contains(&share(Condition::Type2Diabetes)));
        assert!((200..=300).contains(&share(Condition::Type1Diabetes)));
        let age = |p: &Profile| (AGE_REFERENCE - p.date_of_birth).whole_days() / 365;
        assert!(mix.iter().all(|p| (29..=91).contains(&age(p))));
        assert!(mix.iter().filter(|p| age(p) >= 80).count() > 50);
    }

    #[test]
    fn scripted_episodes_show_within_minutes() {
        for (kind, minutes) in [(DeviceKind::Cgm, Some(5)), (DeviceKind::GlucoseMeter, None)] {
            let mut p = patient_with(kind, minutes);
            let start = datetime!(2026-03-02 10:02:30.5 UTC);
            p.add_episode(Episode::Hypoglycaemia { start });
            let glucose: Vec<(i64, f64)> = p
                .readings(SEED, start, start + Duration::hours(2))
                .iter()
                .filter_map(|r| Some(((r.measured_at - start).whole_minutes(), glucose_mmol(r)?)))
                .collect();
            let low_by_20 = glucose.iter().any(|&(m, g)| m < 20 && g < 3.0);
            assert!(low_by_20, "{kind:?}: {glucose:?}");
            let held = glucose.iter().filter(|&&(m, _)| (15..40).contains(&m));
            assert!(held.clone().count() >= 1 && held.clone().all(|&(_, g)| g < 3.0));
            assert!(
                glucose
                    .iter()
                    .filter(|&&(m, _)| m >= 75)
                    .all(|&(_, g)| g > 3.9)
            );
        }

        let mut p = patient_with(DeviceKind::BpMonitor, None);
        let at = datetime!(2026-03-02 07:03:10 UTC);
        p.add_episode(Episode::SevereHypertension { at });
        let readings = p.readings(SEED, at - Duration::minutes(15), at + Duration::minutes(15));
        let sessions = sessions(&of_kind(&p, DeviceKind::BpMonitor, &readings));
        assert_eq!(sessions.len(), 1, "{sessions:?}");
        assert_eq!(sessions[0][0], (at, 186.0, 114.0));
        assert!(sessions[0][1].1 >= 180.0);
    }

    #[test]
    fn readings_outside_the_measuring_range_carry_the_device_limit() {
        let mut p = patient_with(DeviceKind::Cgm, Some(5));
        let cgm = p.device_of(DeviceKind::Cgm).expect("a CGM");
        let at = datetime!(2026-03-02 03:00 UTC).unix_timestamp();
        for (unit, mmol, value, range) in [
            (GlucoseUnit::MmolL, 1.9, 2.2, "low"),
            (GlucoseUnit::MgDl, 2.1, 40.0, "low"),
            (GlucoseUnit::MmolL, 25.0, 22.2, "high"),
            (GlucoseUnit::MgDl, 24.0, 400.0, "high"),
        ] {
            p.physiology.glucose_unit = unit;
            let json = p.glucose(cgm, DeviceKind::Cgm, at, mmol, None).to_json(&p);
            assert_eq!(json["range"], range, "{json}");
            assert_eq!(json["value"].as_f64(), Some(value), "{json}");
        }
        p.physiology.glucose_unit = GlucoseUnit::MgDl;
        let json = p.glucose(cgm, DeviceKind::Cgm, at, 5.55, None).to_json(&p);
        assert_eq!(json["value"], 100);
        assert!(json.get("range").is_none());
    }
}
