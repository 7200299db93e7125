//! The one batching writer. Front-ends send [`Submission`]s through a bounded queue; the
//! writer groups them until `batch.max_readings` or `batch.linger_ms`, attributes each
//! reading to the patient its device was bound to at measurement time, and commits readings
//! and quarantine entries in one transaction. Replies go out only after COMMIT, which is
//! what lets MQTT acknowledge and gRPC answer.
//!
//! Idempotency is `INSERT … ON CONFLICT DO NOTHING` on the key and on the content
//! fingerprint; readings that insert nothing are reported as duplicates.
//!
//! Consent is judged inside the transaction: it takes `ROW EXCLUSIVE` on `readings` before
//! it reads which patients have withdrawn, and a withdrawal takes `SHARE` on `readings`
//! (see `store::consent`), so a withdrawal either sees this batch committed or this batch
//! sees the withdrawal. A withdrawn patient's readings are refused and not kept anywhere.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::{
    sync::{Mutex, OnceCell, mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use uuid::Uuid;

use vigil_alerts::{record::Inserted, rules::Observation};

use super::{
    Pool, StoreError,
    rows::{INSERT_READINGS, ReadingRows},
};
use crate::{
    config::{BatchSettings, QuarantineSettings},
    domain::{Channel, Reading, Refusal, RejectReason as R},
    health::Health,
    metrics as m,
    submission::{Item, Outcome, PayloadFormat, Quarantined, Submission},
};

struct Request {
    submission: Submission,
    reply: oneshot::Sender<Result<Vec<Outcome>, StoreError>>,
}

/// Why a submission got no outcome.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the write queue is full")]
    QueueFull,
    #[error("the service is shutting down")]
    Closed,
    #[error("the write was interrupted before COMMIT")]
    Interrupted,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Request>,
}

impl WriterHandle {
    /// Waits for queue space (backpressure), then for the commit.
    pub async fn submit(&self, submission: Submission) -> Result<Vec<Outcome>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { submission, reply })
            .await
            .map_err(|_| SubmitError::Closed)?;
        Self::outcome(rx).await
    }

    /// Refuses at once when the queue is full; otherwise waits for the commit.
    pub async fn try_submit(&self, submission: Submission) -> Result<Vec<Outcome>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Request { submission, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
            })?;
        Self::outcome(rx).await
    }

    async fn outcome(
        rx: oneshot::Receiver<Result<Vec<Outcome>, StoreError>>,
    ) -> Result<Vec<Outcome>, SubmitError> {
        match rx.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(SubmitError::Interrupted),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    TimescaleDb,
    Partitioned,
}

pub struct Writer {
    rx: mpsc::Receiver<Request>,
    batch: BatchSettings,
    store: Store,
    /// Cancelled when intake stops: commit what arrives without lingering.
    drain: CancellationToken,
}

/// A batch task that panicked failed only its own submissions: their replies are dropped,
/// so gRPC callers get UNAVAILABLE and MQTT messages stay unacknowledged for redelivery,
/// while the writer goes on with the next batch.
fn report(done: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(e)) = done {
        error!(error = %e, "a batch write failed unexpectedly; its submissions were not stored");
        metrics::counter!(m::WRITE_FAILURES).increment(1);
    }
}

/// What a batch write needs, shared by the batches in flight.
#[derive(Clone)]
struct Store {
    pool: Pool,
    quarantine: QuarantineSettings,
    max_retry_backoff: Duration,
    health: Health,
    engine: Arc<OnceCell<Engine>>,
    /// Months whose partition is known to exist; the lock also keeps two batches from
    /// creating the same partition at once.
    partitions: Arc<Mutex<HashSet<(i32, u8)>>>,
    /// Cancelled when the shutdown grace period is over: stop retrying and give up.
    abandon: CancellationToken,
}

/// Tokens that steer the writer through shutdown.
#[derive(Clone, Default)]
pub struct Shutdown {
    pub drain: CancellationToken,
    pub abandon: CancellationToken,
}

pub fn channel(
    pool: Pool,
    batch: BatchSettings,
    quarantine: QuarantineSettings,
    health: Health,
    shutdown: Shutdown,
) -> (WriterHandle, Writer) {
    let (tx, rx) = mpsc::channel(batch.queue_capacity);
    (
        WriterHandle { tx },
        Writer {
            rx,
            store: Store {
                pool,
                quarantine,
                max_retry_backoff: Duration::from_millis(batch.max_retry_backoff_ms),
                health,
                engine: Arc::new(OnceCell::new()),
                partitions: Arc::new(Mutex::new(HashSet::new())),
                abandon: shutdown.abandon,
            },
            batch,
            drain: shutdown.drain,
        },
    )
}

