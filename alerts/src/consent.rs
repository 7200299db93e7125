//! A patient's consent to monitoring: `enrolled`, `paused` until a time (readings stored,
//! alerts recorded but suppressed), or `withdrawn` (readings refused and not kept, alerts
//! closed). A pause ends by itself at its `until`: the state in force is judged at a moment,
//! so no job has to end it. Withdrawal lasts until an explicit re-enrolment.

use std::fmt;

use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Longest reason kept with a consent change (also checked by the database).
pub const MAX_REASON_CHARS: usize = 2000;
/// Longest name of the person recorded as making a change.
pub const MAX_ACTOR_CHARS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Enrolled,
    Paused,
    Withdrawn,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enrolled => "enrolled",
            Self::Paused => "paused",
            Self::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enrolled" => Some(Self::Enrolled),
            "paused" => Some(Self::Paused),
            "withdrawn" => Some(Self::Withdrawn),
            _ => None,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The consent as stored on the patient. `state` is what was last set: a pause whose
/// `paused_until` has passed is still stored as `paused`; [`Consent::at`] says what is in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Consent {
    pub state: State,
    pub paused_until: Option<OffsetDateTime>,
    pub reason: Option<String>,
    /// When the state was last set; `None` if it never changed since enrolment.
    pub changed_at: Option<OffsetDateTime>,
}

/// A pause in force: what alerts raised during it are marked with.
#[derive(Debug, Clone, PartialEq)]
pub struct Pause {
    pub until: OffsetDateTime,
    pub reason: String,
}

impl Consent {
    /// The state in force at `at`. A pause covers the instants before its `until`; at
    /// `until` the patient is enrolled again.
    pub fn at(&self, at: OffsetDateTime) -> State {
        match (self.state, self.paused_until) {
            (State::Paused, Some(until)) if at < until => State::Paused,
            (State::Paused, _) => State::Enrolled,
            (state, _) => state,
        }
    }

    /// The pause in force at `at`, if any.
    pub fn pause_at(&self, at: OffsetDateTime) -> Option<Pause> {
        (self.at(at) == State::Paused).then(|| Pause {
            until: self.paused_until.unwrap_or(at),
            reason: self.reason.clone().unwrap_or_default(),
        })
    }

    /// When monitoring in force at `at` resumed after its last break: the end of a pause
    /// that ran out, or a resumption or re-enrolment. `None` when it never had a break, or
    /// is not in force (paused or withdrawn).
    pub fn resumed_at(&self, at: OffsetDateTime) -> Option<OffsetDateTime> {
        match (self.at(at), self.state) {
            (State::Enrolled, State::Paused) => self.paused_until,
            (State::Enrolled, _) => self.changed_at,
            _ => None,
        }
    }

    fn since(&self) -> String {
        self.changed_at.map(rfc3339).unwrap_or_default()
    }
}

/// A change an administrator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Pause until a time (or move the end of a pause in force).
    Pause { until: OffsetDateTime },
    /// End a pause in force now.
    Resume,
    /// Stop monitoring: readings refused and not kept, open alerts closed.
    Withdraw,
    /// Start monitoring again after a withdrawal.
    Reenrol,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("monitoring was withdrawn at {since}; re-enrol the patient first")]
    Withdrawn { since: String },
    #[error("the pause must end in the future: {until} is not after {now}")]
    PauseInPast { until: String, now: String },
    #[error("monitoring is not paused{}", .ended.as_ref().map(|e| format!(" (the pause ended at {e})")).unwrap_or_default())]
    NotPaused { ended: Option<String> },
    #[error("monitoring is already withdrawn (since {since})")]
    AlreadyWithdrawn { since: String },
    #[error("monitoring is not withdrawn (it is {state}); only a withdrawn patient is re-enrolled")]
    NotWithdrawn { state: State },
    #[error("a reason is required to {action}")]
    ReasonRequired { action: &'static str },
    #[error("the reason is {chars} characters; at most {MAX_REASON_CHARS}")]
    ReasonTooLong { chars: usize },
    #[error("who is making the change is required (a named person, e.g. --by \"Dr A Smith\")")]
    ActorRequired,
    #[error(
        "the name of who is making the change is {chars} characters; at most {MAX_ACTOR_CHARS}"
    )]
    ActorTooLong { chars: usize },
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

