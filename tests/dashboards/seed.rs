//! Realistic, reproducible data for the dashboards: a seeded generator standing in for the
//! device simulator. Three care teams (one without patients); patients with twice-daily
//! home blood pressure, 5-minute CGM over 90 days, fingersticks in mmol/L and mg/dL, LO/HI
//! results, ketones, weight; late backfill; quarantined messages; alerts and deliveries.

use rand::{Rng, SeedableRng, rngs::StdRng};
use time::{Date, Duration, OffsetDateTime, Time};
use tokio_postgres::Client;
use uuid::Uuid;

/// How one CGM user's glucose behaves and is sent.
#[derive(Clone, Copy)]
struct CgmProfile {
    mean: f64,
    /// Meal peak height, mmol/L.
    swing: f64,
    /// Sends mg/dL rather than mmol/L.
    mg_dl: bool,
    offset_minutes: i16,
    /// Sensor off between these many days ago.
    gap: Option<(i64, i64)>,
}

/// An alert as the alert worker would have left it.
struct SeedAlert<'a> {
    patient: Uuid,
    team: Uuid,
    rule: &'a str,
    severity: &'a str,
    state: &'a str,
    title: &'a str,
    ago: Duration,
    resolved_after: Option<Duration>,
}

/// What the tests need to know about the seeded data.
pub struct Seeded {
    pub readings: i64,
}

#[derive(Default)]
struct Batch {
    key: Vec<Uuid>,
    measured_at: Vec<OffsetDateTime>,
    patient_id: Vec<Uuid>,
    device_id: Vec<Uuid>,
    kind: Vec<&'static str>,
    value: Vec<Option<f64>>,
    unit: Vec<&'static str>,
    systolic: Vec<Option<f64>>,
    diastolic: Vec<Option<f64>>,
    pulse: Vec<Option<f64>>,
    original_value: Vec<Option<f64>>,
    original_unit: Vec<&'static str>,
    range: Vec<Option<&'static str>>,
    specimen: Vec<Option<&'static str>>,
    utc_offset_minutes: Vec<i16>,
    received_at: Vec<OffsetDateTime>,
    channel: Vec<&'static str>,
    late: Vec<bool>,
    fingerprint: Vec<Uuid>,
}

/// One reading; the fields not listed take the defaults of [`Reading::new`].
struct Reading {
    at: OffsetDateTime,
    kind: &'static str,
    value: Option<f64>,
    unit: &'static str,
    bp: Option<(f64, f64, f64)>,
    original: Option<(f64, &'static str)>,
    range: Option<&'static str>,
    specimen: Option<&'static str>,
    lag: Duration,
    channel: &'static str,
}

impl Reading {
    fn new(at: OffsetDateTime, kind: &'static str, unit: &'static str) -> Self {
        Self {
            at,
            kind,
            value: None,
            unit,
            bp: None,
            original: None,
            range: None,
            specimen: None,
            lag: Duration::seconds(30),
            channel: "mqtt",
        }
    }
}

struct Patient {
    id: Uuid,
    device: Uuid,
    offset_minutes: i16,
}

struct Generator {
    rng: StdRng,
    batch: Batch,
    now: OffsetDateTime,
    /// Readings received more than this after measurement are late (the service default).
    late_after: Duration,
}

impl Generator {
    fn uuid(&mut self) -> Uuid {
        Uuid::from_u128(self.rng.random())
    }

    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        // Box-Muller: enough for plausible readings without another dependency.
        let u1: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = self.rng.random();
        mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn push(&mut self, p: &Patient, r: Reading) {
        if r.at > self.now {
            return;
        }
        let received = (r.at + r.lag).min(self.now);
        let b = &mut self.batch;
        b.key.push(Uuid::from_u128(self.rng.random()));
        b.fingerprint.push(Uuid::from_u128(self.rng.random()));
        b.measured_at.push(r.at);
        b.patient_id.push(p.id);
        b.device_id.push(p.device);
        b.kind.push(r.kind);
        b.value.push(r.value);
        b.unit.push(r.unit);
        b.systolic.push(r.bp.map(|x| x.0));
        b.diastolic.push(r.bp.map(|x| x.1));
        b.pulse.push(r.bp.map(|x| x.2));
        let (ov, ou) = r.original.map_or((r.value, r.unit), |(v, u)| (Some(v), u));
        b.original_value.push(ov);
        b.original_unit.push(ou);
        b.range.push(r.range);
        b.specimen.push(r.specimen);
        b.utc_offset_minutes.push(p.offset_minutes);
        b.received_at.push(received);
        b.channel.push(r.channel);
        b.late.push(received - r.at > self.late_after);
    }

