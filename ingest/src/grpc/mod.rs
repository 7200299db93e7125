//! gRPC front-end: `vigil.v1.IngestService`, grpc.health.v1 and server reflection.

pub mod auth;
pub mod convert;
pub mod server;
pub mod service;
pub mod status;
pub mod tls;

pub use server::serve;
