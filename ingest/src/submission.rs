//! What a front-end hands to the writer and what it gets back: one [`Submission`] per MQTT
//! message or gRPC batch, one [`Outcome`] per item, in order.

use bytes::Bytes;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{Channel, Reading, Refusal, RejectReason};

#[derive(Debug, Clone)]
pub struct Submission {
    pub channel: Channel,
    /// The device named by the MQTT topic or authenticated by the gRPC token.
    pub device_id: Option<Uuid>,
    pub received_at: OffsetDateTime,
    pub topic: Option<String>,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone)]
pub enum Item {
    Reading(Box<Reading>),
    Refused(Quarantined),
}

/// How a quarantined payload can be decoded again for replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    /// A whole MQTT message body, as published.
    Message,
    /// One reading as a JSON object (an element of a batch, or a gRPC reading).
    Reading,
}

impl PayloadFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Reading => "reading",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message" => Some(Self::Message),
            "reading" => Some(Self::Reading),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Quarantined {
    pub refusal: Refusal,
    pub payload: Bytes,
    pub format: PayloadFormat,
    /// The reading's idempotency key when it got far enough to have one.
    pub key: Option<Uuid>,
}

impl Submission {
    pub fn new(
        channel: Channel,
        device_id: Option<Uuid>,
        received_at: OffsetDateTime,
        topic: Option<String>,
    ) -> Self {
        Self {
            channel,
            device_id,
            received_at,
            topic,
            items: Vec::new(),
        }
    }

    /// A submission that is refused as a whole (unparseable, oversized, bad topic).
    pub fn refused_whole(mut self, refusal: Refusal, payload: Bytes) -> Self {
        self.items = vec![Item::Refused(Quarantined {
            refusal,
            payload,
            format: PayloadFormat::Message,
            key: None,
        })];
        self
    }

    pub fn reading_count(&self) -> usize {
        self.items.len()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Accepted {
        key: Uuid,
    },
    Duplicate {
        key: Uuid,
    },
    Rejected {
        key: Option<Uuid>,
        reason: RejectReason,
        message: String,
    },
}

impl Outcome {
    pub fn status(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "accepted",
            Self::Duplicate { .. } => "duplicate",
            Self::Rejected { .. } => "rejected",
        }
    }

    pub fn key(&self) -> Option<Uuid> {
        match self {
            Self::Accepted { key } | Self::Duplicate { key } => Some(*key),
            Self::Rejected { key, .. } => *key,
        }
    }
}
