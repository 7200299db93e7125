//! A Mosquitto of the test's own, configured exactly as shipped (deploy/mosquitto/vigil.conf
//! rendered by scripts/lib.sh: no anonymous clients, password and ACL files, a TLS
//! listener with a development CA), its files written by `vigil broker-sync` from the test's
//! database. Tests of broker-enforced identity use it; the shared test broker allows
//! anonymous clients and would prove nothing.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use rumqttc::v5::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions,
    mqttbytes::{
        QoS,
        v5::{ConnectReturnCode, Packet, PubAckReason, SubscribeReasonCode},
    },
};
use tokio::{process::Child, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use vigil_ingest::{
    Settings,
    broker::{
        accounts::{self, Role},
        sync,
    },
    config::{BrokerSyncSettings, TimescaleMode},
    store::migrate,
};

use crate::harness::{WAIT, connect, settings};

pub const INGEST_USER: &str = "vigil-ingest";
pub const INGEST_PASSWORD: &str = "ingest-password-for-tests";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub struct SecureBroker {
    pub port: u16,
    pub tls_port: u16,
    pub dir: PathBuf,
    /// Service settings pointed at this broker as the ingest account.
    pub settings: Settings,
    child: Child,
    sync_stop: CancellationToken,
    sync_task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl SecureBroker {
    /// Migrates `db_url`, registers the ingest account, writes the broker's files, starts
    /// the broker and keeps its files in step with the database until dropped.
    pub async fn start(db_url: &str) -> Self {
        let mut client = connect(db_url).await;
        migrate::run(&mut client, TimescaleMode::Auto)
            .await
            .expect("migrations");
        accounts::put_account(
            &mut client,
            INGEST_USER,
            Role::Ingest,
            None,
            INGEST_PASSWORD,
        )
        .await
        .expect("ingest account");

        let dir = std::env::temp_dir().join(format!("vigil-broker-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let (port, tls_port) = (free_port(), free_port());
        render_config(&dir, port, tls_port);

        let mut settings = settings(db_url);
        settings.mqtt.port = port;
        settings.mqtt.username = Some(INGEST_USER.into());
        settings.mqtt.password = Some(INGEST_PASSWORD.into());
        settings.broker_sync = BrokerSyncSettings {
            password_file: dir.join("passwords"),
            acl_file: dir.join("acl"),
            pid_file: Some(dir.join("mosquitto.pid")),
            resync_secs: 60,
        };
        sync::sync_once(&client, &settings.mqtt.topic_root, &settings.broker_sync)
            .await
            .expect("first sync");

        let child = tokio::process::Command::new(mosquitto())
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto starts");
        let started = std::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(started.elapsed() < WAIT, "broker did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while !dir.join("mosquitto.pid").exists() {
            assert!(started.elapsed() < WAIT, "broker wrote no pid file");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let sync_stop = CancellationToken::new();
        let sync_task = Some(tokio::spawn(sync::run(settings.clone(), sync_stop.clone())));
        Self {
            port,
            tls_port,
            dir,
            settings,
            child,
            sync_stop,
            sync_task,
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    pub fn topic(&self, rest: &str) -> String {
        format!("{}/{rest}", self.settings.mqtt.topic_root)
    }

    /// Stops the sync loop and checks it ended cleanly.
    pub async fn stop_sync(&mut self) {
        self.sync_stop.cancel();
        if let Some(task) = self.sync_task.take() {
            task.await.expect("join").expect("broker sync ends cleanly");
        }
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        self.sync_stop.cancel();
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mosquitto() -> &'static str {
    if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

/// Runs `script` with scripts/lib.sh loaded; `$1…` are `args`.
fn with_lib(script: &str, args: &[&str]) {
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source \"$0/scripts/lib.sh\"\n{script}"))
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .status()
        .expect("bash runs");
    assert!(status.success(), "scripts/lib.sh: {script}");
}

/// A development CA and a server certificate for localhost/127.0.0.1 in `dir` (ca.pem,
/// server.pem, server.key), made as scripts/run makes them.
pub fn dev_certs(dir: &Path) {
    let dir = dir.to_str().expect("UTF-8 path");
    with_lib(r#"VIGIL_TLS_DIR=$1 ensure_dev_certs 2>/dev/null"#, &[dir]);
}

/// The shipped configuration, rendered by the same code as scripts/run's broker.
fn render_config(dir: &Path, port: u16, tls_port: u16) {
    dev_certs(&dir.join("tls"));
    with_lib(
        r#"generate_broker_conf run "$2" "$3" "$1" "$1/tls" "$1/mosquitto.conf""#,
        &[
            dir.to_str().expect("UTF-8 path"),
            &port.to_string(),
            &tls_port.to_string(),
        ],
    );
}

/// How the broker answered a client: connection, subscription, publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    Refused,
}

/// An MQTT v5 client whose every broker answer is observable.
pub struct Client {
    pub client: AsyncClient,
    eventloop: EventLoop,
}

pub struct Login<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
}

impl Client {
    /// Connects to `port`; `Err` when the broker refuses the login.
    pub async fn connect(port: u16, login: Login<'_>) -> Result<Self, ConnectReturnCode> {
        let mut options = MqttOptions::new(client_id(), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        if let Some(user) = login.username {
            options.set_credentials(user, login.password.unwrap_or_default());
        }
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        loop {
            match tokio::time::timeout(WAIT, eventloop.poll())
                .await
                .expect("the broker answers the connect")
            {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(Self { client, eventloop }),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
                Err(e) => panic!("connecting: {e}"),
            }
        }
    }

    pub async fn device(port: u16, device: Uuid, token: &str) -> Result<Self, ConnectReturnCode> {
        let id = device.to_string();
        Self::connect(
            port,
            Login {
                username: Some(&id),
                password: Some(token),
            },
        )
        .await
    }

    /// Publishes at QoS 1 and returns the broker's PUBACK verdict.
    pub async fn publish(&mut self, topic: &str, payload: &str) -> Answer {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .expect("queued");
        loop {
            match self.poll().await {
                Event::Incoming(Packet::PubAck(ack)) => {
                    return match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                            Answer::Accepted
                        }
                        _ => Answer::Refused,
                    };
                }
                _ => continue,
            }
        }
    }

    /// Subscribes at QoS 1 and returns the SUBACK verdict. Mosquitto's ACL file grants
    /// subscriptions and filters each delivered message, so a refused topic may still be
    /// `Accepted` here: what matters is that nothing arrives (see [`Client::received`]).
    pub async fn subscribe(&mut self, filter: &str) -> Answer {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queued");
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = self.poll().await {
                return match ack.return_codes.first() {
                    Some(SubscribeReasonCode::Success(_)) => Answer::Accepted,
                    _ => Answer::Refused,
                };
            }
        }
    }

    /// Messages that arrive within `window`, as (topic, payload).
    pub async fn received(&mut self, window: Duration) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(event) = tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => out.push((
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                )),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        out
    }

    /// The next message, waiting up to [`WAIT`].
    pub async fn next_message(&mut self) -> (String, String) {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = self.poll().await {
                return (
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                );
            }
        }
    }

    /// True once the broker has closed this connection.
    pub async fn closed_by_broker(&mut self, window: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Err(_) => return false,
                Ok(Err(_)) | Ok(Ok(Event::Incoming(Packet::Disconnect(_)))) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn poll(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.eventloop.poll())
            .await
            .expect("the broker answers")
            .expect("connection stays up")
    }
}

fn client_id() -> String {
    format!("t-{}", Uuid::new_v4().simple())
}