    /// Morning and evening sessions of two readings a minute apart (NG136 1.2.7).
    fn blood_pressure(&mut self, p: &Patient, days: std::ops::Range<i64>, mean: (f64, f64)) {
        for day in days {
            for hour in [7, 19] {
                let session = self.local_time(p, day, hour, 30);
                for k in 0..2 {
                    let sys = self.normal(mean.0, 9.0).round();
                    let dia = self.normal(mean.1, 6.0).round().min(sys - 20.0);
                    let pulse = self.normal(70.0, 7.0).round();
                    let lag = Duration::seconds(self.rng.random_range(20..600));
                    self.push(
                        p,
                        Reading {
                            bp: Some((sys, dia, pulse)),
                            lag,
                            channel: "grpc",
                            ..Reading::new(
                                session + Duration::minutes(k),
                                "blood_pressure",
                                "mm[Hg]",
                            )
                        },
                    );
                }
            }
        }
    }

    /// The patient's wall-clock time `hour:minute` on the day `days_ago` days back, ±20 min.
    fn local_time(&mut self, p: &Patient, days_ago: i64, hour: u8, minute: u8) -> OffsetDateTime {
        let local_today = (self.now + Duration::minutes(p.offset_minutes.into())).date();
        let date: Date = local_today - Duration::days(days_ago);
        let wall = date
            .with_time(Time::from_hms(hour, minute, 0).expect("time"))
            .assume_utc();
        wall - Duration::minutes(p.offset_minutes.into())
            + Duration::minutes(self.rng.random_range(-20..=20))
    }

    /// A CGM every 5 minutes: a daily rhythm, meal peaks and sensor noise. Readings beyond
    /// the sensor's 2.2–22.2 mmol/L are LOW/HIGH results carrying the limit.
    fn cgm(
        &mut self,
        p: &Patient,
        days: i64,
        mean: f64,
        swing: f64,
        mg_dl: bool,
        gap: Option<(i64, i64)>,
    ) {
        let start = self.now - Duration::days(days);
        let mut drift = 0.0;
        let mut t = start;
        while t <= self.now {
            let days_ago = (self.now - t).whole_days();
            if gap.is_some_and(|(from, to)| days_ago < from && days_ago >= to) {
                t += Duration::minutes(5);
                continue;
            }
            let local = t + Duration::minutes(p.offset_minutes.into());
            let hour = f64::from(local.hour()) + f64::from(local.minute()) / 60.0;
            let meals: f64 = [8.0, 13.0, 19.0]
                .iter()
                .map(|m| {
                    let d = hour - m;
                    if (0.0..3.0).contains(&d) {
                        swing * (1.0 - d / 3.0)
                    } else {
                        0.0
                    }
                })
                .sum();
            drift = 0.97 * drift + self.normal(0.0, 0.2);
            let dawn = 0.6 * ((hour - 5.0) / 24.0 * std::f64::consts::TAU).sin();
            let mmol = mean + meals + dawn + drift + self.normal(0.0, 0.2) - swing * 0.4;
            let (value, range, original) = if mmol < 2.2 {
                (
                    2.2,
                    Some("low"),
                    if mg_dl {
                        (40.0, "mg/dL")
                    } else {
                        (2.2, "mmol/L")
                    },
                )
            } else if mmol > 22.2 {
                (
                    22.2,
                    Some("high"),
                    if mg_dl {
                        (400.0, "mg/dL")
                    } else {
                        (22.2, "mmol/L")
                    },
                )
            } else if mg_dl {
                let mg = (mmol * 18.0156).round();
                (mg / 18.0156, None, (mg, "mg/dL"))
            } else {
                let v = (mmol * 10.0).round() / 10.0;
                (v, None, (v, "mmol/L"))
            };
            let lag = Duration::seconds(self.rng.random_range(5..90));
            self.push(
                p,
                Reading {
                    value: Some(value),
                    original: Some(original),
                    range,
                    specimen: Some("interstitial"),
                    lag,
                    ..Reading::new(t, "blood_glucose", "mmol/L")
                },
            );
            t += Duration::minutes(5);
        }
    }

    fn fingersticks(&mut self, p: &Patient, days: i64, hours: &[u8], mean: f64, mg_dl: bool) {
        for day in 0..days {
            for &hour in hours {
                let at = self.local_time(p, day, hour, 0);
                let mmol = self.normal(mean, 2.0).max(1.0);
                let (value, original) = if mg_dl {
                    let mg = (mmol * 18.0156).round();
                    (mg / 18.0156, (mg, "mg/dL"))
                } else {
                    let v = (mmol * 10.0).round() / 10.0;
                    (v, (v, "mmol/L"))
                };
                let lag = Duration::minutes(self.rng.random_range(1..30));
                self.push(
                    p,
                    Reading {
                        value: Some(value),
                        original: Some(original),
                        specimen: Some("capillary"),
                        channel: "grpc",
                        lag,
                        ..Reading::new(at, "blood_glucose", "mmol/L")
                    },
                );
            }
        }
    }

