use deadpool_postgres::PoolError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("database: {}", describe_pool(.0))]
    Pool(#[from] PoolError),
    #[error("database pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("migration {version} ({name}) was changed after it was applied")]
    MigrationChanged { version: i32, name: &'static str },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The database refused the connecting role a privilege the command needs.
    #[error("{0}")]
    NotPermitted(String),
    #[error(transparent)]
    Consent(#[from] vigil_alerts::consent::ChangeError),
    #[error("write failed: {0}")]
    Failed(String),
    #[error("the writer has stopped")]
    WriterClosed,
}

impl StoreError {
    /// True when the same work may succeed later unchanged: the server is unreachable,
    /// restarting, overloaded, or the transaction lost a serialization race.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::Db(e) => {
                if e.is_closed() {
                    return true;
                }
                // Two instances opening the same patient's alert at once: on retry the
                // alert exists and is updated instead.
                if e.as_db_error().and_then(|d| d.constraint()) == Some("alerts_one_active") {
                    return true;
                }
                match e.code() {
                    Some(code) => {
                        let c = code.code();
                        c.starts_with("08")
                            || c.starts_with("53")
                            || c.starts_with("57P")
                            || c == "40001"
                            || c == "40P01"
                    }
                    // No SQLSTATE: an I/O or protocol failure on the connection.
                    None => true,
                }
            }
            _ => false,
        }
    }
}

/// tokio-postgres prints only "db error"; the server's message and code are in the source.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} ({})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(": ");
                text.push_str(detail);
            }
            text
        }
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

fn describe_pool(e: &PoolError) -> String {
    match e {
        PoolError::Backend(e) => describe(e),
        other => other.to_string(),
    }
}