impl Change {
    /// The audit action recorded for the change.
    pub fn action(self) -> &'static str {
        match self {
            Self::Pause { .. } => "pause_monitoring",
            Self::Resume => "resume_monitoring",
            Self::Withdraw => "withdraw_monitoring",
            Self::Reenrol => "reenrol_monitoring",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Pause { .. } => "pause monitoring",
            Self::Resume => "resume monitoring",
            Self::Withdraw => "withdraw monitoring",
            Self::Reenrol => "re-enrol a patient",
        }
    }

    /// Checks who asks and why: a named person always; a reason for everything but a
    /// resumption (which ends what a reasoned pause started).
    pub fn check_request(self, by: &str, reason: Option<&str>) -> Result<(), ChangeError> {
        let by = by.trim();
        if by.is_empty() {
            return Err(ChangeError::ActorRequired);
        }
        if by.chars().count() > MAX_ACTOR_CHARS {
            return Err(ChangeError::ActorTooLong {
                chars: by.chars().count(),
            });
        }
        match reason.map(str::trim).filter(|r| !r.is_empty()) {
            None if self != Self::Resume => Err(ChangeError::ReasonRequired {
                action: self.verb(),
            }),
            Some(r) if r.chars().count() > MAX_REASON_CHARS => Err(ChangeError::ReasonTooLong {
                chars: r.chars().count(),
            }),
            _ => Ok(()),
        }
    }

    /// The state in force after this change, made at `now` to `current`, or why it cannot
    /// be made.
    pub fn apply(self, current: &Consent, now: OffsetDateTime) -> Result<State, ChangeError> {
        let withdrawn = || ChangeError::Withdrawn {
            since: current.since(),
        };
        match (self, current.at(now)) {
            (Self::Pause { until }, State::Enrolled | State::Paused) => {
                if until <= now {
                    return Err(ChangeError::PauseInPast {
                        until: rfc3339(until),
                        now: rfc3339(now),
                    });
                }
                Ok(State::Paused)
            }
            (Self::Resume, State::Paused) => Ok(State::Enrolled),
            (Self::Resume, State::Enrolled) => Err(ChangeError::NotPaused {
                ended: (current.state == State::Paused)
                    .then_some(current.paused_until)
                    .flatten()
                    .map(rfc3339),
            }),
            (Self::Withdraw, State::Enrolled | State::Paused) => Ok(State::Withdrawn),
            (Self::Withdraw, State::Withdrawn) => Err(ChangeError::AlreadyWithdrawn {
                since: current.since(),
            }),
            (Self::Reenrol, State::Withdrawn) => Ok(State::Enrolled),
            (Self::Reenrol, state) => Err(ChangeError::NotWithdrawn { state }),
            (Self::Pause { .. } | Self::Resume, State::Withdrawn) => Err(withdrawn()),
        }
    }
}

