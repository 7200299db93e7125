//! The services under test, as separate `vigil ingest` and `vigil alerts` processes (the
//! same binary), so their memory is measured apart from the load generator's.

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use tokio::{io::AsyncReadExt as _, io::AsyncWriteExt as _, net::TcpStream, process::Child};
use vigil_ingest::Settings;

pub struct Service {
    name: &'static str,
    child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Service {
    /// Starts `vigil <subcommand>` with the bench's settings and waits until it is ready.
    pub async fn start(
        subcommand: &'static str,
        config: Option<&Path>,
        settings: &Settings,
    ) -> anyhow::Result<Self> {
        let http: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let grpc: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let mut command = tokio::process::Command::new(
            std::env::current_exe().context("locating the vigil binary")?,
        );
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mqtt = &settings.mqtt;
        command
            .arg(subcommand)
            .env("VIGIL_DATABASE__URL", &settings.database.url)
            .env("VIGIL_DATABASE__MIGRATE_ON_START", "false")
            .env("VIGIL_MQTT__HOST", &mqtt.host)
            .env("VIGIL_MQTT__PORT", mqtt.port.to_string())
            .env("VIGIL_MQTT__CLIENT_ID", &mqtt.client_id)
            .env("VIGIL_MQTT__TOPIC_ROOT", &mqtt.topic_root)
            .env("VIGIL_MQTT__SHARE_GROUP", &mqtt.share_group)
            .env("VIGIL_GRPC__LISTEN", grpc.to_string())
            .env("VIGIL_HTTP__LISTEN", http.to_string())
            .env("VIGIL_ALERTS__GRPC_LISTEN", grpc.to_string())
            .env("VIGIL_ALERTS__HTTP_LISTEN", http.to_string())
            .env(
                "VIGIL_ALERTS__MQTT_CLIENT_ID",
                format!("{}-alerts", mqtt.client_id),
            )
            .env("VIGIL_LOG__FILTER", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let (Some(user), Some(password)) = (&mqtt.username, &mqtt.password) {
            command
                .env("VIGIL_MQTT__USERNAME", user)
                .env("VIGIL_MQTT__PASSWORD", password);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting vigil {subcommand}"))?;
        let mut service = Self {
            name: subcommand,
            child,
            http,
            grpc,
        };
        service.wait_ready().await?;
        Ok(service)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("vigil {} exited during start-up: {status}", self.name);
            }
            if http_status(self.http, "/readyz").await == Some(200) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("vigil {} not ready within 60 s", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Peak resident set size so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// SIGTERM, then wait for the ordered shutdown.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            tokio::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await?;
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("vigil {} did not stop within 30 s", self.name)
            }
        }
    }
}

/// The status code of a plain HTTP/1.0 GET, or `None` when nothing answers.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).await.ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
