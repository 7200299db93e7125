//! `vigil admin quarantine replay`: runs quarantined payloads through the same decoding,
//! validation and writer as live traffic (for instance after registering the unknown device
//! that sent them). Each entry is marked with what happened; a reading refused again is
//! quarantined again with its new reason, so nothing is lost either way, unless the patient
//! has since withdrawn from monitoring (`consent_withdrawn` readings are not kept).

use crate::{
    config::Settings,
    domain::{Channel, Refusal, RejectReason, validate::Context},
    health::Health,
    mqtt::decode,
    store::{
        Pool, StoreError,
        quarantine::{self, Entry, Filter},
        writer::{self, SubmitError},
    },
    submission::{Outcome, PayloadFormat, Submission},
};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Replayed {
    pub id: i64,
    pub outcome: String,
}

pub async fn replay(
    pool: &Pool,
    settings: &Settings,
    filter: &Filter,
) -> Result<Vec<Replayed>, SubmitError> {
    let client = pool.get().await.map_err(StoreError::from)?;
    let entries = quarantine::list(&client, filter).await?;
    let (handle, writer) = writer::channel(
        pool.clone(),
        settings.batch.clone(),
        settings.quarantine.clone(),
        Health::default(),
        writer::Shutdown::default(),
    );
    let writer_task = tokio::spawn(writer.run());
    let mut report = Vec::new();
    for entry in entries {
        let outcome = match submission(&entry, settings) {
            Err(why) => why,
            Ok(submission) => summarize(&handle.submit(submission).await?),
        };
        quarantine::mark_replayed(&client, entry.id, &outcome).await?;
        report.push(Replayed {
            id: entry.id,
            outcome,
        });
    }
    drop(handle);
    let _ = writer_task.await;
    Ok(report)
}

fn submission(entry: &Entry, settings: &Settings) -> Result<Submission, String> {
    if entry.payload_truncated {
        return Err("not_replayable: payload was truncated".into());
    }
    let Some(device_id) = entry.device_id else {
        return Err("not_replayable: no device id".into());
    };
    let channel = Channel::parse(&entry.channel).unwrap_or(Channel::Mqtt);
    let ctx = Context {
        device_id,
        channel,
        received_at: entry.received_at,
        rules: &settings.validation,
    };
    let mut submission = Submission::new(
        channel,
        Some(device_id),
        entry.received_at,
        entry.topic.clone(),
    );
    match PayloadFormat::parse(&entry.payload_format) {
        Some(PayloadFormat::Message) => {
            if entry.raw.len() > settings.mqtt.max_message_bytes {
                return Err("not_replayable: still oversized".into());
            }
            submission.items = match decode::decode(
                &entry.raw,
                &ctx,
                settings.validation.max_readings_per_submission,
            ) {
                Ok(items) => items,
                Err(refusal) => return Ok(refused(submission, refusal, entry)),
            };
        }
        Some(PayloadFormat::Reading) => submission.items = vec![decode::item(&entry.raw, &ctx)],
        None => {
            return Err(format!(
                "not_replayable: unknown format {}",
                entry.payload_format
            ));
        }
    }
    Ok(submission)
}

fn refused(submission: Submission, refusal: Refusal, entry: &Entry) -> Submission {
    submission.refused_whole(refusal, bytes::Bytes::copy_from_slice(&entry.raw))
}

fn summarize(outcomes: &[Outcome]) -> String {
    let mut parts = Vec::new();
    for status in ["accepted", "duplicate"] {
        let n = outcomes.iter().filter(|o| o.status() == status).count();
        if n > 0 {
            parts.push(format!("{status}={n}"));
        }
    }
    let mut reasons: Vec<RejectReason> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Rejected { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    reasons.sort_by_key(|r| r.code());
    reasons.dedup();
    for reason in reasons {
        let n = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Rejected { reason: r, .. } if *r == reason))
            .count();
        parts.push(format!("rejected:{reason}={n}"));
    }
    if parts.is_empty() {
        "empty".into()
    } else {
        parts.join(" ")
    }
}
