//! Liveness and readiness state shared by the components and the HTTP endpoints.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

#[derive(Debug, Default)]
struct Flags {
    database: AtomicBool,
    broker: AtomicBool,
    broker_required: AtomicBool,
    stopping: AtomicBool,
}

#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Flags>);

impl Health {
    pub fn new(broker_required: bool) -> Self {
        let h = Self::default();
        h.0.broker_required
            .store(broker_required, Ordering::Relaxed);
        h
    }

    pub fn set_database(&self, ok: bool) {
        self.0.database.store(ok, Ordering::Relaxed);
    }

    pub fn set_broker(&self, ok: bool) {
        self.0.broker.store(ok, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::BROKER_CONNECTED).set(if ok { 1.0 } else { 0.0 });
    }

    pub fn set_stopping(&self) {
        self.0.stopping.store(true, Ordering::Relaxed);
    }

    pub fn database(&self) -> bool {
        self.0.database.load(Ordering::Relaxed)
    }

    /// Whether the broker check passes (always, when MQTT is disabled).
    pub fn broker(&self) -> bool {
        !self.0.broker_required.load(Ordering::Relaxed) || self.0.broker.load(Ordering::Relaxed)
    }

    pub fn stopping(&self) -> bool {
        self.0.stopping.load(Ordering::Relaxed)
    }

    pub fn ready(&self) -> bool {
        self.database() && self.broker() && !self.stopping()
    }
}
