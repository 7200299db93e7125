//! Rules over a window of readings: the NICE home blood-pressure average, CGM time in
//! range, and missing data. The worker feeds them histories; they decide nothing else.

use std::collections::BTreeSet;

use serde_json::json;
use time::{Date, Duration, OffsetDateTime};

use super::{BP_HOME_AVERAGE, Breach, CGM_TIME_IN_RANGE, DATA_MISSING, Severity, Thresholds};

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Breach(Breach),
    /// Enough data, and the target is met: an open alert for the rule can be resolved.
    Met,
    /// Not enough data to judge; an open alert stays as it is.
    Insufficient(String),
}

#[derive(Debug, Clone, Copy)]
pub struct HomeBp {
    /// The day in the patient's own clock (the offset the device reported).
    pub local_date: Date,
    pub systolic: f64,
    pub diastolic: f64,
}

/// NICE NG136 1.2.7: at least `bp_home_min_days` days of readings, the first day's readings
/// discarded, the rest averaged, at least `bp_home_min_readings` of them; compared with the
/// 1.4.22 target for the patient's age. Without an age the under-80 target is used (the
/// stricter one) and the alert says so.
pub fn bp_home_average(readings: &[HomeBp], age: Option<u32>, t: &Thresholds) -> Verdict {
    let days: BTreeSet<Date> = readings.iter().map(|r| r.local_date).collect();
    let Some(first) = days.first().copied() else {
        return Verdict::Insufficient("no home readings in the window".into());
    };
    if days.len() < t.bp_home_min_days as usize {
        return Verdict::Insufficient(format!(
            "{} day(s) of readings; the protocol needs {}",
            days.len(),
            t.bp_home_min_days
        ));
    }
    let kept: Vec<&HomeBp> = readings.iter().filter(|r| r.local_date != first).collect();
    if kept.len() < t.bp_home_min_readings as usize {
        return Verdict::Insufficient(format!(
            "{} reading(s) after discarding day 1; the protocol needs {}",
            kept.len(),
            t.bp_home_min_readings
        ));
    }
    let n = kept.len() as f64;
    let systolic = kept.iter().map(|r| r.systolic).sum::<f64>() / n;
    let diastolic = kept.iter().map(|r| r.diastolic).sum::<f64>() / n;
    let target = match age {
        Some(a) if a >= 80 => t.bp_home_target_80_and_over,
        _ => t.bp_home_target_under_80,
    };
    if systolic < target[0] && diastolic < target[1] {
        return Verdict::Met;
    }
    Verdict::Breach(Breach {
        rule_id: BP_HOME_AVERAGE.id.into(),
        rule_version: BP_HOME_AVERAGE.versioned(),
        severity: Severity::Amber,
        title: format!(
            "Home blood pressure average {systolic:.0}/{diastolic:.0} mmHg above target below {:.0}/{:.0}",
            target[0], target[1]
        ),
        badness: (systolic / target[0]).max(diastolic / target[1]),
        detail: json!({
            "average": [systolic, diastolic], "readings": kept.len(), "days": days.len(),
            "discarded_first_day": first.to_string(), "target_below": target,
            "age": age, "age_unknown": age.is_none(),
            "guidance": "Home average above the NICE NG136 treatment target: review treatment.",
        }),
    })
}

