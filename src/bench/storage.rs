//! The storage ceiling: the same validated readings written straight into the bench
//! database's `readings` table, without the service, by the fastest idempotent methods
//! (the writer's own `unnest … ON CONFLICT` statement, and binary COPY into a staging table
//! followed by `INSERT … SELECT … ON CONFLICT`), plus plain binary COPY for reference.

use std::{collections::HashMap, time::Instant};

use anyhow::Context as _;
use futures_util::pin_mut;
use serde::Serialize;
use tokio_postgres::{Client, binary_copy::BinaryCopyInWriter};
use uuid::Uuid;
use vigil_ingest::{
    domain::Reading,
    store::rows::{COLUMN_TYPES, COLUMNS, INSERT_READINGS, ReadingRows},
};

#[derive(Debug, Clone, Serialize)]
pub struct Method {
    pub name: String,
    pub idempotent: bool,
    pub batch: usize,
    pub readings: usize,
    pub seconds: f64,
    pub per_sec: f64,
}

/// Each method on an emptied `readings` table; readings are attributed to one made-up
/// patient per device (the table has no foreign keys, as on the write path).
pub async fn ceiling(client: &mut Client, readings: &[Reading]) -> anyhow::Result<Vec<Method>> {
    let mut patients: HashMap<Uuid, Uuid> = HashMap::new();
    let rows: Vec<(&Reading, Uuid, Uuid)> = readings
        .iter()
        .map(|r| {
            let patient = *patients.entry(r.device_id).or_insert_with(Uuid::new_v4);
            (r, patient, r.fingerprint(patient))
        })
        .collect();
    ensure_partitions(client, readings).await?;
    let mut methods = Vec::new();
    for batch in [2000, 5000] {
        truncate(client).await?;
        methods.push(
            measure(
                "unnest + ON CONFLICT",
                true,
                batch,
                rows.len(),
                unnest(client, &rows, batch),
            )
            .await?,
        );
    }
    truncate(client).await?;
    methods.push(
        measure(
            "COPY to staging + INSERT ON CONFLICT",
            true,
            5000,
            rows.len(),
            staged_copy(client, &rows, 5000),
        )
        .await?,
    );
    truncate(client).await?;
    methods.push(
        measure(
            "plain binary COPY (not idempotent)",
            false,
            5000,
            rows.len(),
            plain_copy(client, &rows, 5000),
        )
        .await?,
    );
    truncate(client).await?;
    Ok(methods)
}

/// The fastest idempotent method.
pub fn best(methods: &[Method]) -> Option<&Method> {
    methods
        .iter()
        .filter(|m| m.idempotent)
        .max_by(|a, b| a.per_sec.total_cmp(&b.per_sec))
}

async fn measure(
    name: &str,
    idempotent: bool,
    batch: usize,
    n: usize,
    work: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<Method> {
    let started = Instant::now();
    work.await
        .with_context(|| format!("storage ceiling: {name}"))?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Method {
        name: name.to_string(),
        idempotent,
        batch,
        readings: n,
        seconds,
        per_sec: n as f64 / seconds,
    })
}

async fn truncate(client: &Client) -> anyhow::Result<()> {
    client.batch_execute("TRUNCATE readings").await?;
    Ok(())
}

/// On plain PostgreSQL the writer creates monthly partitions on demand; do it up front so
/// every method is timed on the same tables.
async fn ensure_partitions(client: &Client, readings: &[Reading]) -> anyhow::Result<()> {
    let engine = vigil_ingest::store::maintenance::engine(client).await?;
    if engine == "timescaledb" {
        return Ok(());
    }
    let mut months: Vec<_> = readings
        .iter()
        .map(|r| (r.measured_at.year(), r.measured_at.month()))
        .collect();
    months.sort_unstable();
    months.dedup();
    for (year, month) in months {
        let first = time::Date::from_calendar_date(year, month, 1)?
            .midnight()
            .assume_utc();
        client
            .execute("SELECT vigil_ensure_reading_partition($1)", &[&first])
            .await?;
    }
    Ok(())
}

async fn unnest(
    client: &mut Client,
    rows: &[(&Reading, Uuid, Uuid)],
    batch: usize,
) -> anyhow::Result<()> {
    let insert = client.prepare(INSERT_READINGS).await?;
    for chunk in rows.chunks(batch) {
        let mut columns = ReadingRows::default();
        for (r, patient, fingerprint) in chunk {
            columns.push(r, *patient, *fingerprint);
        }
        let tx = client.transaction().await?;
        tx.query(&insert, &columns.params()).await?;
        tx.commit().await?;
    }
    Ok(())
}

async fn copy_rows(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    rows: &[(&Reading, Uuid, Uuid)],
) -> anyhow::Result<()> {
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &COLUMN_TYPES);
    pin_mut!(writer);
    for (r, patient, fingerprint) in rows {
        let channel = r.channel.as_str();
        writer
            .as_mut()
            .write(&[
                &r.key,
                &r.measured_at,
                patient,
                &r.device_id,
                &r.kind,
                &r.value,
                &r.unit,
                &r.systolic,
                &r.diastolic,
                &r.pulse,
                &r.original_value,
                &r.original_unit,
                &r.range,
                &r.specimen,
                &r.meal,
                &r.posture,
                &r.arm,
                &r.flags,
                &r.utc_offset_minutes,
                &r.received_at,
                &channel,
                &r.late,
                fingerprint,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

async fn staged_copy(
    client: &mut Client,
    rows: &[(&Reading, Uuid, Uuid)],
    batch: usize,
) -> anyhow::Result<()> {
    client
        .batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS bench_staging
                 (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
        )
        .await?;
    for chunk in rows.chunks(batch) {
        let tx = client.transaction().await?;
        copy_rows(&tx, "bench_staging", chunk).await?;
        tx.batch_execute(&format!(
            "INSERT INTO readings ({COLUMNS}) SELECT {COLUMNS} FROM bench_staging ON CONFLICT DO NOTHING"
        ))
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

async fn plain_copy(
    client: &mut Client,
    rows: &[(&Reading, Uuid, Uuid)],
    batch: usize,
) -> anyhow::Result<()> {
    for chunk in rows.chunks(batch) {
        let tx = client.transaction().await?;
        copy_rows(&tx, "readings", chunk).await?;
        tx.commit().await?;
    }
    Ok(())
}
