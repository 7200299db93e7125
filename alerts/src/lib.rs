//! Vigil alerts: the clinical rule pack, and (in later modules) the alert lifecycle and
//! delivery to clinicians.

pub mod config;
pub mod record;
pub mod rules;
pub mod store;
