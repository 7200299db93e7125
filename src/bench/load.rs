//! gRPC load: as-fast-as-possible throughput (unary and stream), a paced load that holds a
//! target rate and reports how far it falls behind, and the alert-latency probe.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures_util::{StreamExt as _, stream};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::Channel;
use vigil_ingest::domain::RawReading;
use vigil_proto::v1::{
    WatchAlertsRequest, alert_service_client::AlertServiceClient,
    ingest_service_client::IngestServiceClient,
};

use crate::simulate::send::{self, BATCH, Credentials, Tally, authorised};

/// gRPC requests in flight at once.
const IN_FLIGHT: usize = 32;

pub type Work = Vec<(Credentials, Vec<RawReading>)>;

/// `SubmitReadings` with up to 500 readings per call and [`IN_FLIGHT`] calls at a time.
pub async fn unary(
    client: &IngestServiceClient<Channel>,
    work: Work,
    tally: &Tally,
) -> anyhow::Result<()> {
    let calls: Vec<(Credentials, Vec<RawReading>)> = work
        .into_iter()
        .flat_map(|(device, readings)| {
            readings
                .chunks(BATCH)
                .map(|c| (device.clone(), c.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    let results: Vec<anyhow::Result<()>> = stream::iter(calls)
        .map(|(device, readings)| {
            let mut client = client.clone();
            async move {
                tally
                    .sent
                    .fetch_add(readings.len() as u64, Ordering::Relaxed);
                let response = send::submit(&mut client, &device, readings).await?;
                tally.count_response(&response);
                Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect()
}

/// `StreamReadings`: one stream per device, [`IN_FLIGHT`] devices at a time.
pub async fn streamed(
    client: &IngestServiceClient<Channel>,
    work: Work,
    tally: &Tally,
) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = stream::iter(work)
        .map(|(device, readings)| {
            let mut client = client.clone();
            async move {
                tally
                    .sent
                    .fetch_add(readings.len() as u64, Ordering::Relaxed);
                send::stream_device(&mut client, &device, &readings, tally).await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct Paced {
    pub target_per_sec: f64,
    pub seconds: f64,
    /// Readings the schedule called for by the end.
    pub scheduled: u64,
    /// Readings sent by the end.
    pub sent: u64,
    /// Readings answered (committed or refused) by the end.
    pub answered: u64,
    pub achieved_per_sec: f64,
    /// Readings scheduled but not yet answered at the end: how far the service fell behind.
    pub backlog: u64,
}

/// Offers requests at `rate` readings/s for `duration` (or until `requests` runs dry),
/// with up to `max_in_flight` calls outstanding; waits for every answer before returning.
pub async fn paced(
    client: &IngestServiceClient<Channel>,
    mut requests: mpsc::Receiver<(Credentials, Vec<RawReading>)>,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
    tally: Arc<Tally>,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Paced> {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    while Instant::now() < deadline {
        let Some((device, readings)) = requests.recv().await else {
            break;
        };
        let due = started + Duration::from_secs_f64(sent as f64 / rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit?,
            _ = tokio::time::sleep_until(deadline.into()) => break,
        };
        let n = readings.len() as u64;
        sent += n;
        tally.sent.fetch_add(n, Ordering::Relaxed);
        let mut client = client.clone();
        let tally = tally.clone();
        let failures = failures.clone();
        let progress = progress.clone();
        tasks.spawn(async move {
            match send::submit(&mut client, &device, readings).await {
                Ok(response) => tally.count_response(&response),
                Err(e) => {
                    tracing::warn!("paced load: {e:#}");
                    failures.fetch_add(n, Ordering::Relaxed);
                }
            }
            progress.inc(n);
            drop(permit);
        });
    }
    let seconds = started.elapsed().as_secs_f64().min(duration.as_secs_f64());
    let answered = tally.answered();
    let scheduled = ((rate * seconds) as u64).max(sent);
    while tasks.join_next().await.is_some() {}
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} readings of the paced load got no answer (see the warnings)");
    }
    Ok(Paced {
        target_per_sec: rate,
        seconds,
        scheduled,
        sent,
        answered,
        achieved_per_sec: answered as f64 / seconds,
        backlog: scheduled.saturating_sub(answered),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Commit (the `SubmitReadings` answer) → the alert event on a `WatchAlerts` stream, for a
/// probe patient alternating a low and an in-range glucose: each reading opens or resolves
/// an alert.
pub async fn alert_latency(
    ingest: &IngestServiceClient<Channel>,
    alerts: &mut AlertServiceClient<Channel>,
    probe: &Credentials,
    clinician_token: &str,
    samples: usize,
) -> anyhow::Result<Latency> {
    let mut events = alerts
        .watch_alerts(authorised(
            WatchAlertsRequest {
                after_event_id: None,
            },
            clinician_token,
        )?)
        .await
        .context("opening WatchAlerts")?
        .into_inner();
    let mut ingest = ingest.clone();
    let now = time::OffsetDateTime::now_utc();
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let at = now - time::Duration::seconds((samples - i) as i64);
        let reading = RawReading {
            kind: "blood_glucose".into(),
            measured_at: at
                .replace_nanosecond(0)
                .unwrap_or(at)
                .format(&time::format_description::well_known::Rfc3339)?,
            value: Some(if i % 2 == 0 { 3.5 } else { 6.0 }),
            unit: Some("mmol/L".into()),
            specimen: Some("capillary".into()),
            ..Default::default()
        };
        send::submit(&mut ingest, probe, vec![reading]).await?;
        let committed = Instant::now();
        tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .context("no alert event within 30 s")?
            .context("the alert stream ended")??;
        latencies.push(committed.elapsed());
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| ms(latencies[((latencies.len() as f64 - 1.0) * q).round() as usize]);
    Ok(Latency {
        samples,
        p50_ms: p(0.50),
        p95_ms: p(0.95),
        p99_ms: p(0.99),
        max_ms: latencies.last().copied().map_or(0.0, ms),
    })
}
