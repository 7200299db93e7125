//! PostgreSQL: connection pool, migrations, the batching writer, partition and policy
//! maintenance, and the queries behind the admin commands (registry, consent, quarantine).

pub mod admin;
pub(crate) mod audit;
pub mod consent;
pub mod error;
pub mod maintenance;
pub mod migrate;
pub mod pool;
pub mod quarantine;
pub mod rows;
pub mod team_role;
pub mod writer;

pub use error::StoreError;
pub use pool::Pool;