#[derive(Debug, Clone, Copy)]
pub struct CgmPoint {
    pub value: Option<f64>,
    /// "mmol/L" or "mg/dL": the unit the sensor reported in.
    pub mg_dl: bool,
    /// The sensor's LO/HI.
    pub range: Option<RangeFlag>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeFlag {
    Low,
    High,
}

/// 2019 consensus metrics over `cgm_window_days`, each point classified in its own unit.
pub fn cgm_time_in_range(points: &[CgmPoint], t: &Thresholds) -> Verdict {
    let expected =
        f64::from(t.cgm_window_days) * 24.0 * 60.0 / f64::from(t.cgm_interval_minutes.max(1));
    let coverage = (points.len() as f64 / expected * 100.0).min(100.0);
    if coverage < t.cgm_min_coverage_percent {
        return Verdict::Insufficient(format!(
            "sensor data for {coverage:.0} % of the window; the consensus needs {:.0} %",
            t.cgm_min_coverage_percent
        ));
    }
    let (mut below_l2, mut below_l1, mut in_range) = (0usize, 0usize, 0usize);
    for p in points {
        let (low, l2, high) = if p.mg_dl {
            (
                t.cgm_range_low_mg_dl,
                t.glucose_l2_low_mg_dl,
                t.cgm_range_high_mg_dl,
            )
        } else {
            (
                t.cgm_range_low_mmol_l,
                t.glucose_l2_low_mmol_l,
                t.cgm_range_high_mmol_l,
            )
        };
        match (p.range, p.value) {
            (Some(RangeFlag::Low), _) => {
                below_l1 += 1;
                below_l2 += 1;
            }
            (Some(RangeFlag::High), _) | (None, None) => {}
            (None, Some(v)) => {
                if v < low {
                    below_l1 += 1;
                    if v < l2 {
                        below_l2 += 1;
                    }
                } else if v <= high {
                    in_range += 1;
                }
            }
        }
    }
    let pct = |n: usize| n as f64 / points.len() as f64 * 100.0;
    let (tir, tbr1, tbr2) = (pct(in_range), pct(below_l1), pct(below_l2));
    let mut reasons = Vec::new();
    if tir < t.cgm_tir_min_percent {
        reasons.push(format!(
            "time in range {tir:.0} % (target ≥ {:.0} %)",
            t.cgm_tir_min_percent
        ));
    }
    if tbr1 >= t.cgm_below_l1_max_percent {
        reasons.push(format!(
            "time below 3.9 mmol/L {tbr1:.1} % (target < {:.0} %)",
            t.cgm_below_l1_max_percent
        ));
    }
    if tbr2 >= t.cgm_below_l2_max_percent {
        reasons.push(format!(
            "time below 3.0 mmol/L {tbr2:.1} % (target < {:.0} %)",
            t.cgm_below_l2_max_percent
        ));
    }
    if reasons.is_empty() {
        return Verdict::Met;
    }
    Verdict::Breach(Breach {
        rule_id: CGM_TIME_IN_RANGE.id.into(),
        rule_version: CGM_TIME_IN_RANGE.versioned(),
        severity: Severity::Amber,
        title: format!(
            "CGM targets not met over {} days: {}",
            t.cgm_window_days,
            reasons.join("; ")
        ),
        badness: (100.0 - tir) + 10.0 * tbr1 + 50.0 * tbr2,
        detail: json!({
            "time_in_range_percent": tir, "time_below_3_9_percent": tbr1,
            "time_below_3_0_percent": tbr2, "coverage_percent": coverage,
            "readings": points.len(), "window_days": t.cgm_window_days,
            "targets": { "tir_min": t.cgm_tir_min_percent, "below_l1_max": t.cgm_below_l1_max_percent,
                         "below_l2_max": t.cgm_below_l2_max_percent },
        }),
    })
}

/// An adherence alert when a device kind the patient uses has sent nothing for longer than
/// its setting. `last` is the newest reading (or, with none yet, when the device was bound).
pub fn missing_data(
    device_kind: &str,
    last: OffsetDateTime,
    now: OffsetDateTime,
    t: &Thresholds,
) -> Verdict {
    let Some(hours) = t.missing_after_hours.get(device_kind) else {
        return Verdict::Insufficient(format!("no adherence setting for {device_kind}"));
    };
    let silent = now - last;
    if silent <= Duration::hours(i64::from(*hours)) {
        return Verdict::Met;
    }
    Verdict::Breach(Breach {
        rule_id: format!("{}.{device_kind}", DATA_MISSING.id),
        rule_version: DATA_MISSING.versioned(),
        severity: Severity::Low,
        title: format!(
            "No {} readings for {} hours",
            device_kind.replace('_', " "),
            silent.whole_hours()
        ),
        badness: silent.as_seconds_f64(),
        detail: json!({ "device_kind": device_kind, "last_reading_at": last.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| last.to_string()),
                        "threshold_hours": hours }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    fn t() -> Thresholds {
        Thresholds::default()
    }

    /// Twice-daily duplicate readings (4 a day) for `days` days from 2026-11-01.
    fn protocol(days: u8, sys: f64, dia: f64) -> Vec<HomeBp> {
        (0..days)
            .flat_map(|d| {
                (0..4).map(move |_| HomeBp {
                    local_date: date!(2026 - 11 - 01) + Duration::days(i64::from(d)),
                    systolic: sys,
                    diastolic: dia,
                })
            })
            .collect()
    }

    #[test]
    fn the_first_day_is_discarded_before_averaging() {
        let mut readings = protocol(4, 130.0, 80.0);
        for r in readings.iter_mut().take(4) {
            r.systolic = 190.0;
        }
        assert_eq!(bp_home_average(&readings, Some(60), &t()), Verdict::Met);
    }

    #[test]
    fn home_average_targets_depend_on_age_and_are_exclusive() {
        let at_target = protocol(4, 134.9, 84.9);
        assert_eq!(bp_home_average(&at_target, Some(79), &t()), Verdict::Met);
        let on_line = protocol(4, 135.0, 80.0);
        assert!(matches!(
            bp_home_average(&on_line, Some(79), &t()),
            Verdict::Breach(_)
        ));
        assert_eq!(bp_home_average(&on_line, Some(80), &t()), Verdict::Met);
        let diastolic = protocol(4, 120.0, 85.0);
        assert!(matches!(
            bp_home_average(&diastolic, Some(85), &t()),
            Verdict::Breach(_)
        ));
        let Verdict::Breach(b) = bp_home_average(&on_line, None, &t()) else {
            panic!("unknown age uses the stricter target");
        };
        assert_eq!(b.detail["age_unknown"], true);
    }

    #[test]
    fn home_average_needs_four_days_and_twelve_readings() {
        assert!(matches!(
            bp_home_average(&protocol(3, 170.0, 100.0), Some(50), &t()),
            Verdict::Insufficient(_)
        ));
        let mut sparse = protocol(4, 170.0, 100.0);
        sparse.truncate(15);
        assert!(
            matches!(
                bp_home_average(&sparse, Some(50), &t()),
                Verdict::Insufficient(_)
            ),
            "11 after day 1"
        );
        sparse = protocol(4, 170.0, 100.0);
        sparse.truncate(16);
        assert!(
            matches!(bp_home_average(&sparse, Some(50), &t()), Verdict::Breach(_)),
            "12 after day 1"
        );
    }

    /// 14 days of 5-minute readings: `low2` below 3.0, `low1` in 3.0–3.8, `high` above 10,
    /// the rest at 6.0 mmol/L.
    fn cgm(n: usize, low2: usize, low1: usize, high: usize) -> Vec<CgmPoint> {
        (0..n)
            .map(|i| {
                let v = if i < low2 {
                    2.8
                } else if i < low2 + low1 {
                    3.5
                } else if i < low2 + low1 + high {
                    12.0
                } else {
                    6.0
                };
                CgmPoint {
                    value: Some(v),
                    mg_dl: false,
                    range: None,
                }
            })
            .collect()
    }

    const FULL: usize = 14 * 288;

    #[test]
    fn time_in_range_boundaries() {
        let seventy = (FULL as f64 * 0.30) as usize;
        assert_eq!(
            cgm_time_in_range(&cgm(FULL, 0, 0, seventy), &t()),
            Verdict::Met,
            "70 % in range"
        );
        assert!(matches!(
            cgm_time_in_range(&cgm(FULL, 0, 0, seventy + 1), &t()),
            Verdict::Breach(_)
        ));
    }

    #[test]
    fn time_below_range_boundaries() {
        let four = (FULL as f64 * 0.04).ceil() as usize;
        assert_eq!(
            cgm_time_in_range(&cgm(FULL, 0, four - 1, 0), &t()),
            Verdict::Met
        );
        assert!(matches!(
            cgm_time_in_range(&cgm(FULL, 0, four, 0), &t()),
            Verdict::Breach(_)
        ));
        let one = (FULL as f64 * 0.01).ceil() as usize;
        assert_eq!(
            cgm_time_in_range(&cgm(FULL, one - 1, 0, 0), &t()),
            Verdict::Met
        );
        assert!(matches!(
            cgm_time_in_range(&cgm(FULL, one, 0, 0), &t()),
            Verdict::Breach(_)
        ));
    }

    #[test]
    fn cgm_needs_seventy_percent_of_expected_readings() {
        let enough = (FULL as f64 * 0.70).ceil() as usize;
        assert!(matches!(
            cgm_time_in_range(&cgm(enough - 1, 0, 0, enough), &t()),
            Verdict::Insufficient(_)
        ));
        assert!(matches!(
            cgm_time_in_range(&cgm(enough, 0, 0, enough), &t()),
            Verdict::Breach(_)
        ));
    }

    #[test]
    fn cgm_points_are_classified_in_their_own_unit() {
        // 70 mg/dL is in range (3.886 mmol/L converted would not be); 69 is below.
        let mut points: Vec<CgmPoint> = (0..FULL)
            .map(|_| CgmPoint {
                value: Some(70.0),
                mg_dl: true,
                range: None,
            })
            .collect();
        assert_eq!(cgm_time_in_range(&points, &t()), Verdict::Met);
        for p in points.iter_mut().take(FULL / 20) {
            p.value = Some(69.0);
        }
        assert!(matches!(
            cgm_time_in_range(&points, &t()),
            Verdict::Breach(_)
        ));
        let mut lo = cgm(FULL, 0, 0, 0);
        for p in lo.iter_mut().take(FULL / 50) {
            p.range = Some(RangeFlag::Low);
        }
        let Verdict::Breach(b) = cgm_time_in_range(&lo, &t()) else {
            panic!("LO counts below range");
        };
        assert!(b.detail["time_below_3_0_percent"].as_f64().unwrap_or(0.0) >= 1.0);
    }

    #[test]
    fn missing_data_after_the_kind_setting() {
        let now = datetime!(2026-11-22 12:00 UTC);
        assert_eq!(
            missing_data("cgm", now - Duration::hours(6), now, &t()),
            Verdict::Met
        );
        let Verdict::Breach(b) = missing_data("cgm", now - Duration::hours(7), now, &t()) else {
            panic!("7 hours without CGM data");
        };
        assert_eq!(
            (b.rule_id.as_str(), b.severity),
            ("data.missing.cgm", Severity::Low)
        );
        assert_eq!(b.detail["last_reading_at"], "2026-11-22T05:00:00Z");
        assert!(matches!(
            missing_data("ketone_meter", now - Duration::days(30), now, &t()),
            Verdict::Insufficient(_)
        ));
    }
}
