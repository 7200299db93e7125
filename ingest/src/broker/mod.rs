//! The MQTT broker's view of who may connect and what each identity may touch.
//!
//! Mosquitto authenticates and authorises every MQTT client itself, from a password file
//! and an ACL file. Vigil owns the identities (devices, services, care teams), so
//! `vigil broker-sync` renders both files from the database and asks the broker to reload
//! them whenever a credential changes: a device added, revoked, rotated or expired reaches
//! the broker within seconds, and Mosquitto disconnects clients whose credentials no longer
//! hold.

pub mod accounts;
pub mod credential;
pub mod files;
pub mod sync;
