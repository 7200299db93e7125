//! `vigil bench`: every ceiling and every service measurement in one run on one machine, so
//! the ratios between them mean something (see docs/benchmarks.md).
//!
//! The bench creates a scratch database on the configured server, starts `vigil ingest` and
//! `vigil alerts` against it as child processes, and generates its load with the simulator's
//! patient model. Each phase enrols its own copy of the cohort (new patient and device ids,
//! the same readings), so no phase sees another's rows as duplicates.

mod broker;
mod load;
mod report;
mod services;
mod storage;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use indicatif::ProgressBar;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tonic::transport::Channel as GrpcChannel;
use uuid::Uuid;
use vigil_ingest::{
    Settings,
    domain::{
        Channel, Reading,
        validate::{Context, validate},
    },
    store::{self, maintenance, migrate},
};
use vigil_proto::v1::{
    alert_service_client::AlertServiceClient, ingest_service_client::IngestServiceClient,
};

use crate::simulate::{
    enrol::{self, Enrolled},
    model::{self, DeviceKind, Profile},
    send::{Credentials, Tally},
    whole_second,
};
use load::Work;
use report::{Burst, Machine, Report};
use services::Service;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Readings per throughput measurement (storage, gRPC, MQTT).
    #[arg(long, default_value_t = 200_000)]
    pub readings: usize,
    /// Sustained catch-up burst rate, readings/s (the national estimate in docs/benchmarks.md).
    #[arg(long, default_value_t = 36_000.0)]
    pub burst_rate: f64,
    #[arg(long, default_value_t = 300)]
    pub burst_secs: u64,
    /// Alert-latency samples taken at half the measured maximum gRPC rate.
    #[arg(long, default_value_t = 200)]
    pub latency_samples: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Markdown file the run is appended to.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub markdown: PathBuf,
    #[arg(long)]
    pub no_markdown: bool,
    /// Keep the scratch database afterwards (for inspection).
    #[arg(long)]
    pub keep_database: bool,
}

/// Days of readings per throughput cohort: fewer patients to enrol than one day would need.
const COHORT_DAYS: i64 = 2;
/// Days of history each burst device re-sends from.
const BURST_DAYS: i64 = 14;
const BURST_IN_FLIGHT: usize = 64;

pub async fn run(
    config: Option<&Path>,
    settings: &Settings,
    args: BenchArgs,
) -> anyhow::Result<()> {
    let begun = Instant::now();
    let tag = Uuid::new_v4().simple().to_string()[..12].to_string();
    let mut bench = settings.clone();
    bench.database.url = scratch_url(&settings.database.url, &format!("vigil_bench_{tag}"))?;
    bench.mqtt.client_id = format!("vigil-bench-{tag}");
    bench.mqtt.topic_root = format!("bench/{tag}/vigil/v1");
    bench.mqtt.share_group = format!("bench{tag}");

    store::pool::create_database_if_missing(&bench.database.url).await?;
    let pool = store::pool::build(&bench.database)?;
    let mut db = pool
        .get()
        .await
        .context("connecting to the bench database")?;
    migrate::run(&mut db, bench.storage.timescaledb).await?;
    maintenance::apply_policies(&db, &bench.storage).await?;
    let result = measure(config, &bench, &args, &tag, &mut db).await;
    drop(db);
    drop(pool);
    if !args.keep_database {
        drop_database(&settings.database.url, &bench.database.url).await?;
    }
    let mut report = result?;
    report.judge();
    report.print(begun.elapsed());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !args.no_markdown {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        report.append_markdown(&args.markdown, &command)?;
        println!("appended to {}", args.markdown.display());
    }
    Ok(())
}