    fn daily(
        &mut self,
        p: &Patient,
        days: impl Iterator<Item = i64>,
        kind: &'static str,
        unit: &'static str,
        mean: f64,
        sd: f64,
    ) {
        for day in days {
            let at = self.local_time(p, day, 8, 0);
            let v = (self.normal(mean, sd) * 10.0).round() / 10.0;
            let lag = Duration::minutes(self.rng.random_range(1..120));
            self.push(
                p,
                Reading {
                    value: Some(v.max(0.0)),
                    channel: "grpc",
                    lag,
                    ..Reading::new(at, kind, unit)
                },
            );
        }
    }

    async fn flush(&mut self, client: &Client) -> i64 {
        let b = std::mem::take(&mut self.batch);
        let n = client
            .execute(
                "INSERT INTO readings (key, measured_at, patient_id, device_id, type, value, unit,
                     systolic, diastolic, pulse, original_value, original_unit, range, specimen,
                     utc_offset_minutes, received_at, channel, late, fingerprint)
                 SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::uuid[], $4::uuid[],
                     $5::text[], $6::float8[], $7::text[], $8::float8[], $9::float8[],
                     $10::float8[], $11::float8[], $12::text[], $13::text[], $14::text[],
                     $15::int2[], $16::timestamptz[], $17::text[], $18::bool[], $19::uuid[])",
                &[
                    &b.key,
                    &b.measured_at,
                    &b.patient_id,
                    &b.device_id,
                    &b.kind,
                    &b.value,
                    &b.unit,
                    &b.systolic,
                    &b.diastolic,
                    &b.pulse,
                    &b.original_value,
                    &b.original_unit,
                    &b.range,
                    &b.specimen,
                    &b.utc_offset_minutes,
                    &b.received_at,
                    &b.channel,
                    &b.late,
                    &b.fingerprint,
                ],
            )
            .await
            .expect("insert readings");
        i64::try_from(n).expect("count")
    }
}

async fn team(client: &Client, g: &mut Generator, name: &str) -> Uuid {
    let id = g.uuid();
    client
        .execute(
            "INSERT INTO care_teams (id, name) VALUES ($1, $2)",
            &[&id, &name],
        )
        .await
        .expect("team");
    id
}

async fn patient(
    client: &Client,
    g: &mut Generator,
    team: Uuid,
    nhs: Option<&str>,
    born: i32,
    offset_minutes: i16,
) -> Patient {
    let id = g.uuid();
    let dob = Date::from_calendar_date(born, time::Month::March, 14).expect("date");
    client
        .execute(
            "INSERT INTO patients (id, team_id, nhs_number, date_of_birth) VALUES ($1, $2, $3, $4)",
            &[&id, &team, &nhs, &dob],
        )
        .await
        .expect("patient");
    let device = g.uuid();
    Patient {
        id,
        device,
        offset_minutes,
    }
}

