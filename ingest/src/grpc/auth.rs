//! Device tokens (`vgd_…`, see `vigil_alerts::secrets`): shown once when the device is
//! registered, stored only as a hash.

use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tonic::metadata::MetadataMap;
use uuid::Uuid;
use vigil_alerts::secrets;

use super::status::ApiError;
use crate::store::{Pool, StoreError};

const PREFIX: &str = "vgd_";

pub fn new_token() -> String {
    secrets::generate(PREFIX)
}

pub use secrets::hash;

/// The device a request's bearer token belongs to.
pub async fn device_of(pool: &Pool, metadata: &MetadataMap) -> Result<Uuid, ApiError> {
    let header = metadata
        .get("authorization")
        .ok_or_else(|| {
            ApiError::Unauthenticated("missing `authorization: Bearer <device token>`".into())
        })?
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("`authorization` is not valid text".into()))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| {
            ApiError::Unauthenticated("`authorization` must be `Bearer <device token>`".into())
        })?
        .trim();
    if !token.starts_with(PREFIX) {
        return Err(ApiError::Unauthenticated("not a Vigil device token".into()));
    }
    let client = pool.get().await.map_err(StoreError::from)?;
    let statement = client
        .prepare_cached(
            "SELECT id, revoked_at IS NOT NULL, token_expires_at,
                    coalesce(token_expires_at <= now(), false)
             FROM devices WHERE token_hash = $1",
        )
        .await
        .map_err(StoreError::from)?;
    let row = client
        .query_opt(&statement, &[&hash(token)])
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| ApiError::Unauthenticated("unknown device token".into()))?;
    let (id, revoked, expires_at, expired): (Uuid, bool, Option<OffsetDateTime>, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if revoked {
        return Err(ApiError::Unauthenticated(format!(
            "device {id} has been revoked"
        )));
    }
    if expired {
        let at = expires_at
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        return Err(ApiError::Unauthenticated(format!(
            "the token of device {id} expired at {at}; ask for a new one"
        )));
    }
    Ok(id)
}
