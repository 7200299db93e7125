//! Why a reading or a message was refused. The code is part of the public contract
//! (docs/contract.md): devices match on it, metrics count by it, quarantine stores it.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    MalformedPayload,
    Oversized,
    BadTopic,
    TooManyReadings,
    MissingField,
    UnknownField,
    InvalidField,
    InvalidId,
    UnknownType,
    UnknownUnit,
    NonFiniteValue,
    ImplausibleValue,
    SystolicNotAboveDiastolic,
    InvalidTimestamp,
    FutureTimestamp,
    StaleTimestamp,
    ControlSolution,
    UnknownDevice,
    RevokedDevice,
    UnboundDevice,
    ConsentWithdrawn,
    RateLimited,
}

impl RejectReason {
    pub const ALL: [RejectReason; 22] = [
        Self::MalformedPayload,
        Self::Oversized,
        Self::BadTopic,
        Self::TooManyReadings,
        Self::MissingField,
        Self::UnknownField,
        Self::InvalidField,
        Self::InvalidId,
        Self::UnknownType,
        Self::UnknownUnit,
        Self::NonFiniteValue,
        Self::ImplausibleValue,
        Self::SystolicNotAboveDiastolic,
        Self::InvalidTimestamp,
        Self::FutureTimestamp,
        Self::StaleTimestamp,
        Self::ControlSolution,
        Self::UnknownDevice,
        Self::RevokedDevice,
        Self::UnboundDevice,
        Self::ConsentWithdrawn,
        Self::RateLimited,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::MalformedPayload => "malformed_payload",
            Self::Oversized => "oversized",
            Self::BadTopic => "bad_topic",
            Self::TooManyReadings => "too_many_readings",
            Self::MissingField => "missing_field",
            Self::UnknownField => "unknown_field",
            Self::InvalidField => "invalid_field",
            Self::InvalidId => "invalid_id",
            Self::UnknownType => "unknown_type",
            Self::UnknownUnit => "unknown_unit",
            Self::NonFiniteValue => "non_finite_value",
            Self::ImplausibleValue => "implausible_value",
            Self::SystolicNotAboveDiastolic => "systolic_not_above_diastolic",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::FutureTimestamp => "future_timestamp",
            Self::StaleTimestamp => "stale_timestamp",
            Self::ControlSolution => "control_solution",
            Self::UnknownDevice => "unknown_device",
            Self::RevokedDevice => "revoked_device",
            Self::UnboundDevice => "unbound_device",
            Self::ConsentWithdrawn => "consent_withdrawn",
            Self::RateLimited => "rate_limited",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Whether the refused payload is kept in quarantine. Everything refused is, so that
    /// nothing a device sends is lost, except a reading of a patient who withdrew from
    /// monitoring: their withdrawal is a refusal to have it kept.
    pub fn quarantined(self) -> bool {
        self != Self::ConsentWithdrawn
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refusal with its reason code and a message precise enough for the sender to fix it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: RejectReason,
    pub message: String,
}

impl Refusal {
    /// Messages may quote the sender's input; NUL cannot be stored in PostgreSQL text, so
    /// it is replaced rather than letting the refusal itself fail to be quarantined.
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        let message: String = message.into();
        Self {
            reason,
            message: if message.contains('\0') {
                message.replace('\0', "\u{FFFD}")
            } else {
                message
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_nul_characters_are_replaced() {
        let r = Refusal::new(RejectReason::UnknownField, "unknown field `\0x`");
        assert_eq!(r.message, "unknown field `\u{FFFD}x`");
    }

    #[test]
    fn only_a_withdrawn_patients_reading_is_not_kept() {
        let not_kept: Vec<_> = RejectReason::ALL
            .into_iter()
            .filter(|r| !r.quarantined())
            .collect();
        assert_eq!(not_kept, vec![RejectReason::ConsentWithdrawn]);
    }

    #[test]
    fn every_code_round_trips_and_is_unique() {
        let mut seen = std::collections::HashSet::new();
        for reason in RejectReason::ALL {
            assert!(seen.insert(reason.code()), "duplicate {reason}");
            assert_eq!(RejectReason::from_code(reason.code()), Some(reason));
        }
    }
}