impl Writer {
    /// Runs until every [`WriterHandle`] is dropped and the queue is drained.
    ///
    /// Batches are collected one after another, and up to `batch.max_in_flight` of them are
    /// written at once on separate connections: while one waits for its COMMIT to reach the
    /// disk, the next is already being inserted. Each submission gets its own reply, so the
    /// order batches commit in does not matter to the front-ends (MQTT acknowledges in
    /// arrival order by itself).
    pub async fn run(mut self) {
        let mut in_flight = JoinSet::new();
        loop {
            while in_flight.len() >= self.batch.max_in_flight {
                report(in_flight.join_next().await);
            }
            let Some(first) = self.rx.recv().await else {
                break;
            };
            let batch = self.collect(first).await;
            let store = self.store.clone();
            in_flight.spawn(async move { store.flush(batch).await });
        }
        while let Some(done) = in_flight.join_next().await {
            report(Some(done));
        }
        info!("writer drained");
    }

    async fn collect(&mut self, first: Request) -> Vec<Request> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.batch.linger_ms);
        let mut count = first.submission.reading_count();
        let mut batch = vec![first];
        while count < self.batch.max_readings {
            let next = tokio::select! {
                next = self.rx.recv() => next,
                _ = tokio::time::sleep_until(deadline) => None,
                _ = self.drain.cancelled() => self.rx.try_recv().ok(),
            };
            let Some(request) = next else { break };
            count += request.submission.reading_count();
            batch.push(request);
        }
        metrics::gauge!(m::QUEUE_DEPTH).set(self.rx.len() as f64);
        batch
    }
}

impl Store {
    async fn flush(&self, batch: Vec<Request>) {
        match self.write_retrying(&batch).await {
            Ok(outcomes) => {
                for (request, outcomes) in batch.into_iter().zip(outcomes) {
                    let _ = request.reply.send(Ok(outcomes));
                }
            }
            Err(e) if batch.len() > 1 && !e.is_retriable() => {
                // One submission may be at fault; write each alone so the rest still land.
                warn!(error = %e, size = batch.len(), "batch failed; writing its submissions one by one");
                for request in batch {
                    let result = self
                        .write_retrying(std::slice::from_ref(&request))
                        .await
                        .map(|mut o| o.remove(0));
                    if let Err(e) = &result {
                        error!(error = %e, "submission could not be stored");
                        metrics::counter!(m::WRITE_FAILURES).increment(1);
                    }
                    let _ = request.reply.send(result);
                }
            }
            Err(e) => {
                error!(error = %e, "batch could not be stored");
                metrics::counter!(m::WRITE_FAILURES).increment(1);
                for request in batch {
                    let _ = request.reply.send(Err(StoreError::Failed(e.to_string())));
                }
            }
        }
    }

