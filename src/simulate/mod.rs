//! `vigil simulate`: synthetic patients and their devices, sent through the real front-ends.
//!
//! The cohort is registered through the registry functions the admin commands use, then
//! its readings go out as devices send them: a backfill of past days, a catch-up burst (every
//! device re-sending its last hour at once), and/or live readings as their time comes.

pub mod enrol;
pub mod model;
pub mod send;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use vigil_ingest::{Settings, store};
use vigil_proto::v1::ingest_service_client::IngestServiceClient;

use enrol::Enrolled;
use model::{Condition, Episode};
use send::{Endpoints, Link, Tally, Transport};

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Number of synthetic patients.
    #[arg(long, default_value_t = 20)]
    pub patients: usize,
    /// The same seed gives the same patients and the same readings.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = Transport::Mqtt)]
    pub transport: Transport,
    /// Care team to enrol the patients in (created if missing).
    #[arg(long, default_value = "Simulated patients")]
    pub team: String,
    /// Send the readings of the last N days first, as fast as the service takes them.
    #[arg(long, default_value_t = 0)]
    pub backfill_days: u32,
    /// Then have every device re-send its last hour at once (a catch-up after an outage).
    #[arg(long)]
    pub burst: bool,
    /// Then keep sending readings as their time comes, until stopped (Ctrl-C).
    #[arg(long)]
    pub live: bool,
    /// Stop live sending after this many seconds.
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Demonstration: a day of backfill, then live, with one patient's night-time hypo in
    /// progress and another patient's severe blood pressure reading within a minute.
    #[arg(long)]
    pub demo: bool,
    /// gRPC endpoint of the ingest service (defaults to `grpc.listen` from the configuration).
    #[arg(long)]
    pub grpc_url: Option<String>,
    /// Devices sending at the same time.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

pub async fn run(
    settings: &Settings,
    mut args: SimulateArgs,
    json_output: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if args.demo {
        args.backfill_days = args.backfill_days.max(1);
        args.live = true;
    }
    let started = whole_second(OffsetDateTime::now_utc());
    let mut profiles = model::cohort(args.seed, args.patients);
    if args.demo {
        script_demo(&mut profiles, started);
    }
    let since =
        started - time::Duration::days(i64::from(args.backfill_days)) - time::Duration::hours(1);

    let pool = store::pool::build(&settings.database)?;
    let mut client = pool.get().await.context("connecting to the database")?;
    let (summary, cohort) = enrol::enrol(&mut client, &args.team, profiles, since).await?;
    drop(client);
    if json_output {
        println!("{}", json!({ "enrolled": summary }));
    } else {
        println!(
            "enrolled {} patients with {} devices in care team {:?} ({})",
            summary.patients, summary.devices, summary.team, summary.team_id
        );
    }

    let endpoints = Endpoints {
        mqtt: settings.mqtt.clone(),
        grpc: args
            .grpc_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", settings.grpc.listen)),
    };
    let mut fleet = Fleet::connect(cohort, args.transport, &endpoints, args.seed).await?;

    if args.backfill_days > 0 {
        let from = started - time::Duration::days(i64::from(args.backfill_days));
        fleet
            .send_window(from, started, args.concurrency, Some("backfill"))
            .await?;
    }
    if args.burst {
        let begun = std::time::Instant::now();
        let from = started - time::Duration::hours(1);
        let before = fleet.tally.answered();
        fleet
            .send_window(from, started, usize::MAX, Some("burst"))
            .await?;
        let n = fleet.tally.answered() - before;
        let secs = begun.elapsed().as_secs_f64();
        println!(
            "burst: {n} readings answered in {secs:.1} s ({:.0} readings/s)",
            n as f64 / secs
        );
    }
    if args.live {
        live(&mut fleet, &args, started, shutdown).await?;
    }
    if json_output {
        println!("{}", json!({ "answers": fleet.tally.snapshot() }));
    } else {
        println!("answers: {}", fleet.tally.snapshot());
    }
    Ok(())
}

/// Readings are measured at whole seconds.
pub fn whole_second(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// The demo's two scripted events, so alerts appear within a minute of starting.
fn script_demo(profiles: &mut [model::Profile], now: OffsetDateTime) {
    if let Some(p) = profiles
        .iter_mut()
        .find(|p| p.condition == Condition::Type1Diabetes)
    {
        p.add_episode(Episode::Hypoglycaemia {
            start: now - time::Duration::minutes(20),
        });
    }
    if let Some(p) = profiles
        .iter_mut()
        .find(|p| p.condition == Condition::Hypertension)
    {
        p.add_episode(Episode::SevereHypertension {
            at: now + time::Duration::seconds(30),
        });
    }
}

/// One link per device, in cohort order.
async fn connect(
    cohort: &[Enrolled],
    transport: Transport,
    endpoints: &Endpoints,
    tally: &Arc<Tally>,
) -> anyhow::Result<Vec<Vec<Link>>> {
    let grpc = IngestServiceClient::connect(endpoints.grpc.clone())
        .await
        .with_context(|| format!("connecting to the ingest service at {}", endpoints.grpc))?
        .max_decoding_message_size(16 * 1024 * 1024);
    let mut links = Vec::with_capacity(cohort.len());
    for patient in cohort {
        let mut own = Vec::with_capacity(patient.devices.len());
        for device in &patient.devices {
            own.push(Link::open(transport, endpoints, device.clone(), &grpc, tally.clone()).await?);
        }
        links.push(own);
    }
    Ok(links)
}

fn progress(label: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>9} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} readings ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(label.to_string());
    bar
}

/// The enrolled cohort with one open link per device.
pub struct Fleet {
    pub cohort: Vec<Enrolled>,
    links: Vec<Vec<Link>>,
    pub tally: Arc<Tally>,
    seed: u64,
}

impl Fleet {
    pub async fn connect(
        cohort: Vec<Enrolled>,
        transport: Transport,
        endpoints: &Endpoints,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let tally = Arc::new(Tally::default());
        let links = connect(&cohort, transport, endpoints, &tally).await?;
        Ok(Self {
            cohort,
            links,
            tally,
            seed,
        })
    }

    /// Sends every reading measured in `[from, to)`, each device on its own link, with a
    /// progress bar when `label` is given.
    pub async fn send_window(
        &mut self,
        from: OffsetDateTime,
        to: OffsetDateTime,
        concurrency: usize,
        label: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut work = Vec::new();
        for (patient, own) in self.cohort.iter().zip(self.links.iter_mut()) {
            for (link, readings) in own.iter_mut().zip(patient.readings(self.seed, from, to)?) {
                if !readings.is_empty() {
                    work.push((link, readings));
                }
            }
        }
        let total = work.iter().map(|(_, r)| r.len() as u64).sum();
        let bar = match label {
            Some(label) => progress(label, total),
            None => ProgressBar::hidden(),
        };
        let result = send::send_all(work, &self.tally, concurrency, &bar).await;
        bar.finish();
        result
    }
}

/// Sends readings as their measurement time passes, once a second.
async fn live(
    fleet: &mut Fleet,
    args: &SimulateArgs,
    started: OffsetDateTime,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let deadline = args
        .duration_secs
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let spinner = ProgressBar::new_spinner();
    let mut from = started;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let to = whole_second(OffsetDateTime::now_utc());
        if to <= from {
            continue;
        }
        fleet.send_window(from, to, args.concurrency, None).await?;
        from = to;
        spinner.set_message(format!("live: {}", fleet.tally.snapshot()));
        spinner.tick();
    }
    spinner.finish_and_clear();
    Ok(())
}