#[cfg(test)]
mod tests {
    use time::{Duration, macros::datetime};

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-11-22 08:00 UTC);

    fn consent(state: State, until: Option<OffsetDateTime>) -> Consent {
        Consent {
            state,
            paused_until: until,
            reason: Some("in hospital".into()),
            changed_at: Some(datetime!(2026-11-01 09:00 UTC)),
        }
    }

    #[test]
    fn a_pause_is_in_force_until_the_instant_it_ends() {
        let until = NOW + Duration::hours(1);
        let c = consent(State::Paused, Some(until));
        assert_eq!(c.at(until - Duration::nanoseconds(1)), State::Paused);
        assert_eq!(c.at(until), State::Enrolled);
        assert_eq!(c.at(until + Duration::seconds(1)), State::Enrolled);
        assert_eq!(
            c.pause_at(NOW),
            Some(Pause {
                until,
                reason: "in hospital".into()
            })
        );
        assert_eq!(c.pause_at(until), None);
    }

    #[test]
    fn withdrawal_and_enrolment_do_not_expire() {
        let far = NOW + Duration::days(3650);
        assert_eq!(consent(State::Withdrawn, None).at(far), State::Withdrawn);
        assert_eq!(consent(State::Enrolled, None).at(far), State::Enrolled);
        assert_eq!(consent(State::Withdrawn, None).pause_at(NOW), None);
    }

    #[test]
    fn monitoring_resumes_at_the_end_of_a_pause_or_the_last_change() {
        let ended = NOW - Duration::hours(2);
        assert_eq!(
            consent(State::Paused, Some(ended)).resumed_at(NOW),
            Some(ended)
        );
        assert_eq!(
            consent(State::Paused, Some(NOW + Duration::hours(2))).resumed_at(NOW),
            None
        );
        let resumed = consent(State::Enrolled, None);
        assert_eq!(resumed.resumed_at(NOW), resumed.changed_at);
        let never_changed = Consent {
            changed_at: None,
            ..resumed
        };
        assert_eq!(never_changed.resumed_at(NOW), None);
        assert_eq!(consent(State::Withdrawn, None).resumed_at(NOW), None);
    }

    #[test]
    fn a_pause_must_end_after_now() {
        let enrolled = consent(State::Enrolled, None);
        let pause = |until| Change::Pause { until }.apply(&enrolled, NOW);
        assert!(matches!(pause(NOW), Err(ChangeError::PauseInPast { .. })));
        assert_eq!(pause(NOW + Duration::seconds(1)), Ok(State::Paused));
        // A pause in force may be moved.
        let paused = consent(State::Paused, Some(NOW + Duration::days(1)));
        assert_eq!(
            Change::Pause {
                until: NOW + Duration::days(7)
            }
            .apply(&paused, NOW),
            Ok(State::Paused)
        );
    }

    #[test]
    fn resume_needs_a_pause_in_force() {
        let paused = consent(State::Paused, Some(NOW + Duration::hours(1)));
        assert_eq!(Change::Resume.apply(&paused, NOW), Ok(State::Enrolled));
        let over = consent(State::Paused, Some(NOW));
        assert_eq!(
            Change::Resume.apply(&over, NOW),
            Err(ChangeError::NotPaused {
                ended: Some("2026-11-22T08:00:00Z".into())
            })
        );
        assert_eq!(
            Change::Resume.apply(&consent(State::Enrolled, None), NOW),
            Err(ChangeError::NotPaused { ended: None })
        );
    }

    #[test]
    fn withdrawal_is_final_until_re_enrolment() {
        let withdrawn = consent(State::Withdrawn, None);
        for change in [
            Change::Pause {
                until: NOW + Duration::days(1),
            },
            Change::Resume,
        ] {
            assert!(matches!(
                change.apply(&withdrawn, NOW),
                Err(ChangeError::Withdrawn { .. })
            ));
        }
        assert!(matches!(
            Change::Withdraw.apply(&withdrawn, NOW),
            Err(ChangeError::AlreadyWithdrawn { .. })
        ));
        assert_eq!(Change::Reenrol.apply(&withdrawn, NOW), Ok(State::Enrolled));
        let paused = consent(State::Paused, Some(NOW + Duration::hours(1)));
        assert_eq!(Change::Withdraw.apply(&paused, NOW), Ok(State::Withdrawn));
        assert_eq!(
            Change::Reenrol.apply(&paused, NOW),
            Err(ChangeError::NotWithdrawn {
                state: State::Paused
            })
        );
    }

    #[test]
    fn every_change_names_who_and_all_but_resume_say_why() {
        let pause = Change::Pause { until: NOW };
        assert_eq!(
            pause.check_request(" ", Some("holiday")),
            Err(ChangeError::ActorRequired)
        );
        assert_eq!(
            pause.check_request("Dr A", Some("  ")),
            Err(ChangeError::ReasonRequired {
                action: "pause monitoring"
            })
        );
        assert_eq!(Change::Resume.check_request("Dr A", None), Ok(()));
        assert_eq!(
            Change::Withdraw.check_request("Dr A", Some(&"x".repeat(MAX_REASON_CHARS + 1))),
            Err(ChangeError::ReasonTooLong {
                chars: MAX_REASON_CHARS + 1
            })
        );
        assert_eq!(
            Change::Withdraw.check_request("Dr A", Some("patient request")),
            Ok(())
        );
    }
}