async fn measure(
    config: Option<&Path>,
    bench: &Settings,
    args: &BenchArgs,
    tag: &str,
    db: &mut Client,
) -> anyhow::Result<Report> {
    let ingest = Service::start("ingest", config, bench).await?;
    let alerts = Service::start("alerts", config, bench).await?;
    let machine = Machine::describe(db, broker::version(&bench.mqtt, tag).await).await?;
    let grpc = IngestServiceClient::connect(format!("http://{}", ingest.grpc))
        .await
        .context("connecting to the ingest gRPC service")?;

    let to = whole_second(OffsetDateTime::now_utc()) - time::Duration::hours(2);
    let from = to - time::Duration::days(COHORT_DAYS);
    let profiles = cohort_of(args.seed, args.readings, from, to);
    let n = count(&profiles, args.seed, from, to);

    println!("storage ceiling: {n} readings per method");
    let readings = validated(&profiles, args.seed, from, to)?;
    let storage = storage::ceiling(db, &readings).await?;
    let ceiling = storage::best(&storage).map_or(0.0, |m| m.per_sec);
    drop(readings);

    println!("gRPC unary");
    let (unary_cohort, work) = enrolled_work(
        db,
        &format!("bench unary {tag}"),
        &profiles,
        args.seed,
        from,
        to,
    )
    .await?;
    let grpc_unary = timed(&unary_cohort, db, n, async {
        load::unary(&grpc, work, &Tally::default()).await
    })
    .await?;

    println!("gRPC stream");
    let (stream_cohort, work) = enrolled_work(
        db,
        &format!("bench stream {tag}"),
        &profiles,
        args.seed,
        from,
        to,
    )
    .await?;
    let grpc_stream = timed(&stream_cohort, db, n, async {
        load::streamed(&grpc, work, &Tally::default()).await
    })
    .await?;

    println!("MQTT: broker ceiling, then through the service");
    let (mqtt_cohort, work) = enrolled_work(
        db,
        &format!("bench mqtt {tag}"),
        &profiles,
        args.seed,
        from,
        to,
    )
    .await?;
    let messages = mqtt_messages(&bench.mqtt.topic_root, &work)?;
    let broker_ceiling = broker::ceiling(&bench.mqtt, tag, &messages).await?;
    let mut publisher = broker::Publisher::connect(&bench.mqtt, format!("bench-{tag}-pub")).await?;
    let mqtt = timed(&mqtt_cohort, db, n, async {
        publisher.publish_all(&messages).await
    })
    .await?;
    drop(messages);

    println!(
        "burst: {:.0} readings/s for {} s",
        args.burst_rate, args.burst_secs
    );
    let burst = burst(
        db,
        &grpc,
        args,
        tag,
        args.burst_rate,
        Duration::from_secs(args.burst_secs),
    )
    .await?;

    let half = grpc_unary.max(grpc_stream) / 2.0;
    println!("alert latency at {half:.0} readings/s");
    let alert_latency = latency_under_load(db, &grpc, &alerts, args, tag, half).await?;

    let mib = |s: &Service| s.peak_rss().map_or(0.0, |b| b as f64 / 1024.0 / 1024.0);
    let ingest_peak_rss_mib = mib(&ingest);
    let alerts_peak_rss_mib = mib(&alerts);
    ingest.stop().await?;
    alerts.stop().await?;
    Ok(Report {
        date: OffsetDateTime::now_utc().date().to_string(),
        machine,
        readings_per_phase: n,
        storage,
        storage_ceiling_per_sec: ceiling,
        grpc_unary_per_sec: grpc_unary,
        grpc_stream_per_sec: grpc_stream,
        broker_ceiling_per_sec: broker_ceiling,
        mqtt_per_sec: mqtt,
        burst,
        alert_latency_load_per_sec: half,
        alert_latency,
        ingest_peak_rss_mib,
        alerts_peak_rss_mib,
        targets: Vec::new(),
    })
}

/// The URL of database `name` on the same server as `url`.
fn scratch_url(url: &str, name: &str) -> anyhow::Result<String> {
    let (server, rest) = url
        .rsplit_once('/')
        .context("the database URL has no database name")?;
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    Ok(format!("{server}/{name}{query}"))
}

