//! Signed JSON POSTs to care teams' webhooks.
//!
//! Receivers verify `X-Vigil-Signature` = `v1=` + hex HMAC-SHA256 of `"{timestamp}.{body}"`
//! under the webhook's secret, reject stale timestamps to stop replays, and deduplicate by
//! `Idempotency-Key`, which stays the same across retries of one delivery.

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::{
    Client,
    header::{CONTENT_TYPE, HeaderMap, HeaderValue},
    redirect,
};
use sha2::Sha256;
use time::OffsetDateTime;
use uuid::Uuid;

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Stable for one delivery (event and webhook), so a receiver can drop our retries.
pub fn idempotency_key(event_id: i64, webhook_id: Uuid) -> String {
    format!("vigil-event-{event_id}-webhook-{webhook_id}")
}

pub(super) struct Webhooks {
    client: Client,
}

impl Webhooks {
    pub(super) fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        // reqwest is built without a default TLS provider (see the workspace manifest); an
        // error only means some provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect would re-send a signed clinical payload to a URL nobody registered.
            .redirect(redirect::Policy::none())
            .user_agent(concat!("vigil-alerts/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client })
    }

    /// Posts `body`; `Ok` only for a 2xx answer.
    pub(super) async fn post(
        &self,
        url: &str,
        secret: &str,
        event_id: i64,
        webhook_id: Uuid,
        body: Vec<u8>,
    ) -> Result<(), String> {
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in [
            ("idempotency-key", idempotency_key(event_id, webhook_id)),
            ("x-vigil-event-id", event_id.to_string()),
            ("x-vigil-timestamp", timestamp.to_string()),
            ("x-vigil-signature", signature(secret, timestamp, &body)),
        ] {
            // Digits, hex, dashes and '=' only: always valid header values.
            let value = HeaderValue::from_str(&value).map_err(|e| e.to_string())?;
            headers.insert(name, value);
        }
        let response = self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}

/// reqwest's top-level message ("error sending request") hides the cause that tells an
/// operator what to fix (refused, timed out, certificate).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed independently with Python:
    // hmac.new(b"whsec_test", b'1700000000.{"event_id":42}', hashlib.sha256).hexdigest()
    #[test]
    fn signature_matches_an_independent_hmac() {
        assert_eq!(
            signature("whsec_test", 1_700_000_000, br#"{"event_id":42}"#),
            "v1=a982b9a0a1d6403cdee2881497b9c32a367787b3f3925ecdcb5cbef93f8e9347"
        );
        // hmac.new(b"", b"0.", hashlib.sha256).hexdigest()
        assert_eq!(
            signature("", 0, b""),
            "v1=b849d5a581847b281957065739df36df2463d1977ea8d6e1e4e6cf33fadc68c3"
        );
    }

    #[test]
    fn signature_covers_timestamp_and_body() {
        let base = signature("s", 1, b"{}");
        assert_ne!(base, signature("s", 2, b"{}"));
        assert_ne!(base, signature("s", 1, b"{ }"));
        assert_ne!(base, signature("t", 1, b"{}"));
    }

    #[test]
    fn idempotency_key_names_event_and_webhook() {
        let webhook = Uuid::nil();
        assert_eq!(
            idempotency_key(7, webhook),
            "vigil-event-7-webhook-00000000-0000-0000-0000-000000000000"
        );
    }
}
