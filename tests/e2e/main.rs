//! End-to-end tests on real PostgreSQL and a real Mosquitto. Each test creates its own
//! database and its own MQTT topic root, so tests run in parallel.
//!
//! Environment: `VIGIL_TEST_DATABASE_URL` (a server where the role may create databases),
//! `VIGIL_TEST_MQTT_HOST`/`VIGIL_TEST_MQTT_PORT` (the project's broker; `scripts/test` sets
//! them) and optionally `VIGIL_TEST_TIMESCALE_URL` (a server with TimescaleDB preloaded).

mod child;
#[path = "../common/database.rs"]
mod database;
mod harness;

mod admin_audit;
mod alert_api;
mod alert_delivery;
mod alert_rules;
mod bad_input;
mod broker_auth;
mod broker_restart;
mod consent;
mod crash;
mod database_outage;
mod duplicates;
mod erasure;
mod grpc_api;
mod grpc_tls;
mod limits;
mod migrations;
mod mqtt_ingest;
mod quarantine_replay;
mod secure_broker;
mod simulator;
mod team_roles;
mod tokens;
