//! How Vigil's own MQTT clients (the ingest subscriber, the alert publisher) reach the
//! broker: plain TCP to a broker on this host, TLS to anything else. A broker beyond
//! loopback without a CA file is a configuration error rather than a silent downgrade.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rumqttc::{TlsConfiguration, Transport};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};

#[derive(Debug, thiserror::Error)]
pub enum MqttTlsError {
    #[error(
        "the MQTT broker {host} is not on this host, so the connection needs TLS: set \
         mqtt.tls_ca_file (VIGIL_MQTT__TLS_CA_FILE) to the CA that signed the broker's \
         certificate, or use a broker on 127.0.0.1"
    )]
    PlainBeyondLoopback { host: String },
    #[error("mqtt.tls_ca_file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The transport to `host`: TLS verified against `ca_file` when one is given (the broker's
/// certificate must name `host`), plain TCP only to a loopback host.
pub fn transport(host: &str, ca_file: Option<&Path>) -> Result<Transport, MqttTlsError> {
    let Some(path) = ca_file else {
        return if is_loopback(host) {
            Ok(Transport::Tcp)
        } else {
            Err(MqttTlsError::PlainBeyondLoopback {
                host: host.to_string(),
            })
        };
    };
    let ca_error = |message: String| MqttTlsError::CaFile {
        path: path.to_path_buf(),
        message,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_error(e.to_string()))? {
        roots
            .add(cert.map_err(|e| ca_error(e.to_string()))?)
            .map_err(|e| ca_error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_error("holds no PEM certificate".into()));
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(host: &str, ca_file: Option<&Path>) -> String {
        match transport(host, ca_file) {
            Ok(_) => panic!("{host}: a transport was built"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn plain_tcp_only_to_this_host() {
        for host in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.53"] {
            assert!(
                matches!(transport(host, None), Ok(Transport::Tcp)),
                "{host}"
            );
        }
        for host in ["broker.example.nhs.uk", "10.0.0.5", "0.0.0.0"] {
            let err = refusal(host, None);
            assert!(err.contains("needs TLS") && err.contains(host), "{err}");
        }
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let err = refusal("broker", Some(Path::new("/nonexistent/ca.pem")));
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let empty = std::env::temp_dir().join(format!("vigil-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = refusal("broker", Some(&empty));
        assert!(err.contains("no PEM certificate"), "{err}");
        let _ = std::fs::remove_file(empty);
    }
}
