//! Vigil ingest: home-device readings in over MQTT and gRPC, stored once in PostgreSQL or
//! TimescaleDB, refused readings kept in quarantine with their reason.
//!
//! # Data flow
//!
//! ```text
//! MQTT (mqtt::subscriber) ─ decode ─┐
//!                                   ├─ Submission ─▶ store::writer (batch, one tx) ─▶ PostgreSQL
//! gRPC (grpc::service) ─── convert ─┘                    │
//!                                                        └─ outcomes ─▶ PUBACK + results / gRPC reply
//! ```
//!
//! # Layout
//!
//! - [`domain`]: readings, types and units, validation, refusal reasons.
//! - [`submission`]: what front-ends hand to the writer, and the outcomes they get back.
//! - [`mqtt`], [`grpc`]: the front-ends. [`http`]: health, readiness and metrics.
//! - [`store`]: pool, migrations, the writer, maintenance, registry and quarantine queries.
//! - [`app`]: wiring and ordered shutdown. [`replay`]: quarantine replay.

pub mod app;
pub mod broker;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod health;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod mqtt;
pub mod replay;
pub mod store;
pub mod submission;
pub mod telemetry;

pub use app::Application;
pub use config::Settings;