/// Seeds a database that has every migration applied. `seed` makes it reproducible; `now`
/// is the end of the data.
pub async fn seed(client: &Client, seed: u64, now: OffsetDateTime, cgm_patients: usize) -> Seeded {
    let mut g = Generator {
        rng: StdRng::seed_from_u64(seed),
        batch: Batch::default(),
        now,
        late_after: Duration::hours(1),
    };
    let mut readings = 0;
    // On plain PostgreSQL the writer creates monthly partitions on demand; these inserts
    // bypass it.
    client
        .execute(
            "SELECT vigil_ensure_reading_partition(m)
             FROM storage_engine, generate_series($1::timestamptz - interval '92 days',
                                                  $1::timestamptz, interval '1 month') m
             WHERE engine = 'partitioned'",
            &[&now],
        )
        .await
        .expect("partitions");

    let clinic = team(client, &mut g, "Hypertension clinic").await;
    let controlled = patient(client, &mut g, clinic, Some("9434765919"), 1962, 0).await;
    g.blood_pressure(&controlled, 0..90, (127.0, 79.0));
    g.daily(&controlled, 0..90, "body_weight", "kg", 82.0, 0.4);
    let elderly_high = patient(client, &mut g, clinic, Some("9434765870"), 1940, 0).await;
    g.blood_pressure(&elderly_high, 0..90, (153.0, 88.0));
    g.daily(&elderly_high, 0..90, "heart_rate", "/min", 74.0, 6.0);
    // Stopped measuring five days ago: the worklist's missing-data panel lists them.
    let stopped = patient(client, &mut g, clinic, None, 1970, 0).await;
    g.blood_pressure(&stopped, 5..60, (141.0, 91.0));
    // Enrolled, never measured.
    patient(client, &mut g, clinic, None, 1985, 0).await;
    readings += g.flush(client).await;

    let diabetes = team(client, &mut g, "Diabetes team").await;
    team(client, &mut g, "New team").await;
    // CGM users, each with a different control and a different way of sending.
    let profiles = [
        // Well controlled: meets every consensus target.
        CgmProfile {
            mean: 6.8,
            swing: 2.5,
            mg_dl: false,
            offset_minutes: 0,
            gap: None,
        },
        // Poorly controlled, sending mg/dL: time in range well under 50 %.
        CgmProfile {
            mean: 13.0,
            swing: 5.0,
            mg_dl: true,
            offset_minutes: 60,
            gap: None,
        },
        // In between, in India, with a two-day sensor gap.
        CgmProfile {
            mean: 7.5,
            swing: 4.0,
            mg_dl: false,
            offset_minutes: 330,
            gap: Some((22, 20)),
        },
    ];
    for i in 0..cgm_patients {
        let CgmProfile {
            mean,
            swing,
            mg_dl,
            offset_minutes: offset,
            gap,
        } = profiles[i % profiles.len()];
        let nhs = ["9100000019", "9100000027", "9100000035"].get(i).copied();
        let p = patient(
            client,
            &mut g,
            diabetes,
            nhs,
            1975 + i32::try_from(i % 30).expect("i"),
            offset,
        )
        .await;
        g.cgm(&p, 90, mean, swing, mg_dl, gap);
        g.fingersticks(&p, 90, &[7, 21], mean + 1.0, mg_dl);
        g.daily(
            &p,
            (0..90).step_by(7),
            "blood_ketones",
            "mmol/L",
            if mg_dl { 1.2 } else { 0.3 },
            0.6,
        );
        g.daily(&p, (0..90).step_by(3), "body_weight", "kg", 76.0, 0.5);
        if i % profiles.len() == 1 {
            g.blood_pressure(&p, 0..30, (138.0, 86.0));
        }
        readings += g.flush(client).await;
    }
    // Fingerstick-only patient in mg/dL, with meter LO and HI results.
    let meter = patient(client, &mut g, diabetes, Some("9000000009"), 1958, 0).await;
    g.fingersticks(&meter, 90, &[7, 12, 18, 22], 8.5, true);
    for (days_ago, range, mg) in [(3, "low", 20.0), (40, "high", 600.0)] {
        let at = g.local_time(&meter, days_ago, 3, 0);
        g.push(
            &meter,
            Reading {
                range: Some(range),
                original: Some((mg, "mg/dL")),
                value: Some(mg / 18.0156),
                specimen: Some("capillary"),
                ..Reading::new(at, "blood_glucose", "mmol/L")
            },
        );
    }
    // A meter LO without the limit: no number at all.
    let at = g.local_time(&meter, 1, 4, 0);
    g.push(
        &meter,
        Reading {
            range: Some("low"),
            original: Some((0.0, "mg/dL")),
            specimen: Some("capillary"),
            ..Reading::new(at, "blood_glucose", "mmol/L")
        },
    );
    // A day of readings from two days ago that arrived yesterday: late backfill.
    for h in 0..24 {
        let at = now - Duration::days(2) - Duration::hours(h);
        g.push(
            &meter,
            Reading {
                value: Some(7.0),
                original: Some((126.0, "mg/dL")),
                specimen: Some("capillary"),
                lag: Duration::hours(30),
                ..Reading::new(at, "blood_glucose", "mmol/L")
            },
        );
    }
    readings += g.flush(client).await;

    quarantine(client, &mut g).await;
    alerts(client, &mut g, clinic, diabetes, &elderly_high).await;
    Seeded { readings }
}

