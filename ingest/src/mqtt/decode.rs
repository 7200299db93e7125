//! MQTT message body → [`Submission`] items. A body is one reading object or
//! `{"readings": [...]}`; each reading is validated on its own so one bad reading does not
//! sink the others, and each refused one keeps its own JSON for quarantine.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::{
    domain::{
        RawReading, Refusal, RejectReason as R,
        validate::{Context, validate},
    },
    submission::{Item, PayloadFormat, Quarantined},
};

/// Decodes and validates every reading in `payload`. `Err` refuses the whole message.
pub fn decode(
    payload: &[u8],
    ctx: &Context<'_>,
    max_readings: usize,
) -> Result<Vec<Item>, Refusal> {
    let fields: BTreeMap<String, &RawValue> = serde_json::from_slice(payload).map_err(|e| {
        Refusal::new(
            R::MalformedPayload,
            format!("payload is not a JSON object: {e}"),
        )
    })?;
    let elements: Vec<&RawValue> = match fields.get("readings") {
        Some(list) if fields.len() == 1 => serde_json::from_str(list.get()).map_err(|e| {
            Refusal::new(
                R::MalformedPayload,
                format!("`readings` must be an array of reading objects: {e}"),
            )
        })?,
        Some(_) => {
            return Err(Refusal::new(
                R::MalformedPayload,
                "a batch object has only the key `readings`",
            ));
        }
        None => return Ok(vec![item(payload, ctx)]),
    };
    if elements.len() > max_readings {
        return Err(Refusal::new(
            R::TooManyReadings,
            format!(
                "{} readings in one message; at most {max_readings}",
                elements.len()
            ),
        ));
    }
    Ok(elements
        .into_iter()
        .map(|raw| item(raw.get().as_bytes(), ctx))
        .collect())
}

/// Validates one reading given as JSON bytes.
pub fn item(json: &[u8], ctx: &Context<'_>) -> Item {
    let result = serde_json::from_slice::<RawReading>(json)
        .map_err(|e| serde_refusal(&e))
        .and_then(|raw| validate(&raw, ctx));
    match result {
        Ok(reading) => Item::Reading(Box::new(reading)),
        Err(refusal) => Item::Refused(Quarantined {
            refusal,
            payload: Bytes::copy_from_slice(json),
            format: PayloadFormat::Reading,
            key: None,
        }),
    }
}

fn serde_refusal(e: &serde_json::Error) -> Refusal {
    let text = e.to_string();
    let reason = if text.starts_with("unknown field") {
        R::UnknownField
    } else if text.starts_with("missing field") {
        R::MissingField
    } else if e.is_syntax() || e.is_eof() {
        R::MalformedPayload
    } else {
        R::InvalidField
    };
    Refusal::new(reason, format!("reading: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::ValidationSettings, domain::Channel};
    use time::macros::datetime;
    use uuid::Uuid;

    fn run(payload: &str) -> Result<Vec<Item>, Refusal> {
        let rules = ValidationSettings::default();
        let ctx = Context {
            device_id: Uuid::nil(),
            channel: Channel::Mqtt,
            received_at: datetime!(2026-11-22 12:00:00 UTC),
            rules: &rules,
        };
        decode(payload.as_bytes(), &ctx, 3)
    }

    fn refused(item: &Item) -> (R, &[u8]) {
        match item {
            Item::Refused(q) => (q.refusal.reason, &q.payload),
            Item::Reading(r) => panic!("expected a refusal, got {r:?}"),
        }
    }

    const GOOD: &str = r#"{"type":"blood_glucose","measured_at":"2026-11-22T11:00:00Z","value":5.4,"unit":"mmol/L"}"#;

    #[test]
    fn a_single_reading_object_decodes() {
        let items = run(GOOD).expect("decodes");
        assert!(matches!(items.as_slice(), [Item::Reading(_)]));
    }

    #[test]
    fn a_batch_keeps_good_readings_and_refuses_bad_ones_with_their_own_json() {
        let bad = r#"{"type":"blood_glucose","measured_at":"2026-11-22T11:00:00Z","value":5.4,"unit":"mmol/l"}"#;
        let items = run(&format!(r#"{{"readings":[{GOOD},{bad}]}}"#)).expect("decodes");
        assert!(matches!(items[0], Item::Reading(_)));
        let (reason, payload) = refused(&items[1]);
        assert_eq!(reason, R::UnknownUnit);
        assert_eq!(payload, bad.as_bytes());
    }

    #[test]
    fn field_errors_are_classified() {
        let items = run(r#"{"readings":[
            {"type":"heart_rate","measured_at":"2026-11-22T11:00:00Z","value":60,"sytolic":1},
            {"measured_at":"2026-11-22T11:00:00Z","value":60},
            {"type":"heart_rate","measured_at":"2026-11-22T11:00:00Z","value":"60"}
        ]}"#)
        .expect("decodes");
        assert_eq!(refused(&items[0]).0, R::UnknownField);
        assert_eq!(refused(&items[1]).0, R::MissingField);
        assert_eq!(refused(&items[2]).0, R::InvalidField);
    }

    #[test]
    fn whole_message_problems_refuse_the_message() {
        assert_eq!(
            run("not json").expect_err("bad").reason,
            R::MalformedPayload
        );
        assert_eq!(run("[1,2]").expect_err("bad").reason, R::MalformedPayload);
        assert_eq!(
            run(r#"{"readings":5}"#).expect_err("bad").reason,
            R::MalformedPayload
        );
        assert_eq!(
            run(&format!(r#"{{"readings":[{GOOD},{GOOD},{GOOD},{GOOD}]}}"#))
                .expect_err("too many")
                .reason,
            R::TooManyReadings
        );
    }

    #[test]
    fn nan_cannot_travel_in_json() {
        let items =
            run(r#"{"type":"heart_rate","measured_at":"2026-11-22T11:00:00Z","value":NaN}"#);
        assert_eq!(items.expect_err("bad").reason, R::MalformedPayload);
    }
}
