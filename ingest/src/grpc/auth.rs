//! Device tokens: `vgd_` followed by 32 random bytes in URL-safe base64. Only the SHA-256 of
//! a token is stored; the token is shown once, when the device is registered.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use uuid::Uuid;

use super::status::ApiError;
use crate::store::{Pool, StoreError};

const PREFIX: &str = "vgd_";

pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

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
        .prepare_cached("SELECT id FROM devices WHERE token_hash = $1 AND revoked_at IS NULL")
        .await
        .map_err(StoreError::from)?;
    let row = client
        .query_opt(&statement, &[&hash(token)])
        .await
        .map_err(StoreError::from)?;
    row.map(|r| r.get(0))
        .ok_or_else(|| ApiError::Unauthenticated("unknown or revoked device token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_to_32_bytes() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX));
        assert_eq!(a.len(), PREFIX.len() + 43);
        assert_eq!(hash(&a).len(), 32);
        assert_ne!(hash(&a), hash(&b));
    }
}