async fn quarantine(client: &Client, g: &mut Generator) {
    let reasons = [
        ("implausible_value", 40),
        ("unknown_device", 25),
        ("future_timestamp", 10),
        ("malformed_payload", 15),
        ("systolic_not_above_diastolic", 10),
    ];
    let total: u32 = reasons.iter().map(|r| r.1).sum();
    for _ in 0..400 {
        let pick = g.rng.random_range(0..total);
        let mut acc = 0;
        let reason = reasons
            .iter()
            .find(|(_, w)| {
                acc += w;
                pick < acc
            })
            .map_or("implausible_value", |r| r.0);
        let at = g.now - Duration::seconds(g.rng.random_range(0..90 * 86_400));
        let replayed = (reason == "unknown_device" && g.rng.random_bool(0.6))
            .then(|| (at + Duration::hours(g.rng.random_range(1..72))).min(g.now));
        let channel = if g.rng.random_bool(0.7) {
            "mqtt"
        } else {
            "grpc"
        };
        let payload = br#"{"type":"blood_pressure"}"#.to_vec();
        client
            .execute(
                "INSERT INTO quarantine (received_at, channel, reason, message, payload_format,
                     payload, payload_size, payload_truncated, replayed_at, replay_outcome)
                 VALUES ($1, $2, $3, 'seeded', 'message', $4, $5, false, $6,
                         CASE WHEN $6::timestamptz IS NULL THEN NULL ELSE 'accepted' END)",
                &[
                    &at,
                    &channel,
                    &reason,
                    &payload,
                    &i32::try_from(payload.len()).expect("len"),
                    &replayed,
                ],
            )
            .await
            .expect("quarantine");
    }
}

/// Alerts as the alert worker would leave them, with their events and deliveries.
async fn alerts(
    client: &Client,
    g: &mut Generator,
    clinic: Uuid,
    diabetes: Uuid,
    hypertensive: &Patient,
) {
    let diabetic: Uuid = client
        .query_one(
            "SELECT id FROM patients WHERE team_id = $1 ORDER BY created_at, id LIMIT 1",
            &[&diabetes],
        )
        .await
        .expect("a diabetes patient")
        .get(0);
    let now = g.now;
    let rows = [
        SeedAlert {
            patient: hypertensive.id,
            team: clinic,
            rule: "bp_home_average",
            severity: "amber",
            state: "open",
            title: "Home average above target",
            ago: Duration::days(3),
            resolved_after: None,
        },
        SeedAlert {
            patient: diabetic,
            team: diabetes,
            rule: "glucose_very_low",
            severity: "red",
            state: "acknowledged",
            title: "Glucose below 3.0 mmol/L",
            ago: Duration::hours(2),
            resolved_after: None,
        },
        SeedAlert {
            patient: diabetic,
            team: diabetes,
            rule: "ketones_high",
            severity: "amber",
            state: "resolved",
            title: "Blood ketones 1.6 mmol/L or more",
            ago: Duration::days(20),
            resolved_after: Some(Duration::days(19)),
        },
        SeedAlert {
            patient: diabetic,
            team: diabetes,
            rule: "cgm_no_data",
            severity: "low",
            state: "open",
            title: "No CGM data for 30 minutes",
            ago: Duration::minutes(40),
            resolved_after: None,
        },
    ];
    for SeedAlert {
        patient,
        team,
        rule,
        severity,
        state,
        title,
        ago,
        resolved_after,
    } in rows
    {
        let id = g.uuid();
        let opened = now - ago;
        let resolved = resolved_after.map(|d| now - d);
        let acknowledged = (state == "acknowledged").then(|| opened + Duration::minutes(30));
        client
            .execute(
                "INSERT INTO alerts (id, patient_id, team_id, rule_id, rule_version, severity, state,
                     title, detail, first_breach_at, latest_breach_at, opened_at, updated_at,
                     acknowledged_at, resolved_at)
                 VALUES ($1, $2, $3, $4, '1', $5, $6, $7, '{}', $8, $8, $8, $8, $9, $10)",
                &[&id, &patient, &team, &rule, &severity, &state, &title, &opened, &acknowledged, &resolved],
            )
            .await
            .expect("alert");
        let event: i64 = client
            .query_one(
                "INSERT INTO alert_events (alert_id, team_id, kind, at, alert)
                 VALUES ($1, $2, 'opened', $3, jsonb_build_object('title', $4::text))
                 RETURNING id",
                &[&id, &team, &opened, &title],
            )
            .await
            .expect("event")
            .get(0);
        // The fan-out trigger queued an MQTT delivery; settle it as the worker would.
        let (state, error) = match severity {
            "red" => ("dead", Some("broker unavailable after 8 attempts")),
            "low" => ("pending", None),
            _ => ("delivered", None),
        };
        client
            .execute(
                "UPDATE deliveries SET state = $2, last_error = $3,
                     attempts = CASE WHEN $2 = 'dead' THEN 8 ELSE 1 END,
                     delivered_at = CASE WHEN $2 = 'delivered' THEN now() END
                 WHERE event_id = $1",
                &[&event, &state, &error],
            )
            .await
            .expect("delivery");
    }
}
