//! The real `vigil` binary in a child process (`ingest` or `alerts`), for crash and
//! signal tests and for the alert worker.

use std::net::SocketAddr;

use vigil_ingest::Settings;

use crate::harness::{WAIT, eventually, http_get, metric};

pub struct ChildService {
    child: tokio::process::Child,
    pub http_addr: SocketAddr,
    /// The alert API, for `vigil alerts`.
    pub grpc_addr: SocketAddr,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl ChildService {
    /// Starts `vigil ingest` with `settings` passed as `VIGIL_*` variables plus `extra`.
    pub async fn start(settings: &Settings, extra: &[(&str, String)]) -> Self {
        Self::run("ingest", settings, extra).await
    }

    /// Starts `vigil alerts` against the same database and broker as `settings`.
    pub async fn alerts(settings: &Settings, extra: &[(&str, String)]) -> Self {
        Self::run("alerts", settings, extra).await
    }

    async fn run(subcommand: &str, settings: &Settings, extra: &[(&str, String)]) -> Self {
        let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let grpc_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_vigil"));
        command
            .arg(subcommand)
            .env("VIGIL_ALERTS__GRPC_LISTEN", grpc_addr.to_string())
            .env("VIGIL_ALERTS__HTTP_LISTEN", http_addr.to_string())
            .env(
                "VIGIL_ALERTS__MQTT_CLIENT_ID",
                format!("{}-alerts", settings.mqtt.client_id),
            )
            .env("VIGIL_DATABASE__URL", &settings.database.url)
            .env("VIGIL_MQTT__HOST", &settings.mqtt.host)
            .env("VIGIL_MQTT__PORT", settings.mqtt.port.to_string())
            .env("VIGIL_MQTT__CLIENT_ID", &settings.mqtt.client_id)
            .env("VIGIL_MQTT__TOPIC_ROOT", &settings.mqtt.topic_root)
            .env("VIGIL_MQTT__SHARE_GROUP", &settings.mqtt.share_group)
            .env("VIGIL_GRPC__LISTEN", grpc_addr.to_string())
            .env("VIGIL_HTTP__LISTEN", http_addr.to_string())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command.spawn().expect("vigil binary starts");
        let service = Self {
            child,
            http_addr,
            grpc_addr,
        };
        eventually("child service ready", || async move {
            http_get(http_addr, "/readyz").await.map(|(c, _)| c) == Some(200)
        })
        .await;
        service
    }

    pub async fn metric(&self, name: &str) -> f64 {
        metric(self.http_addr, name).await
    }

    /// SIGKILL: no flush, no acknowledgement, no DISCONNECT.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn terminate(mut self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let exit = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exits within the grace period")
            .expect("wait");
        assert!(exit.success(), "clean exit: {exit}");
    }
}
