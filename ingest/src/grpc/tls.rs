//! TLS for the gRPC servers. Plain HTTP/2 is allowed on loopback only (development, tests
//! and a proxy on the same host); anything reachable from the network must be encrypted,
//! so a non-loopback listener without certificates is a configuration error, not a warning.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use tonic::transport::{Identity, ServerTlsConfig};

use crate::config::TlsSettings;

/// The TLS configuration for a server listening on `listen`; `None` means plain on loopback.
pub fn server_config(
    tls: &TlsSettings,
    listen: SocketAddr,
    setting: &str,
) -> anyhow::Result<Option<ServerTlsConfig>> {
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let cert_pem = std::fs::read(cert)
                .with_context(|| format!("grpc.tls.cert_file {}", cert.display()))?;
            let key_pem = std::fs::read(key)
                .with_context(|| format!("grpc.tls.key_file {}", key.display()))?;
            Ok(Some(
                ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem)),
            ))
        }
        (None, None) if listen.ip().is_loopback() => Ok(None),
        (None, None) => bail!(
            "{setting} = {listen} is reachable beyond this host, so it needs TLS: set \
             grpc.tls.cert_file and grpc.tls.key_file (VIGIL_GRPC__TLS__CERT_FILE, \
             VIGIL_GRPC__TLS__KEY_FILE), or listen on 127.0.0.1"
        ),
        _ => bail!("grpc.tls needs both cert_file and key_file, or neither"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn plain_only_on_loopback() {
        let none = TlsSettings::default();
        assert!(
            server_config(&none, addr("127.0.0.1:50051"), "grpc.listen")
                .expect("loopback")
                .is_none()
        );
        assert!(
            server_config(&none, addr("[::1]:50051"), "grpc.listen")
                .expect("loopback")
                .is_none()
        );
        let err = server_config(&none, addr("0.0.0.0:50051"), "grpc.listen")
            .expect_err("all interfaces without TLS")
            .to_string();
        assert!(err.contains("grpc.listen = 0.0.0.0:50051"), "{err}");
    }

    #[test]
    fn half_a_tls_configuration_is_refused() {
        let half = TlsSettings {
            cert_file: Some("server.pem".into()),
            key_file: None,
        };
        let err = server_config(&half, addr("127.0.0.1:1"), "grpc.listen").expect_err("half");
        assert!(err.to_string().contains("both"), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let missing = TlsSettings {
            cert_file: Some("/nonexistent/server.pem".into()),
            key_file: Some("/nonexistent/server.key".into()),
        };
        let err = server_config(&missing, addr("0.0.0.0:1"), "grpc.listen").expect_err("missing");
        assert!(
            format!("{err:#}").contains("/nonexistent/server.pem"),
            "{err:#}"
        );
    }
}
