//! The one place where failures become gRPC statuses.

use tonic::{Code, Status};

use crate::{
    limits::OverLimit,
    store::{StoreError, writer::SubmitError},
};

/// How long a client should wait before retrying a refused call.
const RETRY_AFTER_MS: u128 = 250;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the ingest queue is full; retry after a short delay")]
    Overloaded,
    #[error("{}", .0.message)]
    RateLimited(OverLimit),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_retriable() {
            Self::Unavailable("storage is unavailable; retry later".into())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull => Self::Overloaded,
            SubmitError::Closed => Self::Unavailable("the service is shutting down".into()),
            SubmitError::Interrupted => Self::Unavailable(
                "the write was interrupted before COMMIT; retrying the batch is safe".into(),
            ),
            SubmitError::Store(e) => e.into(),
        }
    }
}

impl ApiError {
    fn code(&self) -> Code {
        match self {
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::RateLimited(OverLimit {
                retry_after: None, ..
            }) => Code::InvalidArgument,
            Self::Overloaded | Self::RateLimited(_) => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let code = e.code();
        metrics::counter!(crate::metrics::GRPC_REFUSED, "code" => format!("{code:?}")).increment(1);
        let retry_after = match &e {
            ApiError::RateLimited(over) => {
                metrics::counter!(crate::metrics::RATE_LIMITED, "channel" => "grpc").increment(1);
                over.retry_after.map(|wait| wait.as_millis().max(1))
            }
            _ if matches!(code, Code::ResourceExhausted | Code::Unavailable) => {
                Some(RETRY_AFTER_MS)
            }
            _ => None,
        };
        let mut status = Status::new(code, e.to_string());
        if let Some(ms) = retry_after
            && let Ok(value) = ms.to_string().parse()
        {
            status.metadata_mut().insert("retry-after-ms", value);
        }
        status
    }
}
