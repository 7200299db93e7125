//! `vigil.v1.AlertService`: clinicians list, watch, acknowledge and resolve their teams'
//! alerts, and read or change a patient's thresholds.

pub mod convert;
pub mod service;

pub use service::Alerts;