async fn drop_database(admin_url: &str, scratch: &str) -> anyhow::Result<()> {
    let name = scratch
        .rsplit_once('/')
        .map(|(_, n)| n.split('?').next().unwrap_or(n))
        .context("scratch database name")?;
    let maintenance_url = scratch_url(admin_url, "postgres")?;
    let (client, connection) =
        tokio_postgres::connect(&maintenance_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    Ok(())
}

/// The first patients of the seeded cohort whose readings in `[from, to)` reach `n`.
fn cohort_of(seed: u64, n: usize, from: OffsetDateTime, to: OffsetDateTime) -> Vec<Profile> {
    let mut profiles = Vec::new();
    let mut total = 0;
    let mut index = 1;
    while total < n {
        index *= 2;
        profiles = model::cohort(seed, index);
        total = count(&profiles, seed, from, to);
    }
    while let Some(last) = profiles.last() {
        let without = total - last.readings(seed, from, to).len();
        if without < n {
            break;
        }
        total = without;
        profiles.pop();
    }
    profiles
}

fn count(profiles: &[Profile], seed: u64, from: OffsetDateTime, to: OffsetDateTime) -> usize {
    profiles
        .iter()
        .map(|p| p.readings(seed, from, to).len())
        .sum()
}

/// The cohort's readings through the service's own validation, as from unregistered
/// devices (the storage ceiling needs no registry).
fn validated(
    profiles: &[Profile],
    seed: u64,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> anyhow::Result<Vec<Reading>> {
    let rules = vigil_ingest::config::ValidationSettings::default();
    let received_at = OffsetDateTime::now_utc();
    let mut out = Vec::new();
    for profile in profiles {
        let devices: Vec<Uuid> = profile.devices.iter().map(|_| Uuid::new_v4()).collect();
        for reading in profile.readings(seed, from, to) {
            let raw = serde_json::from_value(reading.to_json(profile))?;
            let ctx = Context {
                device_id: devices[reading.device],
                channel: Channel::Grpc,
                received_at,
                rules: &rules,
            };
            out.push(
                validate(&raw, &ctx)
                    .map_err(|r| anyhow::anyhow!("{}: {}", r.reason.code(), r.message))?,
            );
        }
    }
    Ok(out)
}

async fn enrolled_work(
    db: &mut Client,
    team: &str,
    profiles: &[Profile],
    seed: u64,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> anyhow::Result<(Vec<Enrolled>, Work)> {
    let (_, cohort) = enrol::enrol(db, team, profiles.to_vec(), from).await?;
    let mut work = Vec::new();
    for patient in &cohort {
        for (device, readings) in patient
            .devices
            .iter()
            .zip(patient.readings(seed, from, to)?)
        {
            if !readings.is_empty() {
                work.push((device.clone(), readings));
            }
        }
    }
    Ok((cohort, work))
}

async fn stored(db: &Client, cohort: &[Enrolled]) -> anyhow::Result<u64> {
    let patients: Vec<Uuid> = cohort.iter().map(|p| p.patient_id).collect();
    let row = db
        .query_one(
            "SELECT count(*) FROM readings WHERE patient_id = ANY($1)",
            &[&patients],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Readings/s from the start of `send` until all `n` readings of `cohort` are stored.
async fn timed(
    cohort: &[Enrolled],
    db: &Client,
    n: usize,
    send: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    send.await?;
    let mut last = (0, Instant::now());
    loop {
        let now = stored(db, cohort).await?;
        if now >= n as u64 {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("only {now} of {n} readings stored, and no progress for 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn mqtt_messages(root: &str, work: &Work) -> anyhow::Result<Vec<(String, Bytes)>> {
    let mut messages = Vec::new();
    for (device, readings) in work {
        let topic = format!("{root}/devices/{}/readings", device.device_id);
        for reading in readings {
            messages.push((topic.clone(), Bytes::from(serde_json::to_vec(reading)?)));
        }
    }
    Ok(messages)
}

/// Profiles of patients on a 1-minute CGM, enough to supply `total` readings over
/// [`BURST_DAYS`] days.
fn cgm_cohort(seed: u64, total: f64) -> Vec<Profile> {
    let per_device = 1440.0 * BURST_DAYS as f64;
    let wanted = (total / per_device).ceil() as usize + 1;
    let mut found = Vec::new();
    let mut size = wanted * 8;
    while found.len() < wanted {
        found = model::cohort(seed, size)
            .into_iter()
            .filter(|p| {
                p.devices.iter().any(|d| {
                    d.kind == DeviceKind::Cgm && d.interval == Some(time::Duration::minutes(1))
                })
            })
            .take(wanted)
            .collect();
        size *= 2;
    }
    found
}

/// Streams the cohort's readings as catch-up uploads: one request per device per hour of
/// history, newest day first, generated on a blocking thread as the load consumes them.
fn catch_up_uploads(
    cohort: Arc<Vec<Enrolled>>,
    seed: u64,
    end: OffsetDateTime,
) -> mpsc::Receiver<(Credentials, Vec<vigil_ingest::domain::RawReading>)> {
    let (tx, rx) = mpsc::channel(4096);
    tokio::task::spawn_blocking(move || {
        for day in 0..BURST_DAYS {
            let to = end - time::Duration::days(day);
            let from = to - time::Duration::days(1);
            for patient in cohort.iter() {
                let Ok(by_device) = patient.readings(seed, from, to) else {
                    return;
                };
                for (device, readings) in patient.devices.iter().zip(by_device) {
                    let mut hour: Vec<_> = Vec::new();
                    let mut hour_start = from;
                    for (raw, at) in readings.into_iter().map(|r| {
                        let at = OffsetDateTime::parse(
                            &r.measured_at,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .unwrap_or(from);
                        (r, at)
                    }) {
                        if at >= hour_start + time::Duration::hours(1) && !hour.is_empty() {
                            if tx
                                .blocking_send((device.clone(), std::mem::take(&mut hour)))
                                .is_err()
                            {
                                return;
                            }
                            hour_start = at;
                        }
                        hour.push(raw);
                    }
                    if !hour.is_empty() && tx.blocking_send((device.clone(), hour)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

async fn burst(
    db: &mut Client,
    grpc: &IngestServiceClient<GrpcChannel>,
    args: &BenchArgs,
    tag: &str,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Burst> {
    let end = whole_second(OffsetDateTime::now_utc()) - time::Duration::hours(1);
    let profiles = cgm_cohort(
        args.seed.wrapping_add(1),
        rate * duration.as_secs_f64() * 1.2,
    );
    let since = end - time::Duration::days(BURST_DAYS);
    let (_, cohort) = enrol::enrol(db, &format!("bench burst {tag}"), profiles, since).await?;
    let cohort = Arc::new(cohort);
    let uploads = catch_up_uploads(cohort.clone(), args.seed.wrapping_add(1), end);
    let tally = Arc::new(Tally::default());
    let bar = ProgressBar::new((rate * duration.as_secs_f64()) as u64);
    let load = load::paced(
        grpc,
        uploads,
        rate,
        duration,
        BURST_IN_FLIGHT,
        tally.clone(),
        &bar,
    )
    .await?;
    bar.finish_and_clear();
    let stored = stored(db, &cohort).await?;
    let devices: Vec<Uuid> = cohort
        .iter()
        .flat_map(|p| p.devices.iter().map(|d| d.device_id))
        .collect();
    let quarantined: i64 = db
        .query_one(
            "SELECT count(*) FROM quarantine WHERE device_id = ANY($1)",
            &[&devices],
        )
        .await?
        .get(0);
    let quarantined = quarantined as u64;
    let duplicate = tally.duplicate.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Burst {
        lost: load.sent.saturating_sub(stored + quarantined + duplicate),
        load,
        stored,
        quarantined,
    })
}

async fn latency_under_load(
    db: &mut Client,
    grpc: &IngestServiceClient<GrpcChannel>,
    alerts: &Service,
    args: &BenchArgs,
    tag: &str,
    rate: f64,
) -> anyhow::Result<load::Latency> {
    let team = format!("bench latency {tag}");
    let team_id = store::admin::add_team(db, &team).await?;
    let (patient, _) = store::admin::add_patient(db, &team, None, None).await?;
    let since = OffsetDateTime::now_utc() - time::Duration::days(1);
    let device =
        store::admin::add_device(db, Uuid::new_v4(), patient, "glucose_meter", None, since).await?;
    let probe = Credentials {
        device_id: device.id,
        token: device.token,
    };
    let clinician = vigil_alerts::clinicians::add(&*db, "bench clinician", &[team_id]).await?;
    let mut api = AlertServiceClient::connect(format!("http://{}", alerts.grpc))
        .await
        .context("connecting to the alert service")?;

    let end = whole_second(OffsetDateTime::now_utc()) - time::Duration::hours(1);
    let profiles = cgm_cohort(args.seed.wrapping_add(2), rate * 120.0);
    let (_, cohort) = enrol::enrol(
        db,
        &format!("bench background {tag}"),
        profiles,
        end - time::Duration::days(BURST_DAYS),
    )
    .await?;
    let uploads = catch_up_uploads(Arc::new(cohort), args.seed.wrapping_add(2), end);
    let background = {
        let grpc = grpc.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let guard = stop.clone();
        let task = tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(64);
            let forward = tokio::spawn(async move {
                let mut uploads = uploads;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        upload = uploads.recv() => match upload {
                            Some(u) => if tx.send(u).await.is_err() { return },
                            None => return,
                        }
                    }
                }
            });
            let result = load::paced(
                &grpc,
                rx,
                rate,
                Duration::from_secs(600),
                BURST_IN_FLIGHT,
                Arc::new(Tally::default()),
                &ProgressBar::hidden(),
            )
            .await;
            forward.abort();
            result
        });
        (guard, task)
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let latency = load::alert_latency(
        grpc,
        &mut api,
        &probe,
        &clinician.token,
        args.latency_samples,
    )
    .await;
    background.0.cancel();
    let load = background.1.await??;
    println!(
        "  background load held {:.0} readings/s during the probe",
        load.achieved_per_sec
    );
    latency
}