    async fn write_retrying(&self, batch: &[Request]) -> Result<Vec<Vec<Outcome>>, StoreError> {
        let mut backoff = Duration::from_millis(50);
        let cap = self.max_retry_backoff;
        loop {
            match self.write(batch).await {
                Ok(outcomes) => {
                    self.health.set_database(true);
                    return Ok(outcomes);
                }
                Err(e) if e.is_retriable() => {
                    self.health.set_database(false);
                    metrics::counter!(m::WRITE_RETRIES).increment(1);
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "database unavailable; batch kept for retry");
                    tokio::select! {
                        _ = self.abandon.cancelled() => return Err(StoreError::WriterClosed),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(cap);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn write(&self, batch: &[Request]) -> Result<Vec<Vec<Outcome>>, StoreError> {
        let started = Instant::now();
        let mut conn = self.pool.get().await?;
        let engine = *self
            .engine
            .get_or_try_init(|| async {
                Ok::<_, StoreError>(
                    if super::maintenance::engine(&conn).await? == "timescaledb" {
                        Engine::TimescaleDb
                    } else {
                        Engine::Partitioned
                    },
                )
            })
            .await?;

        let mut plan = Plan::new(batch);
        let readings: Vec<(usize, usize, &Reading)> =
            batch
                .iter()
                .enumerate()
                .flat_map(|(s, req)| {
                    req.submission.items.iter().enumerate().filter_map(
                        move |(i, item)| match item {
                            Item::Reading(r) => Some((s, i, r.as_ref())),
                            Item::Refused(_) => None,
                        },
                    )
                })
                .collect();

        let device_ids: Vec<Uuid> = readings.iter().map(|(_, _, r)| r.device_id).collect();
        let measured: Vec<OffsetDateTime> =
            readings.iter().map(|(_, _, r)| r.measured_at).collect();
        let resolve = conn
            .prepare_cached(
                "SELECT u.ord, d.id IS NOT NULL, d.revoked_at, b.patient_id
                 FROM unnest($1::uuid[], $2::timestamptz[]) WITH ORDINALITY AS u(device_id, measured_at, ord)
                 LEFT JOIN devices d ON d.id = u.device_id
                 LEFT JOIN device_bindings b
                   ON b.device_id = u.device_id AND b.valid_during @> u.measured_at",
            )
            .await?;
        let rows = conn.query(&resolve, &[&device_ids, &measured]).await?;
        let mut patient_of: HashMap<usize, Uuid> = HashMap::new();
        let mut refused: HashMap<usize, Refusal> = HashMap::new();
        for row in rows {
            let ord = usize::try_from(row.get::<_, i64>(0) - 1).unwrap_or(usize::MAX);
            let known: bool = row.get(1);
            let revoked_at: Option<OffsetDateTime> = row.get(2);
            let patient: Option<Uuid> = row.get(3);
            let Some((_, _, reading)) = readings.get(ord) else {
                continue;
            };
            let refusal = if !known {
                Some(Refusal::new(
                    R::UnknownDevice,
                    format!("device {} is not registered", reading.device_id),
                ))
            } else if revoked_at.is_some_and(|at| at <= reading.received_at) {
                Some(Refusal::new(
                    R::RevokedDevice,
                    format!("device {} has been revoked", reading.device_id),
                ))
            } else if patient.is_none() {
                Some(Refusal::new(
                    R::UnboundDevice,
                    format!(
                        "device {} was not bound to a patient at {}",
                        reading.device_id, reading.measured_at
                    ),
                ))
            } else {
                None
            };
            match (refusal, patient) {
                (Some(refusal), _) => {
                    refused.insert(ord, refusal);
                }
                (None, Some(p)) => {
                    patient_of.insert(ord, p);
                }
                (None, None) => {}
            }
        }

        if engine == Engine::Partitioned {
            let mut partitions = self.partitions.lock().await;
            let months: HashSet<(i32, u8)> = patient_of
                .keys()
                .filter_map(|ord| readings.get(*ord))
                .map(|(_, _, r)| (r.measured_at.year(), r.measured_at.month() as u8))
                .filter(|m| !partitions.contains(m))
                .collect();
            for (year, month) in months {
                let first = time::Date::from_calendar_date(
                    year,
                    time::Month::try_from(month).unwrap_or(time::Month::January),
                    1,
                )
                .unwrap_or(time::Date::MIN)
                .midnight()
                .assume_utc();
                conn.execute("SELECT vigil_ensure_reading_partition($1)", &[&first])
                    .await?;
                partitions.insert((year, month));
            }
        }

        let tx = conn.transaction().await?;
        let withdrawn: HashSet<Uuid> = if patient_of.is_empty() {
            HashSet::new()
        } else {
            // The lock first, then the read, in separate statements: the read's snapshot is
            // taken once no withdrawal can be half-way.
            tx.batch_execute("LOCK TABLE ONLY readings IN ROW EXCLUSIVE MODE")
                .await?;
            let patients: Vec<Uuid> = patient_of
                .values()
                .copied()
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let consent = tx
                .prepare_cached(
                    "SELECT id FROM patients WHERE id = ANY($1) AND consent_state = 'withdrawn'",
                )
                .await?;
            tx.query(&consent, &[&patients])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect()
        };

        let mut rows = ReadingRows::default();
        let mut seen_keys = HashSet::new();
        let mut seen_prints = HashSet::new();
        for (ord, (s, i, reading)) in readings.iter().enumerate() {
            let patient = match (refused.remove(&ord), patient_of.get(&ord)) {
                (None, Some(patient)) if withdrawn.contains(patient) => {
                    let refusal = Refusal::new(
                        R::ConsentWithdrawn,
                        "the patient this device belongs to has withdrawn from monitoring; \
                         the reading was not stored or kept",
                    );
                    plan.refuse_reading(*s, *i, reading, refusal);
                    continue;
                }
                (None, Some(patient)) => *patient,
                (Some(refusal), _) => {
                    plan.refuse_reading(*s, *i, reading, refusal);
                    continue;
                }
                (None, None) => {
                    let refusal = Refusal::new(
                        R::UnboundDevice,
                        format!("device {} has no patient binding", reading.device_id),
                    );
                    plan.refuse_reading(*s, *i, reading, refusal);
                    continue;
                }
            };
            let fingerprint = reading.fingerprint(patient);
            if !seen_keys.insert((reading.key, reading.measured_at))
                || !seen_prints.insert((fingerprint, reading.measured_at))
            {
                plan.set(*s, *i, Outcome::Duplicate { key: reading.key });
                continue;
            }
            rows.push(reading, patient, fingerprint);
            plan.pending
                .push((*s, *i, reading.key, reading.measured_at));
        }
        for (s, request) in batch.iter().enumerate() {
            for (i, item) in request.submission.items.iter().enumerate() {
                if let Item::Refused(q) = item {
                    plan.quarantine_item(s, i, &request.submission, q);
                }
            }
        }

        let inserted: HashSet<(Uuid, OffsetDateTime)> = if rows.key.is_empty() {
            HashSet::new()
        } else {
            let insert = tx.prepare_cached(INSERT_READINGS).await?;
            tx.query(&insert, &rows.params())
                .await?
                .into_iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect()
        };
        let stored: Vec<Inserted> = rows
            .readings
            .iter()
            .zip(&rows.patient_id)
            .filter(|(r, _)| inserted.contains(&(r.key, r.measured_at)))
            .map(|(r, patient)| Inserted {
                key: r.key,
                patient_id: *patient,
                measured_at: r.measured_at,
                late: r.late,
                observation: Observation {
                    kind: r.kind.to_string(),
                    measured_at: Some(r.measured_at),
                    value: r.value,
                    original_value: r.original_value,
                    original_unit: r.original_unit.clone(),
                    systolic: r.systolic,
                    diastolic: r.diastolic,
                    range: r.range.map(str::to_string),
                    flags: r.flags.clone(),
                },
            })
            .collect();
        vigil_alerts::record::apply(&*tx, &stored).await?;
        if !plan.quarantine.is_empty() {
            let q = QuarantineRows::new(&plan.quarantine, self.quarantine.max_payload_bytes);
            let insert = tx.prepare_cached(INSERT_QUARANTINE).await?;
            tx.execute(&insert, &q.params()).await?;
        }
        tx.commit().await?;

        let elapsed = started.elapsed().as_secs_f64();
        metrics::histogram!(m::COMMIT_SECONDS).record(elapsed);
        metrics::histogram!(m::BATCH_READINGS).record(
            batch
                .iter()
                .map(|r| r.submission.reading_count())
                .sum::<usize>() as f64,
        );
        Ok(plan.finish(batch, &inserted))
    }
}

const INSERT_QUARANTINE: &str = "
INSERT INTO quarantine (received_at, channel, device_id, topic, reading_key, reason, message,
    payload_format, payload, payload_size, payload_truncated)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::uuid[], $4::text[], $5::uuid[],
    $6::text[], $7::text[], $8::text[], $9::bytea[], $10::int4[], $11::bool[])";

/// One row bound for quarantine.
struct QuarantineEntry {
    received_at: OffsetDateTime,
    channel: Channel,
    device_id: Option<Uuid>,
    topic: Option<String>,
    key: Option<Uuid>,
    refusal: Refusal,
    format: PayloadFormat,
    payload: Bytes,
}

struct QuarantineRows<'a> {
    received_at: Vec<OffsetDateTime>,
    channel: Vec<&'static str>,
    device_id: Vec<Option<Uuid>>,
    topic: Vec<Option<&'a str>>,
    key: Vec<Option<Uuid>>,
    reason: Vec<&'static str>,
    message: Vec<&'a str>,
    format: Vec<&'static str>,
    payload: Vec<&'a [u8]>,
    size: Vec<i32>,
    truncated: Vec<bool>,
}

impl<'a> QuarantineRows<'a> {
    fn new(entries: &'a [QuarantineEntry], cap: usize) -> Self {
        Self {
            received_at: entries.iter().map(|e| e.received_at).collect(),
            channel: entries.iter().map(|e| e.channel.as_str()).collect(),
            device_id: entries.iter().map(|e| e.device_id).collect(),
            topic: entries.iter().map(|e| e.topic.as_deref()).collect(),
            key: entries.iter().map(|e| e.key).collect(),
            reason: entries.iter().map(|e| e.refusal.reason.code()).collect(),
            message: entries.iter().map(|e| e.refusal.message.as_str()).collect(),
            format: entries.iter().map(|e| e.format.as_str()).collect(),
            payload: entries
                .iter()
                .map(|e| &e.payload[..e.payload.len().min(cap)])
                .collect(),
            size: entries
                .iter()
                .map(|e| i32::try_from(e.payload.len()).unwrap_or(i32::MAX))
                .collect(),
            truncated: entries.iter().map(|e| e.payload.len() > cap).collect(),
        }
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 11] {
        [
            &self.received_at,
            &self.channel,
            &self.device_id,
            &self.topic,
            &self.key,
            &self.reason,
            &self.message,
            &self.format,
            &self.payload,
            &self.size,
            &self.truncated,
        ]
    }
}

/// Outcomes decided before the insert, plus the readings whose fate the insert decides.
struct Plan {
    outcomes: Vec<Vec<Option<Outcome>>>,
    quarantine: Vec<QuarantineEntry>,
    pending: Vec<(usize, usize, Uuid, OffsetDateTime)>,
}

impl Plan {
    fn new(batch: &[Request]) -> Self {
        Self {
            outcomes: batch
                .iter()
                .map(|r| vec![None; r.submission.items.len()])
                .collect(),
            quarantine: Vec::new(),
            pending: Vec::new(),
        }
    }

    fn set(&mut self, s: usize, i: usize, outcome: Outcome) {
        self.outcomes[s][i] = Some(outcome);
    }

    /// Refuses a reading, keeping it in quarantine unless its reason forbids keeping it.
    fn refuse_reading(&mut self, s: usize, i: usize, reading: &Reading, refusal: Refusal) {
        self.set(
            s,
            i,
            Outcome::Rejected {
                key: Some(reading.key),
                reason: refusal.reason,
                message: refusal.message.clone(),
            },
        );
        if !refusal.reason.quarantined() {
            return;
        }
        let payload = serde_json::to_vec(&reading.to_raw()).unwrap_or_default();
        self.quarantine.push(QuarantineEntry {
            received_at: reading.received_at,
            channel: reading.channel,
            device_id: Some(reading.device_id),
            topic: None,
            key: Some(reading.key),
            refusal,
            format: PayloadFormat::Reading,
            payload: Bytes::from(payload),
        });
    }

    fn quarantine_item(&mut self, s: usize, i: usize, submission: &Submission, q: &Quarantined) {
        self.set(
            s,
            i,
            Outcome::Rejected {
                key: q.key,
                reason: q.refusal.reason,
                message: q.refusal.message.clone(),
            },
        );
        self.quarantine.push(QuarantineEntry {
            received_at: submission.received_at,
            channel: submission.channel,
            device_id: submission.device_id,
            topic: submission.topic.clone(),
            key: q.key,
            refusal: q.refusal.clone(),
            format: q.format,
            payload: q.payload.clone(),
        });
    }

    fn finish(
        mut self,
        batch: &[Request],
        inserted: &HashSet<(Uuid, OffsetDateTime)>,
    ) -> Vec<Vec<Outcome>> {
        for (s, i, key, at) in std::mem::take(&mut self.pending) {
            let outcome = if inserted.contains(&(key, at)) {
                Outcome::Accepted { key }
            } else {
                Outcome::Duplicate { key }
            };
            self.set(s, i, outcome);
        }
        batch
            .iter()
            .zip(self.outcomes)
            .map(|(request, outcomes)| {
                request
                    .submission
                    .items
                    .iter()
                    .zip(outcomes)
                    .map(|(item, outcome)| {
                        // Every item was given an outcome above; this is never taken.
                        let outcome = outcome.unwrap_or(Outcome::Rejected {
                            key: None,
                            reason: R::UnboundDevice,
                            message: "no outcome recorded".into(),
                        });
                        count(&request.submission, item, &outcome);
                        outcome
                    })
                    .collect()
            })
            .collect()
    }
}

fn count(submission: &Submission, item: &Item, outcome: &Outcome) {
    let channel = submission.channel.as_str();
    let kind = match item {
        Item::Reading(r) => r.kind,
        Item::Refused(_) => "unknown",
    };
    metrics::counter!(m::READINGS, "channel" => channel, "type" => kind, "outcome" => outcome.status())
        .increment(1);
    if let Outcome::Rejected { reason, .. } = outcome {
        metrics::counter!(m::REJECTS, "channel" => channel, "reason" => reason.code()).increment(1);
    }
}
