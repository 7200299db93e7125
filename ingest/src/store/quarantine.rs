//! Reading quarantine back out, for `vigil admin quarantine list` and `replay`.

use time::OffsetDateTime;
use tokio_postgres::Client;
use uuid::Uuid;

use super::StoreError;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub ids: Vec<i64>,
    pub reason: Option<String>,
    pub device_id: Option<Uuid>,
    /// Include entries that were already replayed.
    pub include_replayed: bool,
    pub limit: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub channel: String,
    pub device_id: Option<Uuid>,
    pub topic: Option<String>,
    pub reading_key: Option<Uuid>,
    pub reason: String,
    pub message: String,
    pub payload_format: String,
    /// The payload as text when it is UTF-8 (it is JSON for every current channel).
    pub payload: String,
    pub payload_size: i32,
    pub payload_truncated: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub replayed_at: Option<OffsetDateTime>,
    pub replay_outcome: Option<String>,
    #[serde(skip)]
    pub raw: Vec<u8>,
}

pub async fn list(client: &Client, f: &Filter) -> Result<Vec<Entry>, StoreError> {
    let rows = client
        .query(
            "SELECT id, received_at, channel, device_id, topic, reading_key, reason, message,
                    payload_format, payload, payload_size, payload_truncated, replayed_at,
                    replay_outcome
             FROM quarantine
             WHERE (cardinality($1::int8[]) = 0 OR id = ANY($1))
               AND ($2::text IS NULL OR reason = $2)
               AND ($3::uuid IS NULL OR device_id = $3)
               AND ($4 OR replayed_at IS NULL)
             ORDER BY id
             LIMIT $5",
            &[
                &f.ids,
                &f.reason,
                &f.device_id,
                &f.include_replayed,
                &f.limit,
            ],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let raw: Vec<u8> = r.get(9);
            Entry {
                id: r.get(0),
                received_at: r.get(1),
                channel: r.get(2),
                device_id: r.get(3),
                topic: r.get(4),
                reading_key: r.get(5),
                reason: r.get(6),
                message: r.get(7),
                payload_format: r.get(8),
                payload: String::from_utf8_lossy(&raw).into_owned(),
                payload_size: r.get(10),
                payload_truncated: r.get(11),
                replayed_at: r.get(12),
                replay_outcome: r.get(13),
                raw,
            }
        })
        .collect())
}

pub async fn mark_replayed(client: &Client, id: i64, outcome: &str) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE quarantine SET replayed_at = now(), replay_outcome = $2 WHERE id = $1",
            &[&id, &outcome],
        )
        .await?;
    Ok(())
}
