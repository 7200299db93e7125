//! Vigil alerts: the clinical rule pack, the alert lifecycle (per-reading rules inside the
//! ingest transaction, windowed rules and escalation in the worker), clinician access over
//! gRPC, and delivery to clinicians.

pub mod admin;
pub mod clinicians;
pub mod config;
pub mod consent;
pub mod deliver;
pub mod events;
pub mod grpc;
pub mod mqtt_tls;
pub mod record;
pub mod rules;
pub mod secrets;
pub mod store;
pub mod worker;
