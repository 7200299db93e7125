//! Domain types and rules shared by every front-end: what a reading is, which types and
//! units exist, and why one may be refused.

pub mod kinds;
pub mod nhs;
pub mod reading;
pub mod reject;
pub mod validate;

pub use reading::{Channel, RawReading, Reading};
pub use reject::{Refusal, RejectReason};
